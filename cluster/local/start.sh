#!/usr/bin/env bash
# Start a Dask scheduler and N workers on this machine as real processes.
#
#   cluster/local/start.sh [--workers N] [--threads N] [--run-dir DIR] [--tls | --no-tls]
#                          [--certs DIR] [--host HOST] [--port PORT] [--memory-limit M]
#                          [--timeout S] [--dashboard | --no-dashboard]
#
# Every option can also come from the environment (a flag wins):
#   S2DASK_WORKERS (2)  S2DASK_THREADS (1)  S2DASK_RUN_DIR (./s2dask-cluster)  S2DASK_TLS (0|1)
#   S2DASK_CERTS (RUN_DIR/tls, made with cluster/tls/make-certs.sh when missing)
#   S2DASK_HOST (127.0.0.1)  S2DASK_PORT (0 = any free port)  S2DASK_MEMORY_LIMIT (auto)
#   S2DASK_START_TIMEOUT (60 s)  S2DASK_DASHBOARD (1)  S2DASK_DASHBOARD_ADDRESS (HOST:8787)
#   DASK (the dask command)  PYTHON (the interpreter next to it)
#
# Writes into RUN_DIR: scheduler.json (the scheduler file clients use), scheduler.pid,
# workers.pid, logs/scheduler.log, logs/workers.log, client.env (TLS settings to `source`
# for clients) and, with TLS, tls/{ca,cert,key}.pem. Waits until all N workers are
# connected; on failure prints one line, stops what it started and exits 1.
# Stop with: cluster/local/stop.sh --run-dir RUN_DIR
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../recipe.env
source "$here/../recipe.env"

workers="${S2DASK_WORKERS:-2}"
threads="${S2DASK_THREADS:-1}"
run_dir="${S2DASK_RUN_DIR:-./s2dask-cluster}"
tls="${S2DASK_TLS:-0}"
certs="${S2DASK_CERTS:-}"
host="${S2DASK_HOST:-127.0.0.1}"
port="${S2DASK_PORT:-0}"
memory="${S2DASK_MEMORY_LIMIT:-auto}"
timeout="${S2DASK_START_TIMEOUT:-60}"
dashboard="${S2DASK_DASHBOARD:-1}"

die() { echo "start.sh: $*" >&2; exit 1; }
need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --workers) need "$@"; workers="$2"; shift 2 ;;
        --threads) need "$@"; threads="$2"; shift 2 ;;
        --run-dir) need "$@"; run_dir="$2"; shift 2 ;;
        --certs) need "$@"; certs="$2"; shift 2 ;;
        --host) need "$@"; host="$2"; shift 2 ;;
        --port) need "$@"; port="$2"; shift 2 ;;
        --memory-limit) need "$@"; memory="$2"; shift 2 ;;
        --timeout) need "$@"; timeout="$2"; shift 2 ;;
        --tls) tls=1; shift ;;
        --no-tls) tls=0; shift ;;
        --dashboard) dashboard=1; shift ;;
        --no-dashboard) dashboard=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1: see --help" ;;
    esac
done

case "$workers" in ''|*[!0-9]*|0) die "--workers must be a positive integer, got '$workers'" ;; esac
case "$threads" in ''|*[!0-9]*|0) die "--threads must be a positive integer, got '$threads'" ;; esac
case "$timeout" in ''|*[!0-9]*|0) die "--timeout must be a positive number of seconds, got '$timeout'" ;; esac
case "$tls" in 1|yes|true|on) tls=1 ;; 0|no|false|off|'') tls=0 ;; *) die "S2DASK_TLS must be 0 or 1, got '$tls'" ;; esac

dask_cmd="${DASK:-dask}"
dask_bin="$(command -v "$dask_cmd" || true)"
[ -n "$dask_bin" ] || die "'$dask_cmd' not found: install s2dask (pip install s2dask) or set DASK=/path/to/dask"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$(dirname "$dask_bin")/python" ]; then PYTHON="$(dirname "$dask_bin")/python"; else PYTHON=python3; fi
fi

mkdir -p "$run_dir/logs" || die "cannot create run directory $run_dir"
run_dir="$(cd "$run_dir" && pwd)"

alive() {  # a pid that exists and is not a zombie
    kill -0 "$1" 2>/dev/null || return 1
    [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != "Z" ]
}
for f in scheduler.pid workers.pid; do
    if [ -s "$run_dir/$f" ] && alive "$(cat "$run_dir/$f")"; then
        die "a cluster is already running from $run_dir (pid $(cat "$run_dir/$f")): stop it with $here/stop.sh --run-dir $run_dir"
    fi
done
rm -f "$run_dir/scheduler.json" "$run_dir/scheduler.pid" "$run_dir/workers.pid" "$run_dir/client.env"

