"""`make bench`: every service's benchmark, one after another, against the real stack."""

from __future__ import annotations

from bench import alerts, ingest, personalisation, profile


def main() -> None:
    ingest.run()
    profile.run()
    personalisation.run()
    alerts.run()


if __name__ == "__main__":
    main()
