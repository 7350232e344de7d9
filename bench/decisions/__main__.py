"""`python -m bench.decisions [--decisions N] [--seed S] [--jobs J] [--vw-args ARGS]`."""

from __future__ import annotations

from bench.decisions.run import main

if __name__ == "__main__":
    main()
