"""The `cx` command line (typer + rich).

- `cx events send FILE`: JSON-lines touchpoint events through ingestion.
- `cx nba decide | outcome | actions`: the personalisation service's next best actions;
  `cx nba report | evaluate`: the evidence from its decision log (lift over the holdout,
  and what another policy would have earned).
- `cx alerts list | show | ack | resolve | watch | silence add|list|expire`: experience
  incidents and silences, from the alerts service.

Exit codes: 0 done, 1 a failed call or rejected input, 2 a usage error or a request the
service called invalid (`cx events send` keeps 2 for any failed ingest call).
"""

from __future__ import annotations

import sys

import typer

from services.cli import alerts, events, nba

app = typer.Typer(
    name="cx",
    help="cx-platform command line.",
    no_args_is_help=True,
    add_completion=False,
    # Help from docstrings: paragraphs rewrapped, `code` as code.
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
app.add_typer(events.app, name="events")
app.add_typer(nba.app, name="nba")
app.add_typer(alerts.app, name="alerts")


def main(argv: list[str] | None = None) -> int:
    """Runs `cx` with `argv` (default: the process's arguments); returns the exit code."""
    try:
        app(args=argv, prog_name="cx")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0
