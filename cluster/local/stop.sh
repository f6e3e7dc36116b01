#!/usr/bin/env bash
# Stop the scheduler and workers started by cluster/local/start.sh, by their pid files.
#
#   cluster/local/stop.sh [--run-dir DIR] [--timeout S] [--quiet]
#
# S2DASK_RUN_DIR (./s2dask-cluster) and S2DASK_STOP_TIMEOUT (10 s) work too. Workers
# (workers.pid, and gpu-workers.pid of cluster/gpu/start-workers.sh) stop
# first, then the scheduler: each gets SIGTERM, and after the timeout its whole process
# group (the nanny's worker processes included) gets SIGKILL. Exit 0 when nothing of the
# cluster is left running, 1 otherwise.
set -uo pipefail

run_dir="${S2DASK_RUN_DIR:-./s2dask-cluster}"
timeout="${S2DASK_STOP_TIMEOUT:-10}"
quiet=0
while [ $# -gt 0 ]; do
    case "$1" in
        --run-dir) run_dir="${2:?--run-dir needs a value}"; shift 2 ;;
        --timeout) timeout="${2:?--timeout needs a value}"; shift 2 ;;
        --quiet) quiet=1; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "stop.sh: unknown option $1: see --help" >&2; exit 1 ;;
    esac
done
say() { [ "$quiet" = 1 ] || echo "stop.sh: $*"; }

# pids of the live (non-zombie) members of process group $1, or of pid $1 alone when it
# leads no group of its own
members() {
    local lead="$1"
    ps -e -o pid=,pgid=,stat= 2>/dev/null | awk -v g="$lead" \
        '($2 == g || $1 == g) && substr($3, 1, 1) != "Z" { print $1 }'
}

stop_one() {
    local name="$1" file="$run_dir/$1.pid" pid
    [ -s "$file" ] || return 0
    pid="$(cat "$file")"
    case "$pid" in ''|*[!0-9]*) rm -f "$file"; return 0 ;; esac
    if [ -z "$(members "$pid")" ]; then rm -f "$file"; return 0; fi
    kill -TERM "$pid" 2>/dev/null
    local waited=0
    while [ -n "$(members "$pid")" ] && [ "$waited" -lt $((timeout * 5)) ]; do
        sleep 0.2; waited=$((waited + 1))
    done
    if [ -n "$(members "$pid")" ]; then
        say "$name (pid $pid) still running after ${timeout} s: sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null
        # shellcheck disable=SC2046
        kill -KILL $(members "$pid") 2>/dev/null
        sleep 0.5
    fi
    if [ -n "$(members "$pid")" ]; then
        echo "stop.sh: cannot stop $name: pids $(members "$pid" | tr '\n' ' ')still running" >&2
        return 1
    fi
    rm -f "$file"
    say "stopped $name (pid $pid)"
}

[ -d "$run_dir" ] || { say "no run directory $run_dir: nothing to stop"; exit 0; }
status=0
stop_one gpu-workers || status=1  # cluster/gpu/start-workers.sh
stop_one workers || status=1
stop_one scheduler || status=1
exit $status
