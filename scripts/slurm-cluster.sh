#!/usr/bin/env bash
# A simulated multi-node Slurm cluster made of Docker containers, to run the Slurm job scripts
# (singularity/slurm) the way a site runs them: SIF images under Apptainer, as a non-root user, broker, workers and
# clients on different nodes that share a filesystem.  tests/cluster/test_multinode.py uses it; so can you:
#
#   scripts/slurm-cluster.sh up       make (or complete) the cluster and wait until every node takes jobs
#   scripts/slurm-cluster.sh status   the containers, sinfo and squeue
#   scripts/slurm-cluster.sh user [COMMAND...]   run COMMAND (default: a login shell) as the user on the
#                                     controller, the cluster's login node: sbatch, squeue, the submit_* scripts
#   scripts/slurm-cluster.sh down     remove the containers, the network and the volumes
#
# What `up` makes (idempotent: what exists is kept; a node container that was killed is started again):
#   - the node image ssnet-slurm-node:latest (Debian sid: Slurm, munge, Apptainer; docker/slurm-node), built when
#     missing by scripts/base-images.sh sid and docker/build.sh apptainer slurm-node
#   - a Docker network <name>, on which every node is known by its short host name (ctl, c1, c2, ...)
#   - the controller <name>-ctl (munged, slurmctld; also the login node) and N compute nodes <name>-c1..cN
#     (munged, slurmd), all from that one image; no systemd, no cgroups (proctrack/linuxproc, task/none)
#   - a volume <name>-etc at /etc/slurm on every node: slurm.conf and the shared munge key (written once)
#   - the shared filesystem at /cluster on every node (a volume <name>-shared, or a host directory): the users'
#     homes /cluster/home/<user> and the project directory /cluster/project (both the user's)
#   - partitions `batch` (the default) and `gpu` (ssnet.conf's defaults), each of every compute node; the nodes
#     have no GPUs: run CPU workers (SSNET_SLURM_WORKER_GPUS=0)
# Apptainer runs unprivileged (user namespaces), so every node runs with seccomp, AppArmor and the masked /proc
# paths lifted (--security-opt seccomp=unconfined, apparmor=unconfined, systempaths=unconfined), not --privileged.
#
#   SSNET_CLUSTER           name of the cluster: prefix of its containers, network and volumes (default ssnet-cluster)
#   SSNET_CLUSTER_NODES     compute nodes (default 3)
#   SSNET_CLUSTER_SHARED    a host directory to bind as /cluster (default: the volume <name>-shared); the tests
#                           use one, so that they read logs and outputs directly
#   SSNET_CLUSTER_USER      the user who submits (default physicist; uid 1000, made in the image)
#   SSNET_CLUSTER_IMAGE     the node image (default ssnet-slurm-node:latest)
#   SSNET_CLUSTER_NODE_MEM  MiB each node offers to jobs (default 4096)
#   SSNET_CLUSTER_TIMEOUT   seconds to wait for the nodes (default 120)
#   SSNET_CLUSTER_FUSE      1: give the nodes /dev/fuse, so that Apptainer mounts SIF images with squashfuse
#                           (about 1 s per exec); 0: not, and Apptainer unpacks each image into a temporary
#                           sandbox at every exec (seconds to tens of seconds, and the image's size on disk);
#                           default 1 where this machine has /dev/fuse
#   SSNET_CLUSTER_LABEL     extra label key=value on every container (the tests mark theirs)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=${SSNET_CLUSTER:-ssnet-cluster}
nodes=${SSNET_CLUSTER_NODES:-3}
shared=${SSNET_CLUSTER_SHARED:-}
user=${SSNET_CLUSTER_USER:-physicist}
image=${SSNET_CLUSTER_IMAGE:-ssnet-slurm-node:latest}
node_mem=${SSNET_CLUSTER_NODE_MEM:-4096}
timeout=${SSNET_CLUSTER_TIMEOUT:-120}
ctl=$name-ctl
fuse=${SSNET_CLUSTER_FUSE:-}
if [ -z "$fuse" ]; then if [ -c /dev/fuse ]; then fuse=1; else fuse=0; fi; fi
security=(--security-opt seccomp=unconfined --security-opt apparmor=unconfined --security-opt systempaths=unconfined)

