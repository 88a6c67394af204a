#!/usr/bin/env bash
# Run the engine fidelity tests inside the worker image, the one place where genuine Caffe and OpenCV 4.x
# DNN are both importable, as the image's non-root user, with no network.  The checkout's tests/ and
# ../shared are mounted read-only; the code under test is what the image installed, so rebuild it first
# (docker/build.sh) after changing worker/ or common/.
#   tests/fidelity/run-in-worker-image.sh [pytest args]     e.g. -k tiny
#   SSNET_WORKER_IMAGE (default ssnet-worker:cpu), SSNET_SHARED (default ../shared beside the checkout)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
shared=$(cd "${SSNET_SHARED:-$repo/../shared}" && pwd)
image=${SSNET_WORKER_IMAGE:-ssnet-worker:cpu}
docker run --rm --network none \
  -v "$repo/tests:/repo/tests:ro" -v "$repo/pyproject.toml:/repo/pyproject.toml:ro" -v "$shared:/shared:ro" \
  -e SSNET_SHARED=/shared -e PYTHONDONTWRITEBYTECODE=1 -w /repo "$image" \
  python3 -m pytest -p no:cacheprovider -rPs tests/fidelity "$@"
