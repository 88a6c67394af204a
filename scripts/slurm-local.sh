#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine, for the cluster tests and CI: munged, slurmctld and slurmd
# in the background (no systemd, no cgroups), then wait until the node is idle.  Idempotent: a second run
# starts nothing and returns as soon as `sinfo` answers.  Prints `export SLURM_CONF=...` on stdout: every Slurm
# command (sbatch, squeue, scancel, sinfo) must see that variable.
#
# Everything lives in a private directory with private ports, so a real Slurm installation on the machine is
# neither read nor disturbed: ${SLURM_LOCAL_DIR:-/var/lib/ssnet-slurm}/{slurm.conf,gres.conf,state,spool,log}.
# The node offers its real CPU count and memory, every CPU shareable by SLURM_LOCAL_OVERSUBSCRIBE jobs (many
# small jobs run at once), and SLURM_LOCAL_GPUS fake GPUs (gres gpu; character devices like /dev/null stand in
# for /dev/nvidia*, so Slurm allocates them one per job and sets CUDA_VISIBLE_DEVICES as on a GPU node).
#
#   SLURM_LOCAL_INSTALL=1       apt-get install slurm-wlm and munge when missing (CI sets it; default: fail)
#   SLURM_LOCAL_DIR             state, config and logs (default /var/lib/ssnet-slurm)
#   SLURM_LOCAL_PORT            slurmctld port; slurmd uses the next one (default 16817)
#   SLURM_LOCAL_GPUS            fake GPUs offered (default 4)
#   SLURM_LOCAL_OVERSUBSCRIBE   jobs that may share one CPU (default 8)
#   SLURM_LOCAL_TIMEOUT         seconds to wait for each daemon (default 60)
#   slurm-local.sh stop         stop the daemons this script started (by their pid files)
set -euo pipefail
dir=${SLURM_LOCAL_DIR:-/var/lib/ssnet-slurm}
port=${SLURM_LOCAL_PORT:-16817}
gpus=${SLURM_LOCAL_GPUS:-4}
share=${SLURM_LOCAL_OVERSUBSCRIBE:-8}
timeout=${SLURM_LOCAL_TIMEOUT:-60}
conf=$dir/slurm.conf
export SLURM_CONF=$conf

die() { echo "slurm-local.sh: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# wait_for WHAT COMMAND...: poll COMMAND (silently) until it succeeds, for at most $timeout seconds
wait_for() {
  local what=$1 deadline=$((SECONDS + timeout)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${timeout} s waiting for $what"
    sleep 0.2
  done
}

if [ "${1:-}" = stop ]; then
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
    if alive "$pidfile"; then kill "$(cat "$pidfile")"; fi
  done
  exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (slurmd runs jobs as their users)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  [ "${SLURM_LOCAL_INSTALL:-0}" = 1 ] || die "slurm-wlm and munge are not installed (SLURM_LOCAL_INSTALL=1 installs them)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends slurm-wlm munge >&2
fi
mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/dev"

# munge: the machine's own munged if one answers, else ours (its key is created once).
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key 2>/dev/null || true
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  if ! alive "$dir/munged.pid"; then
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    wait_for "munged's pid file" test -s /run/munge/munged.pid
    cp /run/munge/munged.pid "$dir/munged.pid"
  fi
  wait_for "munged" sh -c 'munge -n | unmunge'
fi

host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # MiB, leaving 10% to the system
for i in $(seq 0 $((gpus - 1))); do  # character devices like /dev/null (Slurm checks the file type)
  [ -c "$dir/dev/gpu$i" ] && continue
  rm -f "$dir/dev/gpu$i"
  if ! mknod "$dir/dev/gpu$i" c 1 3 2>/dev/null; then
    echo "slurm-local.sh: cannot create device files here (mknod): no fake GPUs" >&2
    gpus=0
    break
  fi
done
gres_node="" gres_types=""
if [ "$gpus" -gt 0 ]; then
  gres_node=" Gres=gpu:$gpus" gres_types="GresTypes=gpu"
  printf 'NodeName=%s Name=gpu File=%s/dev/gpu[0-%d]\n' "$host" "$dir" $((gpus - 1)) > "$dir/gres.conf.new"
else
  : > "$dir/gres.conf.new"
fi
cat > "$conf.new" <<CONF
# Written by ssnet-server scripts/slurm-local.sh: a single-node test cluster (rewritten on each run).
ClusterName=ssnet-local
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=10
MinJobAge=600
$gres_types
NodeName=$host CPUs=$cpus RealMemory=$mem$gres_node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:$share
CONF
changed=0
cmp -s "$conf.new" "$conf" || changed=1
cmp -s "$dir/gres.conf.new" "$dir/gres.conf" || changed=1
mv "$conf.new" "$conf"
mv "$dir/gres.conf.new" "$dir/gres.conf"

if [ "$changed" = 1 ]; then  # a different configuration: restart our daemons with it
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    if alive "$pidfile"; then
      pid=$(cat "$pidfile"); kill "$pid"
      wait_for "pid $pid to exit" sh -c "! kill -0 $pid"
    fi
  done
fi
if ! alive "$dir/slurmctld.pid"; then
  slurmctld -f "$conf"
fi
wait_for "slurmctld (log: $dir/log/slurmctld.log)" scontrol ping
if ! alive "$dir/slurmd.pid"; then
  slurmd -f "$conf"
fi
# A node left down or drained by an earlier run comes back; then wait until it takes jobs.
state() { sinfo -h -N -n "$host" -o %T 2>/dev/null | head -n1; }
wait_for "slurmd to register (log: $dir/log/slurmd.log)" sh -c "sinfo -h -N -n '$host' -o %T | grep -vq unknown"
case $(state) in
  down*|drain*|fail*) scontrol update NodeName="$host" State=RESUME ;;
esac
wait_for "node $host to be idle (sinfo: $(state); log: $dir/log/slurmd.log)" \
  sh -c "sinfo -h -N -n '$host' -o %T | grep -Eq '^(idle|mixed|allocated)'"
echo "export SLURM_CONF=$conf"
