"""`make bench`: every service's benchmark, one after another, against the real stack (the
customer simulator, `bench.decisions`, runs the decision path in process)."""

from __future__ import annotations

from bench import alerts, decisions, ingest, personalisation, profile


def main() -> None:
    ingest.run()
    profile.run()
    personalisation.run()
    decisions.run()
    alerts.run()


if __name__ == "__main__":
    main()
