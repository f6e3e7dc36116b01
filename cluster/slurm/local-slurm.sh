#!/usr/bin/env bash
# A single-node SLURM on this machine (munge, slurmctld, slurmd as plain background daemons),
# for running the SLURM recipes for real: CI and a laptop, not production.
#
#   cluster/slurm/local-slurm.sh start     # install (root, Debian) if missing, start, wait until idle
#   cluster/slurm/local-slurm.sh status    # exit 0 when the node answers, 1 otherwise
#   cluster/slurm/local-slurm.sh env       # prints `export SLURM_CONF=...` for other shells
#   cluster/slurm/local-slurm.sh stop      # stop every daemon it started; nothing left behind
#
# No systemd, no cgroups (proctrack/linuxproc, task/none), no accounting. The node's CPUs and
# memory come from `slurmd -C` (memory a little under). Config, state, logs and the munge
# socket live in S2DASK_SLURM_DIR (default /tmp/s2dask-slurm); when /etc/slurm/slurm.conf
# does not exist and we are root it is linked to that config, so plain `sbatch`, `srun` and
# dask-jobqueue find it (otherwise `eval "$(local-slurm.sh env)"`). start and stop are
# idempotent.
#
# Variables: S2DASK_SLURM_DIR, S2DASK_SLURM_PARTITION (the CPU partition, default "cpu", the
# default partition), S2DASK_SLURM_GPUS (GPUs of the node, default 0: none) with
# S2DASK_SLURM_GPU_PARTITION (default "gpu") and S2DASK_SLURM_GPU_FILES (default
# /dev/nvidia[0-N-1]): a GPU partition with Gres=gpu:N, S2DASK_SLURM_PORT (slurmctld, default
# 6817; slurmd uses the next one), S2DASK_SLURM_TIMEOUT (seconds start waits, default 60).
set -euo pipefail

DIR=${S2DASK_SLURM_DIR:-/tmp/s2dask-slurm}
PARTITION=${S2DASK_SLURM_PARTITION:-cpu}
GPUS=${S2DASK_SLURM_GPUS:-0}
GPU_PARTITION=${S2DASK_SLURM_GPU_PARTITION:-gpu}
PORT=${S2DASK_SLURM_PORT:-6817}
TIMEOUT=${S2DASK_SLURM_TIMEOUT:-60}
CONF=$DIR/etc/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
export SLURM_CONF=$CONF
PATH=$PATH:/usr/sbin:/sbin

die() { echo "local-slurm.sh: $*" >&2; exit 1; }

pid_of() { [ -s "$DIR/run/$1.pid" ] && cat "$DIR/run/$1.pid" 2>/dev/null || true; }
running() { local p; p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null && return
    [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and we are not root: apt-get install slurm-wlm munge"
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get: install SLURM and munge"
    echo "local-slurm.sh: installing slurm-wlm and munge" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } \
        || die "apt-get install slurm-wlm munge failed"
}

write_config() {
    local node hw cpus mem
    mkdir -p "$DIR"/{etc,run,log,munge,state/ctld,state/d}
    chmod 700 "$DIR/munge"
    node=$(hostname -s)
    hw=$(slurmd -C | head -1)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(( mem * 95 / 100 ))  # a little under: slurmd drains a node that reports less than this
    local gres="" gres_types=""
    if [ "$GPUS" -gt 0 ]; then
        gres=" Gres=gpu:$GPUS"; gres_types="GresTypes=gpu"
        echo "NodeName=$node Name=gpu File=${S2DASK_SLURM_GPU_FILES:-/dev/nvidia[0-$((GPUS - 1))]}" \
            > "$DIR/etc/gres.conf"
    fi
    cat > "$CONF" <<EOF
# written by cluster/slurm/local-slurm.sh
ClusterName=s2dask
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=60
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
$gres_types
NodeName=$node CPUs=$cpus RealMemory=$mem$gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    if [ "$GPUS" -gt 0 ]; then
        echo "PartitionName=$GPU_PARTITION Nodes=$node MaxTime=INFINITE State=UP" >> "$CONF"
    fi
    echo "$node" > "$DIR/etc/node"
}

node_state() { sinfo -h -N -o %t 2>/dev/null | head -1; }

start() {
    [ "$(id -u)" = 0 ] || die "start needs root (slurmd starts every job as its user): sudo $0 start"
    install_packages
    if running slurmctld && running slurmd && running munged && [ "$(node_state)" = idle ]; then
        echo "local-slurm.sh: already running (SLURM_CONF=$CONF)" >&2; return 0
    fi
    stop quiet
    write_config
    # our own munged, socket and key in DIR (the machine's munge, if any, is left alone)
    [ -s "$DIR/munge/munge.key" ] || { if [ -r /etc/munge/munge.key ]; then cp /etc/munge/munge.key "$DIR/munge/munge.key";
                                       else dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 2>/dev/null; fi; }
    chmod 400 "$DIR/munge/munge.key"
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed" \
        || die "munged did not start: see $DIR/log/munged.log"
    if [ "$(id -u)" = 0 ] && [ ! -e "$ETC_CONF" ]; then
        mkdir -p /etc/slurm && ln -s "$CONF" "$ETC_CONF" && touch "$DIR/etc/linked"
    fi
    slurmctld -f "$CONF" || die "slurmctld did not start: see $DIR/log/slurmctld.log"
    slurmd -f "$CONF" || die "slurmd did not start: see $DIR/log/slurmd.log"
    local state=""
    for _ in $(seq $((TIMEOUT * 2))); do
        state=$(node_state)
        [ "$state" = idle ] && break
        sleep 0.5
    done
    if [ "$state" != idle ]; then
        stop quiet
        die "the node is not idle after ${TIMEOUT} s (state: ${state:-no answer}): see $DIR/log/slurmctld.log and slurmd.log"
    fi
    echo "local-slurm.sh: node $(cat "$DIR/etc/node") idle in partition $PARTITION (SLURM_CONF=$CONF)" >&2
}

stop() {
    local name pid
    for name in slurmd slurmctld munged; do
        pid=$(pid_of "$name")
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$DIR/run/$name.pid"
    done
    # job steps slurmd started (slurmstepd) outlive it: end those of our spool directory
    for pid in $(pgrep -x slurmstepd 2>/dev/null || true); do
        if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "SLURM_CONF=$CONF"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [ -e "$DIR/etc/linked" ] && [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$CONF" ]; then
        rm -f "$ETC_CONF" "$DIR/etc/linked"
    fi
    [ "${1:-}" = quiet ] || echo "local-slurm.sh: stopped" >&2
}

status() {
    local state
    state=$(node_state)
    if running slurmctld && running slurmd && [ -n "$state" ]; then
        echo "local-slurm.sh: node $(cat "$DIR/etc/node" 2>/dev/null) $state (SLURM_CONF=$CONF)"; return 0
    fi
    echo "local-slurm.sh: not running" >&2; return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: local-slurm.sh start|stop|status|env" >&2; exit 1 ;;
esac
