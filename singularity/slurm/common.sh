# Sourced by the submit_* commands and by the batch scripts they submit (bash).  Loads the configuration
# (SSNET_CONF, default ssnet.conf beside this file), exports it, and defines the helpers: ssnet_sbatch (sbatch
# with the configured partition, account, time, memory), ssnet_command (the container runner) and run_service
# (a service in the background, waited for through signals).

# The directory of these scripts: given by the submitting command (a batch script runs from Slurm's spool).
: "${SSNET_SLURM_DIR:=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
: "${SSNET_CONF:=$SSNET_SLURM_DIR/ssnet.conf}"
export SSNET_SLURM_DIR SSNET_CONF
[ -r "$SSNET_CONF" ] || { echo "ssnet: configuration file $SSNET_CONF not found" >&2; exit 2; }
# shellcheck source=ssnet.conf
source "$SSNET_CONF"
# Export every setting, so the jobs (sbatch --export=ALL) and the services see the same values.
while IFS= read -r name; do export "${name?}"; done < <(compgen -v SSNET_)

ssnet_log() { echo "$(date '+%Y-%m-%d %H:%M:%S') ${ssnet_log_name:-${0##*/}}[$$]: $*" >&2; }
ssnet_die() { ssnet_log "error: $*"; exit "${2:-1}"; }

case $SSNET_RUNNER in
  singularity|apptainer|native) ;;
  *) ssnet_die "SSNET_RUNNER must be singularity, apptainer or native, not '$SSNET_RUNNER'" 2 ;;
esac
case $SSNET_SLURM_WORKER_GPUS in
  0|1) ;;
  *) ssnet_die "SSNET_SLURM_WORKER_GPUS must be 0 (CPU workers) or 1 (one worker per GPU), not '$SSNET_SLURM_WORKER_GPUS'" 2 ;;
esac
# The worker image, unless set: the GPU flavour (PyTorch on CUDA) for GPU workers, the CPU flavour otherwise.
if [ -z "${SSNET_SLURM_WORKER_IMAGE:-}" ]; then
  if [ "$SSNET_SLURM_WORKER_GPUS" -gt 0 ]; then SSNET_SLURM_WORKER_IMAGE=$SSNET_SLURM_IMAGES/ssnet-worker.sif
  else SSNET_SLURM_WORKER_IMAGE=$SSNET_SLURM_IMAGES/ssnet-worker-cpu.sif; fi
  export SSNET_SLURM_WORKER_IMAGE
fi
if [ "$SSNET_RUNNER" = native ] && [ -n "$SSNET_SLURM_NATIVE_PATH" ]; then
  export PATH="$SSNET_SLURM_NATIVE_PATH:$PATH"
fi

# ssnet_sbatch KIND SBATCH-ARGS...: submit with KIND's (broker, worker, client) partition, time, memory, CPUs,
# the account, QOS and extra flags; the job id on stdout.
ssnet_sbatch() {
  local kind=$1 upper; shift
  upper=$(echo "$kind" | tr '[:lower:]' '[:upper:]')
  local partition="SSNET_SLURM_${upper}_PARTITION" time="SSNET_SLURM_${upper}_TIME" mem="SSNET_SLURM_${upper}_MEM"
  local cpus="SSNET_SLURM_${upper}_CPUS" extra="SSNET_SLURM_${upper}_EXTRA"
  local args=(--parsable --export=ALL --job-name="$SSNET_SLURM_JOB_PREFIX-$kind" --chdir="$SSNET_SLURM_RUN_DIR")
  [ -z "${!partition}" ] || args+=(--partition="${!partition}")
  [ -z "${!time}" ] || args+=(--time="${!time}")
  [ -z "${!mem}" ] || args+=(--mem="${!mem}")
  [ -z "${!cpus}" ] || args+=(--cpus-per-task="${!cpus}")
  [ -z "$SSNET_SLURM_ACCOUNT" ] || args+=(--account="$SSNET_SLURM_ACCOUNT")
  [ -z "$SSNET_SLURM_QOS" ] || args+=(--qos="$SSNET_SLURM_QOS")
  local more=()
  read -r -a more <<< "$SSNET_SLURM_EXTRA ${!extra}"
  mkdir -p "$SSNET_SLURM_RUN_DIR" "$SSNET_SLURM_LOG_DIR"
  local out
  out=$(sbatch "${args[@]}" ${more[@]+"${more[@]}"} "$@") || ssnet_die "sbatch failed"
  echo "${out%%;*}"
}

