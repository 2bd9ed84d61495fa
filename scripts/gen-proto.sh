#!/usr/bin/env bash
# Regenerates proto/corral_pb2*.py(i) from proto/corral.proto.
# The virtual include path "corral/proto=proto" makes the generated gRPC module
# import "corral.proto.corral_pb2", so nothing installs a bare module.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
python -m grpc_tools.protoc --proto_path=corral/proto=proto \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  corral/proto/corral.proto
cp "$out"/corral/proto/corral_pb2.py "$out"/corral/proto/corral_pb2.pyi \
   "$out"/corral/proto/corral_pb2_grpc.py "$out"/corral/proto/corral_pb2_grpc.pyi proto/
