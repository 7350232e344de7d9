"""Kafka admin helpers for the local stack: wait for the broker, create the platform's topics.

Used by ``deploy/local/stack.sh`` through the CLI::

    python -m services.common.kafka_admin wait [--timeout S] [--bootstrap HOST:PORT]
    python -m services.common.kafka_admin ensure-topics [--bootstrap HOST:PORT]

Both read ``KAFKA_BOOTSTRAP_SERVERS`` (see ``services.common.settings``) unless ``--bootstrap``
is given.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from services.common.settings import kafka_settings
from services.common.topics import TopicSpec, platform_topics

log = logging.getLogger(__name__)

CLIENT_ID = "cx-kafka-admin"
# Upper bound for a single connection attempt while waiting, so the loop re-checks the deadline.
_ATTEMPT_TIMEOUT_S = 5.0
_RETRY_INTERVAL_S = 0.5


def _servers(bootstrap: str) -> list[str]:
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    if not servers:
        raise ValueError(f"no Kafka bootstrap servers in {bootstrap!r}")
    return servers


@contextlib.contextmanager
def _admin_client(bootstrap: str, timeout_s: float) -> Iterator[Any]:
    """An admin client that must reach the cluster within ``timeout_s`` (raises KafkaError)."""
    timeout_ms = max(int(timeout_s * 1000), 1)
    client = KafkaAdminClient(
        bootstrap_servers=_servers(bootstrap),
        client_id=CLIENT_ID,
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=max(timeout_ms, 1000),
    )
    try:
        yield client
    finally:
        client.close()


def wait_for_broker(bootstrap: str, timeout_s: float) -> None:
    """Block until a broker at ``bootstrap`` answers a DescribeCluster request.

    Retries connection errors until ``timeout_s`` has passed, then raises TimeoutError.
    """
    deadline = time.monotonic() + timeout_s
    attempts = 0
    last_error = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"Kafka at {bootstrap} did not answer within {timeout_s:g}s "
                f"({attempts} attempt(s); last error: {last_error})"
            )
        attempts += 1
        try:
            with _admin_client(bootstrap, min(remaining, _ATTEMPT_TIMEOUT_S)) as admin:
                cluster: dict[str, Any] = admin.describe_cluster()
        except (KafkaError, OSError) as exc:
            # kafka-python's str() of its errors already starts with the class name.
            last_error = str(exc) or type(exc).__name__
        else:
            brokers = cluster.get("brokers") or []
            if brokers:
                log.info(
                    "Kafka at %s is up: cluster %s, %d broker(s)",
                    bootstrap,
                    cluster.get("cluster_id"),
                    len(brokers),
                )
                return
            last_error = "cluster reported no brokers yet"
        time.sleep(min(_RETRY_INTERVAL_S, max(deadline - time.monotonic(), 0.0)))


def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec]) -> list[str]:
    """Create the topics in ``specs`` that do not exist yet; return the names created.

    Idempotent: topics that already exist (including ones created concurrently) are left
    as they are, even if their partition count or config differs from the spec.
    """
    if not specs:
        return []
    with _admin_client(bootstrap, 30.0) as admin:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        # kafka-python 3.0 deprecates NewTopic objects; the dict form is the supported input.
        request = {
            s.name: {
                "num_partitions": s.partitions,
                "replication_factor": s.replication_factor,
                "configs": dict(s.config),
            }
            for s in missing
        }
        response: dict[str, Any] = admin.create_topics(request, raise_errors=False)
        created: list[str] = []
        failures: list[str] = []
        for result in response.get("topics", []):
            name = str(result["name"])
            code = int(result["error_code"])
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:
                failures.append(f"{name}: error {code} ({result.get('error_message')})")
        if failures:
            raise RuntimeError("could not create Kafka topics: " + "; ".join(failures))
        if created:
            # CreateTopics returns before every partition has a leader; wait for that.
            admin.wait_for_topics(created, timeout_ms=30_000)
    return sorted(created)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.kafka_admin",
        description="Kafka admin helpers for the local stack.",
    )
    parser.add_argument(
        "--bootstrap",
        default=None,
        help="host:port[,host:port] (default: KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    wait_p = sub.add_parser("wait", help="wait until the broker answers a metadata request")
    wait_p.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    wait_p.add_argument("--bootstrap", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ens_p = sub.add_parser("ensure-topics", help="create the platform topics that are missing")
    ens_p.add_argument("--bootstrap", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Refused connections while the broker starts are expected; wait_for_broker reports them.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    settings = kafka_settings()
    bootstrap: str = args.bootstrap or settings.kafka_bootstrap_servers

    if args.command == "wait":
        started = time.monotonic()
        try:
            wait_for_broker(bootstrap, args.timeout)
        except TimeoutError as exc:
            print(f"kafka_admin: {exc}", file=sys.stderr)
            return 1
        print(f"kafka: broker at {bootstrap} answered after {time.monotonic() - started:.1f}s")
        return 0

    specs = platform_topics(settings)
    try:
        created = ensure_topics(bootstrap, specs)
    except (KafkaError, OSError, RuntimeError) as exc:
        print(f"kafka_admin: ensure-topics failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        print(f"kafka: topic {spec.name} ({spec.partitions} partitions): {state}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
