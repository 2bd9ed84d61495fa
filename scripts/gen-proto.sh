#!/usr/bin/env bash
# Regenerates proto/corral_pb2*.py(i) from proto/corral.proto.
# The virtual include path "corral/proto=proto" makes the generated gRPC module
# import "corral.proto.corral_pb2", so nothing installs a bare module.
#
# Usage: scripts/gen-proto.sh [OUT_DIR]   (default: proto/, in place)
# tests/unit/test_proto_fresh.py runs it with a temp OUT_DIR and compares.
# PYTHON picks the interpreter (default: the repo's .venv, else python3); the
# mypy plugins (protoc-gen-mypy*) are looked up beside it first.
set -euo pipefail
if [[ $# -ge 1 ]]; then
  mkdir -p "$1"
  dest="$(cd "$1" && pwd)"
fi
cd "$(dirname "$0")/.."
dest="${dest:-$PWD/proto}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PATH="$(dirname "$(command -v "$PYTHON")"):$PATH"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$PYTHON" -m grpc_tools.protoc --proto_path=corral/proto=proto \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  corral/proto/corral.proto
cp "$out"/corral/proto/corral_pb2.py "$out"/corral/proto/corral_pb2.pyi \
   "$out"/corral/proto/corral_pb2_grpc.py "$out"/corral/proto/corral_pb2_grpc.pyi "$dest"/
