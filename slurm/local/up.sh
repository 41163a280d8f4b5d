#!/usr/bin/env bash
# Start a one-node SLURM cluster on this host (munged + slurmctld + slurmd, as root, no systemd) for tests and
# local trials. Installs Debian's slurm-wlm and munge with apt-get when they are missing.
#
#   slurm/local/up.sh            # prints the line to source, e.g. export SLURM_CONF=/tmp/dnabert-slurm/slurm.conf
#   eval "$(slurm/local/up.sh | tail -n 1)"; sbatch ...; slurm/local/down.sh
#
# Everything lives under $DNABERT_SLURM_DIR (default /tmp/dnabert-slurm); /etc is left alone, so client commands
# need SLURM_CONF. Ports default to 6917/6918 so a cluster started by other tools on 6817/6818 does not clash.
# Exit status 3: SLURM could not be installed (no apt-get, no network, not root).
set -euo pipefail
BASE=${DNABERT_SLURM_DIR:-/tmp/dnabert-slurm}
CTLD_PORT=${DNABERT_SLURMCTLD_PORT:-6917}
SLURMD_PORT=${DNABERT_SLURMD_PORT:-6918}
HERE=$(cd "$(dirname "$0")" && pwd)
started=$(date +%s)

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "up.sh: slurm-wlm/munge are not installed and cannot be installed here (needs root and apt-get)" >&2
    exit 3
  fi
  echo "up.sh: installing slurm-wlm and munge with apt-get" >&2
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      slurm-wlm munge; } >&2 || { echo "up.sh: apt-get install slurm-wlm munge failed" >&2; exit 3; }
fi

if [ -s "$BASE/run/slurmctld.pid" ] && kill -0 "$(cat "$BASE/run/slurmctld.pid")" 2>/dev/null; then
  echo "up.sh: a cluster is already running under $BASE; run down.sh first" >&2
  exit 1
fi
mkdir -p "$BASE"/{munge,state,spool,log,run}
chmod 700 "$BASE/munge"

# munge: our own key and socket, so the system's munge (if any) is untouched.
[ -s "$BASE/munge/munge.key" ] || head -c 1024 /dev/urandom > "$BASE/munge/munge.key"
chmod 400 "$BASE/munge/munge.key"
munged --force --socket="$BASE/munge/munge.socket.2" --key-file="$BASE/munge/munge.key" \
  --pid-file="$BASE/run/munged.pid" --log-file="$BASE/log/munged.log" --seed-file="$BASE/munge/munged.seed"
for _ in $(seq 100); do [ -S "$BASE/munge/munge.socket.2" ] && break; sleep 0.1; done

cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # the machine's cores, not one test process's thread limit
sed -e "s|@HOST@|$(hostname -s)|g" -e "s|@CPUS@|$cpus|g" -e "s|@BASE@|$BASE|g" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
    "$HERE/slurm.conf.in" > "$BASE/slurm.conf"
export SLURM_CONF="$BASE/slurm.conf"
slurmctld -c -f "$SLURM_CONF"   # -c: start from a clean state every time
slurmd -f "$SLURM_CONF"

for _ in $(seq 120); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  echo "up.sh: node did not become idle (state: '${state:-none}'); see $BASE/log" >&2
  exit 1
fi
echo "up.sh: SLURM up in $(( $(date +%s) - started )) s, $cpus CPUs, partition debug" >&2
echo "export SLURM_CONF=$SLURM_CONF"