die() { echo "slurm-cluster.sh: $*" >&2; exit 1; }
# wait_for WHAT COMMAND...: poll COMMAND (silently) until it succeeds, for at most $timeout seconds
wait_for() {
  local what=$1 deadline=$((SECONDS + timeout)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${timeout} s waiting for $what"
    sleep 0.5
  done
}
exists() { docker "$1" inspect "$2" >/dev/null 2>&1; }
node_names() { seq -f 'c%g' 1 "$nodes"; }
# the shared filesystem as a `docker run -v` source
shared_source() { if [ -n "$shared" ]; then (cd "$shared" && pwd); else echo "$name-shared"; fi; }

slurm_conf() {
  local cpus
  cpus=$(nproc)
  cat <<CONF
# Written by ssnet-server scripts/slurm-cluster.sh: the simulated cluster $name.
ClusterName=$name
SlurmctldHost=ctl
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# A node that stops answering is down after SlurmdTimeout seconds, its jobs NODE_FAIL; it rejoins on its own.
ReturnToService=2
SlurmdTimeout=15
KillWait=10
MinJobAge=600
NodeName=c[1-$nodes] CPUs=$cpus RealMemory=$node_mem State=UNKNOWN
PartitionName=batch Nodes=c[1-$nodes] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
PartitionName=gpu Nodes=c[1-$nodes] MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
CONF
}

up() {
  command -v docker >/dev/null && docker info >/dev/null 2>&1 || die "no Docker engine answers"
  if ! exists image "$image"; then
    echo "slurm-cluster.sh: building $image" >&2
    "$here/base-images.sh" sid >&2
    "$here/../docker/build.sh" apptainer slurm-node >&2
  fi
  exists network "$name" || docker network create --label "ssnet-cluster=$name" "$name" >/dev/null
  exists volume "$name-etc" || docker volume create --label "ssnet-cluster=$name" "$name-etc" >/dev/null
  if [ -z "$shared" ] && ! exists volume "$name-shared"; then
    docker volume create --label "ssnet-cluster=$name" "$name-shared" >/dev/null
  fi
  [ -z "$shared" ] || mkdir -p "$shared"
  local src
  src=$(shared_source)
  # The configuration (rewritten: the same for the same settings) and the munge key (made once); the shared
  # filesystem's home and project directories.
  slurm_conf | docker run --rm -i --entrypoint bash -v "$name-etc:/etc/slurm" -v "$src:/cluster" "$image" -c '
    set -euo pipefail
    cat > /etc/slurm/slurm.conf.new && mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
    [ -s /etc/slurm/munge.key ] || mungekey --create --keyfile=/etc/slurm/munge.key
    chmod 0400 /etc/slurm/munge.key
    chmod 0755 /cluster
    install -d -m 0755 /cluster/home
    install -d -m 0755 -o "$1" -g "$1" "/cluster/home/$1" /cluster/project' bash "$user"

  local node role state extra=()
  [ -z "${SSNET_CLUSTER_LABEL:-}" ] || extra=(--label "$SSNET_CLUSTER_LABEL")
  [ "$fuse" != 1 ] || extra+=(--device /dev/fuse)
  for node in ctl $(node_names); do
    role=compute
    [ "$node" != ctl ] || role=controller
    state=$(docker inspect -f '{{.State.Running}}' "$name-$node" 2>/dev/null || echo none)
    case $state in
      true) ;;
      false) docker start "$name-$node" >/dev/null ;;  # killed: started again with the same filesystem
      *) docker run -d --name "$name-$node" --hostname "$node" --network "$name" --network-alias "$node" --init \
           --label "ssnet-cluster=$name" ${extra[@]+"${extra[@]}"} "${security[@]}" \
           -v "$name-etc:/etc/slurm:ro" -v "$src:/cluster" "$image" "$role" >/dev/null ;;
    esac
  done
  wait_for "slurmctld on $ctl (docker logs $ctl)" docker exec "$ctl" scontrol ping
  # Every node up and taking jobs; one left down by an earlier failure (a killed container) is resumed.
  local deadline=$((SECONDS + timeout)) states
  while :; do
    states=$(docker exec "$ctl" sinfo -h -N -p batch -o '%N %T' 2>/dev/null || true)
    if [ "$(grep -cE ' (idle|mixed|allocated)$' <<< "$states")" = "$nodes" ]; then break; fi
    while read -r node state; do
      case $state in
        down*|drain*|fail*) docker exec "$ctl" scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
      esac
    done <<< "$states"
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${timeout} s waiting for the nodes (sinfo: $(tr '\n' ' ' <<< "$states"))"
    sleep 0.5
  done
  echo "slurm-cluster.sh: cluster $name up: controller $ctl, nodes $(node_names | tr '\n' ' ')(shared filesystem $src at /cluster, user $user)" >&2
}

down() {
  local ids
  ids=$(docker ps -aq --filter "label=ssnet-cluster=$name")
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
  ! exists network "$name" || docker network rm "$name" >/dev/null
  for volume in "$name-etc" "$name-shared"; do
    ! exists volume "$volume" || docker volume rm "$volume" >/dev/null
  done
  echo "slurm-cluster.sh: cluster $name removed${shared:+ (the directory $shared is left)}" >&2
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status)
    docker ps -a --filter "label=ssnet-cluster=$name" --format '{{.Names}}\t{{.Status}}'
    docker exec "$ctl" sinfo -N -l 2>/dev/null || echo "(no controller answers)"
    docker exec "$ctl" squeue 2>/dev/null || true ;;
  user)
    shift
    home=/cluster/home/$user
    if [ $# -eq 0 ]; then exec docker exec -it -u "$user" -w "$home" -e HOME="$home" "$ctl" bash -l; fi
    exec docker exec -u "$user" -w "$home" -e HOME="$home" "$ctl" "$@" ;;  # no -i: it would read on from a pasted script
  *) die "usage: slurm-cluster.sh up|status|user [COMMAND...]|down (see the comment at the top of $0)" ;;
esac
