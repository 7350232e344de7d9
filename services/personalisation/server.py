"""Personalisation gRPC server: `python -m services.personalisation.server`."""

from __future__ import annotations

import grpc
import redis
from cx.personalisation.v1 import personalisation_pb2, personalisation_pb2_grpc

from services.common.contact_ledger import ContactLedger
from services.common.grpc_server import ServiceServer
from services.common.heartbeat import alive
from services.common.process import GrpcProcess, run_grpc_process
from services.common.settings import (
    KafkaSettings,
    ProcessSettings,
    RedisSettings,
    grpc_address,
    kafka_settings,
    redis_settings,
)
from services.common.touchpoint_publisher import TouchpointPublisher
from services.personalisation.adapters.catalogue_file import CatalogueFile
from services.personalisation.adapters.decisions import DecisionLog, DecisionStore
from services.personalisation.adapters.learning_store import learner_workers_key
from services.personalisation.adapters.model_source import ModelSource
from services.personalisation.adapters.profile_source import (
    GrpcProfileSource,
    ProfileSource,
    ReaderProfileSource,
)
from services.personalisation.domain.learning import load_learning
from services.personalisation.service import PersonalisationServicer
from services.personalisation.settings import PersonalisationSettings
from services.profile.adapters.reader import ProfileReader
from services.profile.domain.segments import load_segments
from services.profile.settings import ProfileSettings

SERVICE_NAME = personalisation_pb2.DESCRIPTOR.services_by_name["PersonalisationService"].full_name
# Health names: Redis (the contact ledger and decisions) and the profile's read path are
# dependencies (no decision without them); the catalogue file (a refused edit keeps the
# last good version live) and Kafka (the decision log; outcomes fail fast on their own)
# are reported only.
REDIS_HEALTH_NAME = "redis"
PROFILE_HEALTH_NAME = "profile"
CATALOGUE_HEALTH_NAME = "cx.personalisation.v1.Catalogue"
# The learned model: NOT_SERVING while its latest checkpoint cannot be loaded (decisions
# go on with the model in use, or the static rules without one).
MODEL_HEALTH_NAME = "cx.personalisation.v1.Model"
# Whether a learner is alive (its heartbeat): without one, decisions go on with the last
# model and nothing new is learned.
LEARNER_HEALTH_NAME = "cx.personalisation.v1.Learner"
KAFKA_HEALTH_NAME = "kafka"
REDIS_CONNECT_TIMEOUT_S = 1.0
REDIS_SOCKET_TIMEOUT_S = 2.0


def profile_source(
    settings: PersonalisationSettings, client: redis.Redis, process: ProcessSettings
) -> ProfileSource:
    if settings.profile_source == "reader":
        profile = ProfileSettings()
        return ReaderProfileSource(
            ProfileReader(client, profile), load_segments(profile.segments_file)
        )
    address = settings.profile_address or grpc_address(ProfileSettings().grpc_port, process)
    return GrpcProfileSource(address)


def build_server(
    servicer: PersonalisationServicer, client: redis.Redis, address: str
) -> ServiceServer:
    """The server around a servicer built from given parts (tests pass their own)."""

    def register(server: grpc.Server) -> None:
        personalisation_pb2_grpc.add_PersonalisationServiceServicer_to_server(servicer, server)

    catalogue = servicer.catalogue

    def reload_catalogue() -> None:
        catalogue.refresh()

    server = ServiceServer(register, [SERVICE_NAME], address)
    server.add_dependency(REDIS_HEALTH_NAME, lambda: bool(client.ping()))
    server.add_dependency(PROFILE_HEALTH_NAME, servicer.profiles.healthy)
    server.every(servicer.settings.catalogue_check_every_s, reload_catalogue)
    server.add_component(CATALOGUE_HEALTH_NAME, catalogue.healthy)
    models = servicer.models
    if models is not None:
        models.refresh()
        server.every(servicer.settings.model_check_every_s, models.refresh)
        server.add_component(MODEL_HEALTH_NAME, models.healthy)
        workers = learner_workers_key(servicer.settings.key_prefix)
        server.add_component(LEARNER_HEALTH_NAME, lambda: alive(client, workers) > 0)
    publisher = servicer.publisher
    if publisher is not None:
        server.add_component(KAFKA_HEALTH_NAME, publisher.available)
    return server


def create_server(
    settings: PersonalisationSettings,
    kafka: KafkaSettings,
    redis_config: RedisSettings,
    process: ProcessSettings,
) -> GrpcProcess:
    """The composition root: catalogue, profile source, ledger, learned model, decision
    store and log, outcome publisher and server, from settings."""
    catalogue = CatalogueFile(settings.catalogue_file)
    client = redis.Redis.from_url(
        redis_config.redis_url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
    )
    profiles = profile_source(settings, client, process)
    decision_log = DecisionLog(
        kafka.kafka_bootstrap_servers, kafka.decisions_topic, settings.decision_log_timeout_s
    )
    publisher = TouchpointPublisher.connect(kafka.kafka_bootstrap_servers, kafka.touchpoints_topic)
    learning = load_learning(settings.learning_file)
    models = ModelSource(client, settings.key_prefix, learning.model.vw_args)
    servicer = PersonalisationServicer(
        settings,
        catalogue,
        profiles,
        ContactLedger(client, settings.key_prefix),
        DecisionStore(client, settings.key_prefix, settings.decision_ttl_s),
        decision_log,
        publisher,
        models,
    )
    server = build_server(servicer, client, grpc_address(settings.grpc_port, process))
    return GrpcProcess(
        server, [publisher.close, decision_log.close, profiles.close, models.close, client.close]
    )


def main() -> None:
    settings = PersonalisationSettings()
    run_grpc_process(
        "personalisation",
        settings.metrics_port,
        lambda process: create_server(settings, kafka_settings(), redis_settings(), process),
    )


if __name__ == "__main__":
    main()
