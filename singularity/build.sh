#!/usr/bin/env bash
# Build the Singularity/Apptainer images (SIF) of ssnet-server from the Docker images docker/build.sh builds:
#   singularity/build.sh [--out DIR] [--cpu] [--archive DIR] [broker|client|worker ...]   (default: all three)
# Each image is singularity/<name>.def (Bootstrap docker-daemon: read straight out of the local Docker engine,
# so one Dockerfile stays the source of truth), written to DIR/ssnet-<name>.sif.
#   --out DIR      where the SIF files go (default: $SSNET_SLURM_IMAGES, else singularity/images)
#   --cpu          the worker is the CPU flavour (worker-cpu.def, ssnet-worker:cpu → ssnet-worker-cpu.sif);
#                  default the GPU flavour (worker.def, ssnet-worker:gpu)
#   --save DIR     do not build: `docker save` each Docker image to DIR/<repository>_<tag>.tar (on the machine
#                  with Docker), to copy to a machine with Apptainer but no Docker
#   --archive DIR  build from those tar files instead of a Docker engine (Bootstrap docker-archive)
#   SINGULARITY    the command (default: apptainer if installed, else singularity)
#   extra `build` flags after `--`:  singularity/build.sh -- --fakeroot
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${SSNET_SLURM_IMAGES:-$here/images} archive="" save="" worker_def=worker names=() flags=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --cpu) worker_def=worker-cpu; shift ;;
    --archive) archive=$2; shift 2 ;;
    --save) save=$2; shift 2 ;;
    --) shift; flags=("$@"); break ;;
    broker|client|worker) names+=("$1"); shift ;;
    *) echo "build.sh: unknown argument $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=(broker client worker)

# def_of NAME: the definition file; image_of DEF: the Docker image its From line names
def_of() { if [ "$1" = worker ]; then echo "$here/$worker_def.def"; else echo "$here/$1.def"; fi; }
image_of() { sed -n 's/^From: *//p' "$1" | head -n1; }
tarball_of() { local image=$1; echo "${image%%:*}_${image##*:}.tar"; }

if [ -n "$save" ]; then
  mkdir -p "$save"
  for name in "${names[@]}"; do
    image=$(image_of "$(def_of "$name")")
    echo "docker save $image > $save/$(tarball_of "$image")" >&2
    docker save -o "$save/$(tarball_of "$image")" "$image"
  done
  exit 0
fi

runner=${SINGULARITY:-}
if [ -z "$runner" ]; then
  if command -v apptainer >/dev/null; then runner=apptainer
  elif command -v singularity >/dev/null; then runner=singularity
  else
    echo "build.sh: neither apptainer nor singularity is installed (or set SINGULARITY=/path/to/it);" \
         "build on a machine that has one, e.g. with --save/--archive to carry the Docker images over" >&2
    exit 1
  fi
fi
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for name in "${names[@]}"; do
  def=$(def_of "$name")
  image=$(image_of "$def")
  sif=$out/$(basename "$def" .def | sed 's/^/ssnet-/').sif
  if [ -n "$archive" ]; then  # the same definition, reading a `docker save` tar file instead of the engine
    tarball=$(cd "$archive" && pwd)/$(tarball_of "$image")
    [ -f "$tarball" ] || { echo "build.sh: $tarball not found (make it with --save)" >&2; exit 1; }
    sed -e 's|^Bootstrap: docker-daemon$|Bootstrap: docker-archive|' -e "s|^From: .*|From: $tarball|" \
      "$def" > "$tmp/$(basename "$def")"
    def=$tmp/$(basename "$def")
  fi
  echo "$runner build $sif $def  ($image)" >&2
  "$runner" build --force ${flags[@]+"${flags[@]}"} "$sif" "$def"
done
ls -l "$out"/*.sif
