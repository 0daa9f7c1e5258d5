#!/usr/bin/env bash
# Start a one-node Slurm cluster on localhost (munged, slurmctld, slurmd), for tests and CI.
#
#   dir=$(scripts/slurm/start_local_slurm.sh)        # prints the state directory on its last line
#   source "$dir/env"                                 # exports SLURM_CONF (sbatch, squeue, submitit use it)
#   ...
#   scripts/slurm/stop_local_slurm.sh "$dir"          # stops exactly the daemons this script started
#
# Needs root (apt-get, munged as user munge, slurmd). Installs Debian's slurm-wlm and munge when missing.
# Everything it writes (slurm.conf, state, spool, logs, PIDs) lives in one temp directory, munged's socket and seed
# in /tmp/hizfo-munge.*, on ports chosen free at start: it does not collide with a site Slurm or another test cluster.
# Exit status 77 means "cannot run here" (not root, no apt-get): callers treat it as a skip.
set -euo pipefail

log() { echo "start_local_slurm: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  log "needs root (apt-get install, munged as user munge, slurmd); running as $(id -un)"
  exit 77
fi

STATE_DIR=${1:-$(mktemp -d /tmp/hizfo-slurm.XXXXXX)}
mkdir -p "$STATE_DIR"/{state,spool,log}
chmod 755 "$STATE_DIR"
: > "$STATE_DIR/pids"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    log "slurm-wlm / munge are not installed and there is no apt-get to install them"
    exit 77
  fi
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >"$STATE_DIR/log/apt.log" 2>&1 \
    || { log "apt-get update failed: $(tail -n 3 "$STATE_DIR/log/apt.log")"; exit 77; }
  apt-get install -y -qq slurm-wlm munge >>"$STATE_DIR/log/apt.log" 2>&1 \
    || { log "apt-get failed: $(tail -n 3 "$STATE_DIR/log/apt.log")"; exit 77; }
fi


# the daemons this script started, stopped in reverse order if start-up fails half way
cleanup_on_error() {
  log "start-up failed; stopping what was started (logs: $STATE_DIR/log)"
  tail -n 20 "$STATE_DIR"/log/*.log >&2 2>/dev/null || true
  "$(dirname "$0")/stop_local_slurm.sh" "$STATE_DIR" >&2 || true
}
trap cleanup_on_error ERR

# --- munge: our own munged on a private socket, with the host's key ------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating /etc/munge/munge.key"
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key >&2
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
# munged's own folder sits directly in /tmp: user munge must reach it (STATE_DIR may be under a 0700 folder,
# e.g. pytest's), and a unix socket path must stay under 108 bytes
MUNGE_DIR=$(mktemp -d /tmp/hizfo-munge.XXXXXX)
echo "$MUNGE_DIR" > "$STATE_DIR/munge_dir"
chown munge:munge "$MUNGE_DIR"
chmod 755 "$MUNGE_DIR"            # munged wants the socket directory searchable by all
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
setpriv --reuid=munge --regid=munge --init-groups munged -F --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_DIR/munged.pid" \
  --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
  --key-file=/etc/munge/munge.key >"$STATE_DIR/log/munged.log" 2>&1 &
echo "munged $!" >> "$STATE_DIR/pids"
for _ in $(seq 100); do [[ -S $MUNGE_SOCKET ]] && break; sleep 0.1; done
munge --socket="$MUNGE_SOCKET" -n | unmunge --socket="$MUNGE_SOCKET" >/dev/null

# --- slurm.conf -----------------------------------------------------------------------------------------------
read -r CTLD_PORT SLURMD_PORT < <(python3 - <<'EOF'
import socket
ports = []
holders = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    holders.append(s)
    ports.append(s.getsockname()[1])
print(*ports)
EOF
)
CPUS=$(nproc)
FREE_MB=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$(( FREE_MB * 3 / 4 ))
PARTITION=${HIZFO_SLURM_PARTITION:-debug}
CONF=$STATE_DIR/slurm.conf
cat > "$CONF" <<EOF
# written by scripts/slurm/start_local_slurm.sh: a one-node cluster on localhost for tests
ClusterName=hizfo-test
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=300
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
NodeName=localhost CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$CONF
{
  echo "export SLURM_CONF=$CONF"
  echo "export HIZFO_SLURM_PARTITION=$PARTITION"
  echo "export HIZFO_SLURM_DIR=$STATE_DIR"
} > "$STATE_DIR/env"

# --- slurmctld, then slurmd ----------------------------------------------------------------------------------
slurmctld -D -i -f "$CONF" >"$STATE_DIR/log/slurmctld.out" 2>&1 &
echo "slurmctld $!" >> "$STATE_DIR/pids"
for _ in $(seq 150); do scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.2; done
scontrol ping | grep -q "is UP" || { log "slurmctld did not come up"; false; }

slurmd -D -N localhost -f "$CONF" >"$STATE_DIR/log/slurmd.out" 2>&1 &
echo "slurmd $!" >> "$STATE_DIR/pids"
for _ in $(seq 150); do [[ $(sinfo -h -N -o %T 2>/dev/null) == idle* ]] && break; sleep 0.2; done
[[ $(sinfo -h -N -o %T) == idle* ]] || { log "slurmd did not register as idle: $(sinfo -h -N -o '%T %E')"; false; }

trap - ERR
log "up: partition '$PARTITION', $CPUS CPUs, ${REAL_MB} MB; SLURM_CONF=$CONF; pids in $STATE_DIR/pids"
echo "$STATE_DIR"