ssnet_client_binds=()
# ssnet_binds KIND: the bind mounts of KIND's container, one src[:dst[:opts]] per line (no duplicates).
# Clients add ssnet_client_binds (their input and output directories), set by client.sbatch.
ssnet_binds() {
  local kind=$1 item
  {
    echo "$SSNET_SLURM_RUN_DIR"
    [ "$kind" != worker ] || [ -z "${SSNET_WORKER_SSNET_MODEL_DIR:-}" ] || echo "$SSNET_WORKER_SSNET_MODEL_DIR:$SSNET_WORKER_SSNET_MODEL_DIR:ro"
    [ "$kind" != client ] || printf '%s\n' ${ssnet_client_binds[@]+"${ssnet_client_binds[@]}"}
    [ "$SSNET_SLURM_CURVE" != 1 ] || echo "$SSNET_SLURM_KEY_DIR"
    IFS=, read -r -a item <<< "$SSNET_SLURM_BIND"
    printf '%s\n' ${item[@]+"${item[@]}"}
  } | awk -F: 'NF && !seen[$1]++'
}

# ssnet_curve_keys KIND: with SSNET_SLURM_CURVE=1 (the default), make the user's CURVE key pairs on first use
# (broker, client, worker, under the private SSNET_SLURM_KEY_DIR; one job makes them, under a lock) and point
# KIND's service at them: the broker admits only the user's client key as a client and worker key as a worker;
# workers and clients take the broker's public key from its endpoint file.
ssnet_curve_keys() {
  local kind=$1 dir=$SSNET_SLURM_KEY_DIR name
  [ "$SSNET_SLURM_CURVE" = 1 ] || { ssnet_log "CURVE off (SSNET_SLURM_CURVE=$SSNET_SLURM_CURVE): talking in the clear"; return 0; }
  (umask 077 && mkdir -p "$dir/private") || ssnet_die "cannot make the key directory $dir" 2
  chmod 700 "$dir" "$dir/private"
  mkdir -p "$dir/clients" "$dir/workers" && chmod 755 "$dir/clients" "$dir/workers"
  (
    flock 9 || ssnet_log "warning: cannot lock $dir/.lock: going on"
    for name in broker client worker; do
      if [ ! -e "$dir/private/$name.key_secret" ]; then
        ssnet_command "$kind" ssnet-keys create "$dir/private" "$name"
        "${SSNET_CMD[@]}" >/dev/null || ssnet_die "could not create the CURVE key $name in $dir/private" 2
        ssnet_log "made the CURVE key pair $name in $dir/private"
      fi
    done
    [ -e "$dir/clients/client.key" ] || cp "$dir/private/client.key" "$dir/clients/client.key"
    [ -e "$dir/workers/worker.key" ] || cp "$dir/private/worker.key" "$dir/workers/worker.key"
  ) 9>"$dir/.lock"
  case $kind in
    broker) export SSNET_BROKER_CURVE_SECRET=$dir/private/broker.key_secret SSNET_BROKER_CURVE_CLIENTS=$dir/clients \
              SSNET_BROKER_CURVE_WORKERS=$dir/workers ;;
    worker) export SSNET_WORKER_CURVE_SECRET=$dir/private/worker.key_secret ;;
    client) export SSNET_CLIENT_CURVE_SECRET=$dir/private/client.key_secret ;;
  esac
}

