"""`make bench`: every service's benchmark, one after another, against the real stack."""

from __future__ import annotations

from bench import ingest


def main() -> None:
    ingest.run()


if __name__ == "__main__":
    main()
