#!/usr/bin/env bash
# Make the Debian base images locally (no registry is reachable): debootstrap a minbase rootfs, trim it like
# the official -slim images, and `docker import` it as debian:<suite>-slim.  An image whose tag already
# exists is skipped; the rootfs tarballs are cached, so re-creating a removed image takes seconds.
#   base-images.sh [suite ...]   (default: bullseye bookworm; sid for the Apptainer and Slurm-node images,
#                                scripts/apptainer-image.sh)
#   SSNET_CACHE_DIR  tarball cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/ssnet-server)
#   DEBIAN_MIRROR    (default http://deb.debian.org/debian)
# Delete the cache directory to re-debootstrap (e.g. after changing this script or for newer packages).
set -euo pipefail
cache=${SSNET_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ssnet-server}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$cache"

root=
trap 'if [ -n "$root" ]; then rm -rf "$root"; fi' EXIT  # a debootstrap that failed half-way

build_rootfs() {  # build_rootfs SUITE TARBALL
  local suite=$1 tarball=$2
  command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends debootstrap; }
  root=$(mktemp -d "$cache/rootfs-$suite.XXXXXX")
  debootstrap --variant=minbase "$suite" "$root" "$mirror"
  if [ "$suite" = sid ]; then  # unstable has no -updates or -security suites
    echo "deb $mirror $suite main" > "$root/etc/apt/sources.list"
  else
    cat > "$root/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian}/debian-security $suite-security main
SOURCES
  fi
  # What the official slim images do: no docs, man pages or translations now or in later installs.
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
  echo 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
    > "$root/etc/apt/apt.conf.d/docker-clean"
  echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/docker-no-languages"
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"  # the build host's; docker provides its own
  touch "$root/etc/resolv.conf" "$root/etc/hostname"
  rm -rf "$root"/usr/share/{man,info,locale}/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/log/*.log "$root"/tmp/*
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$root"
  root=
}

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(bullseye bookworm)
for suite in "${suites[@]}"; do
  tag=debian:$suite-slim
  if docker image inspect "$tag" >/dev/null 2>&1; then echo "base-images.sh: $tag exists"; continue; fi
  tarball=$cache/rootfs-$suite.tar
  [ -f "$tarball" ] || build_rootfs "$suite" "$tarball"
  docker import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase $suite" "$tarball" "$tag"
  echo "base-images.sh: imported $tag"
done
