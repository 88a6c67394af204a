#!/usr/bin/env bash
# Regenerate worker/src/ssnet_worker/caffe/caffe.desc, the compiled form of caffe.proto beside it (a
# FileDescriptorSet: version-independent, unlike generated _pb2.py code, so one file serves protobuf 3.20 to 7.x).
# Needs grpcio-tools (protoc), which the dev environment has:  scripts/gen-caffe-descriptor.sh
set -euo pipefail
cd "$(dirname "$0")/../worker/src/ssnet_worker/caffe"
"${PYTHON:-../../../../.venv/bin/python}" -m grpc_tools.protoc -I. --descriptor_set_out=caffe.desc caffe.proto
echo "wrote $(pwd)/caffe.desc ($(wc -c < caffe.desc) bytes)"
