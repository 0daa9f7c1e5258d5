#!/usr/bin/env bash
# Stop the one-node cluster that start_local_slurm.sh started in DIR: cancel its jobs, then end its daemons by PID.
#
#   scripts/slurm/stop_local_slurm.sh DIR [--keep]    # --keep leaves DIR (logs) in place
set -uo pipefail

STATE_DIR=${1:?usage: stop_local_slurm.sh DIR [--keep]}
KEEP=${2:-}
log() { echo "stop_local_slurm: $*" >&2; }
[[ -f $STATE_DIR/pids ]] || { log "no $STATE_DIR/pids: nothing to stop"; exit 0; }

alive() { kill -0 "$1" 2>/dev/null; }

# jobs run under slurmstepd, which outlives slurmd: cancel them while the controller is still up
if [[ -f $STATE_DIR/slurm.conf ]] && command -v scancel >/dev/null; then
  export SLURM_CONF=$STATE_DIR/slurm.conf
  if scontrol ping 2>/dev/null | grep -q "is UP"; then
    scancel --full --quiet $(squeue -h -o %A 2>/dev/null) 2>/dev/null || true
    for _ in $(seq 50); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.2; done
  fi
fi

# reverse start order: slurmd, slurmctld, munged
tac "$STATE_DIR/pids" | while read -r name pid; do
  [[ -n ${pid:-} ]] || continue
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then log "$name ($pid) ignored SIGTERM; sending SIGKILL"; kill -KILL "$pid" 2>/dev/null; fi
  fi
  log "stopped $name ($pid)"
done
: > "$STATE_DIR/pids"
if [[ -f $STATE_DIR/munge_dir ]]; then
  munge_dir=$(cat "$STATE_DIR/munge_dir")
  [[ $munge_dir == /tmp/hizfo-munge.* ]] && rm -rf "$munge_dir"
fi
if [[ $KEEP != --keep ]]; then rm -rf "$STATE_DIR"; fi
