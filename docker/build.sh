#!/usr/bin/env bash
# Build the ssnet-server images:  docker/build.sh [IMAGE ...]   (default: worker)
# Each IMAGE is docker/IMAGE/Dockerfile, built as ${SSNET_IMAGE_PREFIX:-ssnet-}IMAGE:${SSNET_IMAGE_TAG:-cpu}
# from a small context holding only wheelhouse/: py3-none-any wheels of the project's packages, built here
# (a copy of the sources is built, so the checkout gets no build/ or egg-info directories).
#   PYTHON  the interpreter that builds the wheels (default python3; it needs pip)
#   extra `docker build` flags after `--`:  docker/build.sh worker -- --build-arg THREADS=4
set -euo pipefail
cd "$(dirname "$0")/.."
images=() build_flags=()
while [ $# -gt 0 ]; do
  if [ "$1" = -- ]; then shift; build_flags=("$@"); break; fi
  images+=("$1"); shift
done
[ ${#images[@]} -gt 0 ] || images=(worker)

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
for pkg in common worker; do  # the packages the images install (add broker, client with their images)
  mkdir -p "$ctx/src/$pkg"
  cp -r "$pkg/pyproject.toml" "$pkg/src" "$ctx/src/$pkg/"
done
find "$ctx/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
# Fixed zip timestamps: the same sources give the same wheels, so docker's layer cache holds across builds.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}
"${PYTHON:-python3}" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$ctx/wheelhouse" "$ctx"/src/*
ls "$ctx/wheelhouse"

for image in "${images[@]}"; do
  docker build -f "docker/$image/Dockerfile" -t "${SSNET_IMAGE_PREFIX:-ssnet-}$image:${SSNET_IMAGE_TAG:-cpu}" \
    ${build_flags[@]+"${build_flags[@]}"} "$ctx"
done
