#!/usr/bin/env bash
# Regenerates the committed protobuf modules (and their .pyi stubs) from runtime/conveyor_runtime/protocol/proto/*.proto.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
"$py" -m grpc_tools.protoc -I runtime --python_out=runtime --pyi_out=runtime runtime/conveyor_runtime/protocol/proto/open_inference.proto
echo "generated runtime/conveyor_runtime/protocol/proto/open_inference_pb2.py{,i}"
