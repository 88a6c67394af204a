#!/usr/bin/env bash
# Build the ssnet-server images:  docker/build.sh [IMAGE ...] [-- docker build flags]
#   (default: broker client worker)
#   broker      ssnet-broker:latest      Debian bookworm-slim, Debian's Python 3.11, pyzmq and prometheus-client, ConfigArgParse
#   client      ssnet-client:latest      bookworm-slim, ROOT 6.40's Python package + uproot (LArCV1 I/O)
#   worker      ssnet-worker:cpu         Debian bullseye-slim (Python 3.9), genuine python3-caffe + OpenBLAS,
#                                        OpenCV 4.5 DNN, ONNX Runtime 1.19 + onnx 1.14
#   worker-gpu  ssnet-worker:gpu         bookworm-slim (Python 3.11), PyTorch 2.14.1 with its CUDA 13 wheels (the
#                                        torch engine; the driver comes from the NVIDIA container toolkit or
#                                        Apptainer --nv at run time): `docker/build.sh worker-gpu`.  Several GB;
#                                        not built by default, and not in this project's CI (no GPU there)
#   prometheus  ssnet-prometheus:latest  Debian's prometheus package (compose profile `monitoring`)
#   apptainer   ssnet-apptainer:latest   Debian sid-slim with Apptainer 1.4 and squashfs-tools: singularity/build.sh
#                                        runs it where Apptainer is not installed (needs debian:sid-slim:
#                                        `scripts/base-images.sh sid`)
#   slurm-node  ssnet-slurm-node:latest  ssnet-apptainer plus Slurm and munge: a node of the simulated cluster
#                                        (scripts/slurm-cluster.sh)
#
# Every image installs ssnet_common plus its own package only, from a small build context this script makes:
#   wheelhouse/  py3-none-any wheels of the project's packages, built here from a copy of the sources (so the
#                checkout gets no build/ or egg-info directories), with fixed timestamps (same sources, same
#                wheels, so docker's layer cache holds)
#   deps/        client, worker, worker-gpu: the third-party wheels of docker/<image>/requirements.txt, downloaded
#                here with `pip download` for the image's Python and platform into a cache directory keyed by
#                that file's hash, and reused while it is there
# so no image build reaches the Python package index; base images come from the registry (`docker build`
# pulls them) or, where none is reachable, from scripts/base-images.sh.  It also makes ./out, compose.yaml's
# default output directory, so that it belongs to the user who builds rather than to root.
#
#   PYTHON                interpreter that builds and downloads the wheels (default python3; it needs pip)
#   SSNET_CACHE_DIR       cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/ssnet-server)
#   extra `docker build` flags after `--`:  docker/build.sh worker -- --build-arg THREADS=4 --no-cache
set -euo pipefail
cd "$(dirname "$0")/.."
images=() build_flags=()
while [ $# -gt 0 ]; do
  if [ "$1" = -- ]; then shift; build_flags=("$@"); break; fi
  images+=("$1"); shift
done
[ ${#images[@]} -gt 0 ] || images=(broker client worker)
python=${PYTHON:-python3}
cache=${SSNET_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ssnet-server}
pip_quiet=(--quiet --disable-pip-version-check)

# image NAME -> tag, Dockerfile directory and the project packages it installs
tag_of() {
  case $1 in
    broker) echo ssnet-broker:latest ;; client) echo ssnet-client:latest ;;
    worker) echo ssnet-worker:cpu ;; worker-gpu) echo ssnet-worker:gpu ;;
    prometheus) echo ssnet-prometheus:latest ;;
    apptainer) echo ssnet-apptainer:latest ;; slurm-node) echo ssnet-slurm-node:latest ;;
    *) echo "build.sh: unknown image $1 (broker, client, worker, worker-gpu, prometheus, apptainer, slurm-node)" >&2
       exit 2 ;;
  esac
}
packages_of() {
  case $1 in broker) echo common broker ;; client) echo common data client ;; worker*) echo common data worker ;; esac
}
# images with no project package in them (their context is their Dockerfile's directory)
no_wheels() { case $1 in prometheus|apptainer|slurm-node) return 0 ;; *) return 1 ;; esac; }
# image NAME -> "PYTHON-VERSION GLIBC-MINOR" of its base image, for the wheels of its requirements.txt
python_of() {
  case $1 in broker|client|worker-gpu) echo "3.11 36" ;; worker) echo "3.9 31" ;; esac  # bookworm; bullseye
}
for image in "${images[@]}"; do tag_of "$image" >/dev/null; done

# compose.yaml's default output directory, made now by whoever builds: were it missing at `docker compose up`,
# Docker would create it owned by root, and the client (SSNET_UID) could not write there.
mkdir -p out

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The project's wheels, built once for every image.
wheels=$work/wheels
need_wheels=0
for image in "${images[@]}"; do no_wheels "$image" || need_wheels=1; done
if [ "$need_wheels" = 1 ]; then
  for pkg in common data broker worker client; do
    mkdir -p "$work/src/$pkg"
    cp -r "$pkg/pyproject.toml" "$pkg/src" "$work/src/$pkg/"
  done
  find "$work/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  # Fixed zip timestamps: the same sources give the same wheels, so docker's layer cache holds across builds.
  SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800} \
    "$python" -m pip wheel "${pip_quiet[@]}" --no-deps -w "$wheels" "$work"/src/*
fi

# deps_of IMAGE -> the directory holding IMAGE's third-party wheels (docker/IMAGE/requirements.txt, downloaded
# once per version of that file) for the Python and glibc of its base image.
deps_of() {
  local image=$1 req=docker/$1/requirements.txt version glibc abi dir n platforms=()
  read -r version glibc <<< "$(python_of "$image")"
  abi=cp${version/./}
  dir=$cache/wheels/$image-py${version/./}-$(sha256sum "$req" | cut -c1-16)
  if [ ! -f "$dir/.complete" ]; then
    echo "build.sh: downloading the wheels of $req into $dir" >&2
    for ((n = glibc; n >= 5; n--)); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    "$python" -m pip download "${pip_quiet[@]}" --no-deps --only-binary=:all: -d "$dir.tmp" -r "$req" \
      --python-version "$version" --implementation cp --abi "$abi" --abi abi3 --abi none "${platforms[@]}" \
      --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 --platform any
    cp "$req" "$dir.tmp/requirements.txt"
    touch "$dir.tmp/.complete"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

for image in "${images[@]}"; do
  tag=$(tag_of "$image") dir=docker/$image
  ctx=$work/context-$image
  mkdir -p "$ctx"
  if [ "$image" = prometheus ]; then
    cp docker/prometheus/prometheus.yml "$ctx/"
  elif no_wheels "$image"; then
    cp -r "$dir/." "$ctx/"
  else
    mkdir -p "$ctx/wheelhouse"
    for pkg in $(packages_of "$image"); do cp "$wheels/ssnet_$pkg"-*.whl "$ctx/wheelhouse/"; done
  fi
  if [ -f "$dir/requirements.txt" ]; then  # hard links where the cache is on the same filesystem: no copying GBs
    deps=$(deps_of "$image")
    cp -l -r "$deps" "$ctx/deps" 2>/dev/null || cp -r "$deps" "$ctx/deps"
  fi
  echo "build.sh: building $tag from $dir/Dockerfile" >&2
  start=$SECONDS
  docker build -f "$dir/Dockerfile" -t "$tag" ${build_flags[@]+"${build_flags[@]}"} "$ctx"
  echo "build.sh: built $tag in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))" >&2
done