# ssnet_command KIND COMMAND ARGS...: set SSNET_CMD to the command line that runs COMMAND for KIND with the
# configured runner: `singularity|apptainer exec [--nv] --bind ... IMAGE COMMAND ARGS` or COMMAND ARGS itself.
ssnet_command() {
  local kind=$1 upper image bind; shift
  SSNET_CMD=()
  if [ "$SSNET_RUNNER" = native ]; then
    command -v "$1" >/dev/null || ssnet_die "$1 is not on PATH ($PATH); set SSNET_SLURM_NATIVE_PATH" 2
    SSNET_CMD=("$@")
    return
  fi
  upper=$(echo "$kind" | tr '[:lower:]' '[:upper:]')
  image="SSNET_SLURM_${upper}_IMAGE"
  [ -r "${!image}" ] || ssnet_die "image ${!image} not found (build it with singularity/build.sh, or set $image)" 2
  command -v "$SSNET_RUNNER" >/dev/null || ssnet_die "$SSNET_RUNNER is not on PATH (module load $SSNET_RUNNER?)" 2
  SSNET_CMD=("$SSNET_RUNNER" exec)
  if [ "$kind" = worker ] && [ "$SSNET_SLURM_WORKER_GPUS" -gt 0 ]; then SSNET_CMD+=(--nv); fi
  while IFS= read -r bind; do SSNET_CMD+=(--bind "$bind"); done < <(ssnet_binds "$kind")
  SSNET_CMD+=("${!image}" "$@")
}

# run_service COMMAND ARGS...: run a service in the background and wait for it; return its exit status.
# Slurm signals every process of a job that is cancelled or preempted (SIGTERM; SIGKILL after KillWait): the
# service gets that SIGTERM itself, so the shell does not pass it on (a second SIGTERM makes a worker abandon
# its request) and keeps waiting for the service to finish cleanly.  SIGUSR1 (the --signal=B:USR1@SECONDS
# warning before the time limit, sent to this shell only) is passed on to the service as SIGTERM.
# shellcheck disable=SC2034  # SSNET_STOPPING is read by the batch scripts
SSNET_CHILD="" SSNET_TRAPPED="" SSNET_STOPPING=""
# shellcheck disable=SC2034
_ssnet_on_term() { SSNET_TRAPPED=1 SSNET_STOPPING=1; }
# shellcheck disable=SC2034
_ssnet_on_usr1() {
  SSNET_TRAPPED=1 SSNET_STOPPING=1
  ssnet_log "time limit near: stopping the service"
  if [ -n "$SSNET_CHILD" ]; then kill -TERM "$SSNET_CHILD" 2>/dev/null || true; fi
}
trap _ssnet_on_term TERM INT
trap _ssnet_on_usr1 USR1
run_service() {
  local rc
  "$@" &
  SSNET_CHILD=$!
  while :; do
    SSNET_TRAPPED=""
    rc=0
    wait "$SSNET_CHILD" || rc=$?
    if [ -n "$SSNET_TRAPPED" ] && [ "$rc" -gt 128 ]; then  # a signal interrupted the wait, not the service
      if kill -0 "$SSNET_CHILD" 2>/dev/null; then continue; fi
      rc=0
      wait "$SSNET_CHILD" || rc=$?
    fi
    break
  done
  SSNET_CHILD=""
  return "$rc"
}

# ssnet_output_for INPUT OUTDIR: the output file of a client job whose (first) input is INPUT.
ssnet_output_for() {
  local name=${1##*/}
  echo "$2/${name%.root}$SSNET_SLURM_OUTPUT_SUFFIX.root"
}

# ssnet_scan_list LIST OUTDIR: read a client list (per line one input file, or several read as one sequence;
# blank lines and #comments skipped; paths relative to LIST's directory) and set ssnet_total (lines),
# ssnet_done (lines whose output exists) and ssnet_pending (the other lines, absolute paths).  Two lines
# that would write the same output are an error.
ssnet_scan_list() {
  local list=$1 outdir=$2 listdir raw out i
  local -a files
  local -A outputs=()
  listdir=$(cd "$(dirname "$list")" && pwd)
  ssnet_total=0 ssnet_done=0 ssnet_pending=()
  while IFS= read -r raw || [ -n "$raw" ]; do
    read -r -a files <<< "${raw%%#*}"
    [ ${#files[@]} -gt 0 ] || continue
    for i in "${!files[@]}"; do
      case ${files[$i]} in /*) ;; *) files[i]=$listdir/${files[$i]} ;; esac
    done
    ssnet_total=$((ssnet_total + 1))
    out=$(ssnet_output_for "${files[0]}" "$outdir")
    [ -z "${outputs[$out]:-}" ] || ssnet_die "two lines of $list write the same output $out: rename an input" 2
    outputs[$out]=1
    if [ -e "$out" ]; then ssnet_done=$((ssnet_done + 1)); else ssnet_pending+=("${files[*]}"); fi
  done < "$list"
}
