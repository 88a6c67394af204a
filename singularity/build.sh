#!/usr/bin/env bash
# Build the Singularity/Apptainer images (SIF) of ssnet-server from the Docker images docker/build.sh builds:
#   singularity/build.sh [--out DIR] [--cpu] [--archive DIR] [--if-changed] [broker|client|worker ...]
#   (default: all three)
# Each image is singularity/<name>.def (Bootstrap docker-daemon: read straight out of the local Docker engine,
# so one Dockerfile stays the source of truth), written to DIR/ssnet-<name>.sif.
#   --out DIR      where the SIF files go (default: $SSNET_SLURM_IMAGES, else singularity/images)
#   --cpu          the worker is the CPU flavour (worker-cpu.def, ssnet-worker:cpu → ssnet-worker-cpu.sif);
#                  default the GPU flavour (worker.def, ssnet-worker:gpu)
#   --save DIR     do not build: `docker save` each Docker image to DIR/<repository>_<tag>.tar (on the machine
#                  with Docker), to copy to a machine with Apptainer but no Docker
#   --archive DIR  build from those tar files instead of a Docker engine (Bootstrap docker-archive)
#   --if-changed   skip an image whose SIF was built from the Docker image of the same id (recorded beside it in
#                  DIR/ssnet-<name>.sif.source; needs Docker): what the tests and CI use to build only once
#   SINGULARITY    the command (default: apptainer if installed, else singularity, else `container`)
#                  container: Apptainer in the Docker image SSNET_APPTAINER_IMAGE, made here when missing
#                  (scripts/base-images.sh sid, docker/build.sh apptainer); the Docker images reach it through
#                  `docker save` archives in a temporary directory (or --archive's), the SIF files are given to
#                  the user who runs this script
#   SSNET_APPTAINER_IMAGE  (default ssnet-apptainer:latest)
#   extra `build` flags after `--`:  singularity/build.sh -- --fakeroot
# Sizes (Apptainer 1.4.5, gzip squashfs): ssnet-broker.sif 44 MiB, ssnet-client.sif 301 MiB, ssnet-worker-cpu.sif
# 348 MiB; about 6 min for the three on 2 cores, 3 min with -- --mksquashfs-args '-Xcompression-level 1'
# (10 % larger; what `make containers` uses for the tests; singularity/README.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${SSNET_SLURM_IMAGES:-$here/images} archive="" save="" if_changed=0 worker_def=worker names=() flags=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --cpu) worker_def=worker-cpu; shift ;;
    --archive) archive=$2; shift 2 ;;
    --save) save=$2; shift 2 ;;
    --if-changed) if_changed=1; shift ;;
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
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then runner=container
  else
    echo "build.sh: neither apptainer nor singularity is installed, and no Docker engine answers to run Apptainer" \
         "in a container (or set SINGULARITY=/path/to/it); build on a machine that has one, e.g. with" \
         "--save/--archive to carry the Docker images over" >&2
    exit 1
  fi
fi
apptainer_image=${SSNET_APPTAINER_IMAGE:-ssnet-apptainer:latest}
if [ "$runner" = container ] && ! docker image inspect "$apptainer_image" >/dev/null 2>&1; then
  echo "build.sh: making $apptainer_image (Debian sid + Apptainer)" >&2
  "$here/../scripts/base-images.sh" sid
  "$here/../docker/build.sh" apptainer
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# image_id IMAGE: the Docker image's id, empty where there is no Docker engine or no such image
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
for name in "${names[@]}"; do
  def=$(def_of "$name")
  image=$(image_of "$def")
  sif=$out/$(basename "$def" .def | sed 's/^/ssnet-/').sif
  id=""
  if [ -z "$archive" ]; then id=$(image_id "$image"); fi
  if [ "$if_changed" = 1 ] && [ -n "$id" ] && [ -f "$sif" ] && [ "$(cat "$sif.source" 2>/dev/null)" = "$id" ]; then
    echo "build.sh: $sif is up to date (made from $image $id)" >&2
    continue
  fi
  rm -f "$sif.source"  # written again once the SIF is complete
  if [ "$runner" = container ]; then  # Apptainer in a container: it reads a `docker save` archive
    tars=$archive
    if [ -z "$tars" ]; then
      tars=$tmp/tars
      mkdir -p "$tars"
      echo "docker save $image > $tars/$(tarball_of "$image")" >&2
      docker save -o "$tars/$(tarball_of "$image")" "$image"
    fi
    tars=$(cd "$tars" && pwd)
    [ -f "$tars/$(tarball_of "$image")" ] || { echo "build.sh: $tars/$(tarball_of "$image") not found (make it with --save)" >&2; exit 1; }
    mkdir -p "$tmp/defs"
    sed -e 's|^Bootstrap: docker-daemon$|Bootstrap: docker-archive|' -e "s|^From: .*|From: /tars/$(tarball_of "$image")|" \
      "$def" > "$tmp/defs/$(basename "$def")"
    echo "apptainer build $sif $def  ($image, in the container $apptainer_image)" >&2
    start=$SECONDS
    # the security options: the definition's %test runs the image, which needs a user namespace
    docker run --rm --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
      --security-opt systempaths=unconfined -v "$tars:/tars:ro" -v "$tmp/defs:/defs:ro" -v "$out:/out" -e OWNER="$(id -u):$(id -g)" \
      -e SIF="/out/${sif##*/}" "$apptainer_image" sh -c 'apptainer build --force "$@" && chown "$OWNER" "$SIF"' \
      sh ${flags[@]+"${flags[@]}"} "/out/${sif##*/}" "/defs/$(basename "$def")"
    rm -f "$tmp/tars/$(tarball_of "$image")"
  else
    if [ -n "$archive" ]; then  # the same definition, reading a `docker save` tar file instead of the engine
      tarball=$(cd "$archive" && pwd)/$(tarball_of "$image")
      [ -f "$tarball" ] || { echo "build.sh: $tarball not found (make it with --save)" >&2; exit 1; }
      sed -e 's|^Bootstrap: docker-daemon$|Bootstrap: docker-archive|' -e "s|^From: .*|From: $tarball|" \
        "$def" > "$tmp/$(basename "$def")"
      def=$tmp/$(basename "$def")
    fi
    echo "$runner build $sif $def  ($image)" >&2
    start=$SECONDS
    "$runner" build --force ${flags[@]+"${flags[@]}"} "$sif" "$def"
  fi
  if [ -n "$id" ]; then echo "$id" > "$sif.source"; else rm -f "$sif.source"; fi
  echo "build.sh: $sif: $(du -m "$sif" | cut -f1) MB in $((SECONDS - start)) s" >&2
done
ls -l "$out"/*.sif
