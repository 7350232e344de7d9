#!/usr/bin/env bash
# Generates Python modules and type stubs from protos/ into the given directory.
# The only way generated code is produced: `make protos` (and `make check-protos`, which
# generates into a scratch directory and compares).
set -euo pipefail
out=$(realpath -m "${1:?usage: gen-protos.sh OUT_DIR}")
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv/bin/python"
rm -rf "$out/cx"
mkdir -p "$out"
mapfile -t protos < <(cd "$root/protos" && find cx -name '*.proto' | sort)
(cd "$root/protos" && "$py" -m grpc_tools.protoc -I . \
  --plugin=protoc-gen-mypy="$root/.venv/bin/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$root/.venv/bin/protoc-gen-mypy_grpc" \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  "${protos[@]}")
# Packages, so that `cx.events.v1` imports like any other package.
find "$out/cx" -type d -exec touch {}/__init__.py \;
