#!/usr/bin/env bash
# Entrypoint of a node of the simulated Slurm cluster (docker/slurm-node/Dockerfile, started by
# scripts/slurm-cluster.sh):  ssnet-node controller|compute
#   controller  munged, then slurmctld in the foreground
#   compute     munged, then slurmd in the foreground (its node name: the container's host name)
# The cluster's configuration is a volume at /etc/slurm, written by slurm-cluster.sh before any node starts:
# slurm.conf and munge.key (the key every node shares).  Daemons log to the container's output (`docker logs`).
# Safe to run again in a restarted container (`docker start` after `docker kill`): a stale munge socket is replaced.
set -euo pipefail
role=${1:-compute}
conf=/etc/slurm/slurm.conf
[ -r "$conf" ] && [ -r /etc/slurm/munge.key ] || { echo "ssnet-node: $conf or /etc/slurm/munge.key missing" >&2; exit 1; }
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
install -o munge -g munge -m 0400 /etc/slurm/munge.key /etc/munge/munge.key
# /dev/fuse, where the cluster script passed it on: every user may mount (Apptainer's squashfuse, unprivileged).
# Without it, squashfuse is hidden from the users (not executable), so that Apptainer unpacks each image into a
# temporary sandbox instead of failing on the missing device.
squashfuse=(/usr/bin/squashfuse /usr/bin/squashfuse_ll)
if [ -c /dev/fuse ]; then chmod 0666 /dev/fuse; chmod 0755 "${squashfuse[@]}"; else chmod 0644 "${squashfuse[@]}"; fi
runuser -u munge -- munged --force
case $role in
  controller)
    install -d -m 0755 /var/spool/slurmctld
    exec slurmctld -D -f "$conf" ;;
  compute)
    install -d -m 0755 /var/spool/slurmd
    exec slurmd -D -f "$conf" -N "$(hostname -s)" ;;
  *) echo "ssnet-node: unknown role $role (controller or compute)" >&2; exit 2 ;;
esac
