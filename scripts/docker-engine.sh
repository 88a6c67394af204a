#!/usr/bin/env bash
# Install a Docker engine (Debian's docker.io) and Compose v2 (Debian trixie's docker-compose) on a Debian
# bookworm machine, start dockerd in the background when it is not running, and wait until it answers.
# Idempotent: a second run installs nothing and returns as soon as `docker info` answers.
#   DOCKERD_LOG    where dockerd logs (default /var/log/dockerd.log)
#   DOCKERD_FLAGS  extra dockerd flags.  None are needed on this project's sandbox machines (overlay2 on ext4,
#                  iptables through nftables, the docker0 bridge and cgroup v1 all work as installed); a host
#                  without netfilter would need "--iptables=false --bridge=none" and `docker build --network host`.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "docker-engine.sh: run as root" >&2; exit 1; }
log=${DOCKERD_LOG:-/var/log/dockerd.log}
export DEBIAN_FRONTEND=noninteractive

# A trixie apt source built from the host's own Debian entry, pinned below everything else so that only
# what is asked for with `-t trixie` comes from it.
add_trixie_source() {
  local src=/etc/apt/sources.list.d/debian.sources uri keyring
  uri=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' "$src" 2>/dev/null || true)
  keyring=$(awk '/^Signed-By:/ {print $2; exit}' "$src" 2>/dev/null || true)
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
    "${uri:-http://deb.debian.org/debian}" "${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}" \
    > /etc/apt/sources.list.d/ssnet-trixie.sources
  printf 'Package: *\nPin: release n=trixie\nPin-Priority: 50\n' > /etc/apt/preferences.d/ssnet-trixie
}

if ! command -v dockerd >/dev/null || ! docker compose version >/dev/null 2>&1; then
  add_trixie_source
  apt-get update -q
  apt-get install -y -q --no-install-recommends docker.io
  apt-get install -y -q --no-install-recommends -t trixie docker-compose
fi

if ! docker info >/dev/null 2>&1; then
  # shellcheck disable=SC2086  # DOCKERD_FLAGS is a list of flags
  nohup dockerd ${DOCKERD_FLAGS:-} >>"$log" 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 $! 2>/dev/null || { echo "docker-engine.sh: dockerd exited; last lines of $log:" >&2; tail -20 "$log" >&2; exit 1; }
    sleep 1
  done
fi
docker info --format 'docker engine {{.ServerVersion}}, storage driver {{.Driver}}, cgroup {{.CgroupVersion}}'
docker compose version
