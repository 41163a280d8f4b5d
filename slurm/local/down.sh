#!/usr/bin/env bash
# Stop the cluster started by up.sh: cancel its jobs, wait for them to end, then stop slurmd, slurmctld and munged
# by the PIDs in their PID files (never by name).
BASE=${DNABERT_SLURM_DIR:-/tmp/dnabert-slurm}
export SLURM_CONF="$BASE/slurm.conf"

stop_pid_file() {
  local file=$1 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$file"
}

if [ -s "$BASE/run/slurmctld.pid" ] && [ -f "$SLURM_CONF" ]; then
  scancel --full --quiet $(squeue -h -o %i 2>/dev/null) 2>/dev/null || true
  # proctrack/linuxproc only kills what it tracks: let the jobs' processes end before the daemons go.
  for _ in $(seq 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
fi
for daemon in slurmd slurmctld munged; do stop_pid_file "$BASE/run/$daemon.pid"; done
rm -f "$BASE"/munge/munge.socket.2*
echo "down.sh: SLURM stopped" >&2