tls_args=()
scheme=tcp
if [ "$tls" = 1 ]; then
    scheme=tls
    certs="${certs:-$run_dir/tls}"
    ca="$certs/$S2DASK_TLS_CA_NAME"; cert="$certs/$S2DASK_TLS_CERT_NAME"; key="$certs/$S2DASK_TLS_KEY_NAME"
    if [ ! -f "$ca" ] || [ ! -f "$cert" ] || [ ! -f "$key" ]; then
        PYTHON="$PYTHON" "$here/../tls/make-certs.sh" "$certs" --san "$host" >/dev/null \
            || die "cannot make TLS certificates in $certs (cluster/tls/make-certs.sh)"
    fi
    ca="$(cd "$(dirname "$ca")" && pwd)/$(basename "$ca")"
    cert="$(cd "$(dirname "$cert")" && pwd)/$(basename "$cert")"
    key="$(cd "$(dirname "$key")" && pwd)/$(basename "$key")"
    tls_args=(--protocol tls --tls-ca-file "$ca" --tls-cert "$cert" --tls-key "$key")
    # refuse any unencrypted connection in both directions
    export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True
fi

# Each process gets its own session (process group), so stop.sh can end it with its children;
# `setsid` execs in the background child, so $! is the dask process itself.
launch=()
if command -v setsid >/dev/null; then launch=(setsid); fi

started=0
cleanup_on_failure() {
    if [ "$started" = 1 ]; then "$here/stop.sh" --run-dir "$run_dir" --quiet || true; fi
}
trap 'cleanup_on_failure' ERR

if [ "$dashboard" = 1 ] || [ "$dashboard" = true ]; then
    dash_args=(--dashboard-address "${S2DASK_DASHBOARD_ADDRESS:-$host:$S2DASK_DASHBOARD_PORT}")
else
    dash_args=(--no-dashboard)
fi

"${launch[@]}" "$dask_bin" scheduler --scheduler-file "$run_dir/scheduler.json" --host "$host" --port "$port" \
    "${dash_args[@]}" "${tls_args[@]}" >"$run_dir/logs/scheduler.log" 2>&1 </dev/null &
echo $! >"$run_dir/scheduler.pid"
started=1

deadline=$((SECONDS + timeout))
until [ -s "$run_dir/scheduler.json" ]; do
    if ! alive "$(cat "$run_dir/scheduler.pid")"; then
        cleanup_on_failure
        die "the scheduler exited at start: see $run_dir/logs/scheduler.log ($(tail -n 1 "$run_dir/logs/scheduler.log" 2>/dev/null))"
    fi
    if [ $SECONDS -ge $deadline ]; then
        cleanup_on_failure
        die "no scheduler file after ${timeout} s: see $run_dir/logs/scheduler.log"
    fi
    sleep 0.2
done

"${launch[@]}" "$dask_bin" worker --scheduler-file "$run_dir/scheduler.json" --nworkers "$workers" \
    --nthreads "$threads" --memory-limit "$memory" --host "$host" --no-dashboard \
    --local-directory "$run_dir/workers" --death-timeout "$timeout" \
    "${tls_args[@]}" >"$run_dir/logs/workers.log" 2>&1 </dev/null &
echo $! >"$run_dir/workers.pid"

wait_args=("$run_dir/scheduler.json" "$workers" "$((deadline - SECONDS > 5 ? deadline - SECONDS : 5))"
           --pid "$(cat "$run_dir/scheduler.pid")" --pid "$(cat "$run_dir/workers.pid")")
if [ "$tls" = 1 ]; then wait_args+=(--tls-ca-file "$ca" --tls-cert "$cert" --tls-key "$key"); fi
if ! address="$("$PYTHON" "$here/wait_workers.py" "${wait_args[@]}" 2>"$run_dir/logs/wait.log")"; then
    why="$(tail -n 1 "$run_dir/logs/wait.log" 2>/dev/null)"
    trap - ERR
    cleanup_on_failure
    die "${why:-workers did not connect}: see $run_dir/logs/workers.log; the cluster was stopped"
fi
trap - ERR

{
    echo "# source this file to point Dask clients (s2dask classify) at the cluster in $run_dir"
    echo "export S2DASK_SCHEDULER_FILE=$run_dir/scheduler.json"
    if [ "$tls" = 1 ]; then
        echo "export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True"
        echo "export DASK_DISTRIBUTED__COMM__TLS__CA_FILE=$ca"
        echo "export DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=$cert"
        echo "export DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=$key"
    fi
} >"$run_dir/client.env"

echo "scheduler $address with $workers workers x $threads threads ($scheme)"
echo "scheduler file $run_dir/scheduler.json; client settings $run_dir/client.env"
echo "stop with: $here/stop.sh --run-dir $run_dir"
