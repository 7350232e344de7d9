"""A personalisation server on an isolated profile pipeline: its own topics, key prefix
and catalogue file, reading profiles through the harness's profile server over gRPC,
as the deployed service does."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import grpc
import redis
from cx.personalisation.v1 import personalisation_pb2 as npb
from cx.personalisation.v1 import personalisation_pb2_grpc
from cx.profile.v1 import profile_pb2 as pb

from services.common.contact_ledger import ContactLedger
from services.common.settings import KafkaSettings
from services.personalisation.adapters.catalogue_file import CatalogueFile
from services.personalisation.adapters.decisions import DecisionLog, DecisionStore
from services.personalisation.adapters.model_source import ModelSource
from services.personalisation.adapters.profile_source import GrpcProfileSource
from services.personalisation.domain.learning import load_learning
from services.personalisation.server import build_server
from services.personalisation.service import PersonalisationServicer
from services.personalisation.settings import PersonalisationSettings
from tests.integration.profile_harness import ProfileHarness

SHIPPED_CATALOGUE = PersonalisationSettings().catalogue_file


class PersonalisationHarness(ProfileHarness):
    def __init__(
        self,
        base: KafkaSettings,
        redis_url: str,
        log_dir: Path,
        name: str = "nba",
        catalogue: Path = SHIPPED_CATALOGUE,
        **settings: Any,
    ) -> None:
        super().__init__(base, redis_url, log_dir, name=name)
        # A copy, so that tests may edit it (hot reload) without touching the shipped one.
        self.catalogue_path = log_dir / f"{self.run}-catalogue.toml"
        shutil.copyfile(catalogue, self.catalogue_path)
        self.nba_settings = PersonalisationSettings(
            key_prefix=self.settings.key_prefix,
            catalogue_file=self.catalogue_path,
            catalogue_check_every_s=0.2,
            model_check_every_s=0.2,
            **{"holdout_percent": 0.0, **settings},
        )
        self.nba_redis = redis.Redis.from_url(
            redis_url, socket_connect_timeout=1.0, socket_timeout=2.0
        )
        self.ledger = ContactLedger(self.nba_redis, self.settings.key_prefix)
        self.decision_log = DecisionLog(
            base.kafka_bootstrap_servers, self.kafka.decisions_topic, 30.0
        )
        self.profile_source = GrpcProfileSource(f"127.0.0.1:{self.profile_server.port}")
        # The learned model, as servers find it: the learner's checkpoints under this
        # run's key prefix (none until a test writes or trains one: the static rules).
        self.models = ModelSource(
            self.nba_redis,
            self.settings.key_prefix,
            load_learning(self.nba_settings.learning_file).model.vw_args,
        )
        self.servicer = PersonalisationServicer(
            self.nba_settings,
            CatalogueFile(self.catalogue_path),
            self.profile_source,
            self.ledger,
            DecisionStore(
                self.nba_redis, self.settings.key_prefix, self.nba_settings.decision_ttl_s
            ),
            self.decision_log,
            self.publisher,
            self.models,
        )
        self.nba_server = build_server(self.servicer, self.nba_redis, "127.0.0.1:0")
        self.nba_server.start()
        self.servers.append(self.nba_server)
        self.nba_channel = grpc.insecure_channel(f"127.0.0.1:{self.nba_server.port}")
        self.nba = personalisation_pb2_grpc.PersonalisationServiceStub(self.nba_channel)

    def decide(
        self,
        placement: str,
        channel: int,
        *,
        customer_id: str | None = None,
        explain: bool = True,
        max_actions: int = 1,
        timeout: float = 10,
        **context: Any,
    ) -> npb.DecideResponse:
        request = npb.DecideRequest(
            placement=placement,
            channel=channel,  # type: ignore[arg-type]
            max_actions=max_actions,
            explain=explain,
            context=npb.RequestContext(**context),
        )
        if customer_id is not None:
            request.identifier.CopyFrom(
                pb.Identifier(type=pb.IDENTIFIER_TYPE_CUSTOMER_ID, value=customer_id)
            )
        return self.nba.Decide(request, timeout=timeout)

    def close(self) -> None:
        self.nba_channel.close()
        super().close()
        self.decision_log.close(timeout_s=10)
        self.profile_source.close()
        self.models.close()
        self.nba_redis.close()
