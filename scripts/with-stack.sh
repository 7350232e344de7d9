#!/usr/bin/env bash
# Runs a command with the local stack up; stops the stack afterwards only if this script
# started it, so `make test` next to a running `make up` leaves it running.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stack="$root/deploy/local/stack.sh"
if bash "$stack" is-up >/dev/null 2>&1; then
  started=0
else
  started=1
fi
cleanup() { if [ "$started" = 1 ]; then bash "$stack" down; fi; }
trap cleanup EXIT
bash "$stack" up
"$@"
