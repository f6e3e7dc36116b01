#!/usr/bin/env bash
# Start one Dask worker per GPU on this node with dask-cuda, joining a running scheduler.
#
#   cluster/gpu/start-workers.sh (--scheduler-file FILE | --scheduler ADDRESS) [--run-dir DIR]
#                                [--threads N] [--certs DIR] [--memory-limit M]
#
# dask-cuda starts one worker process per visible GPU and sets CUDA_VISIBLE_DEVICES for each,
# so worker i sees GPU i as its first device (restrict with CUDA_VISIBLE_DEVICES=0,1 before
# calling). TF_FORCE_GPU_ALLOW_GROWTH=true is exported: without it TensorFlow grabs all of a
# GPU's memory at start-up, and anything else on that GPU (another worker, a second model)
# starves. KERAS_BACKEND=jax or torch work too (JAX: XLA_PYTHON_CLIENT_PREALLOCATE=false).
# With --certs DIR (ca.pem, cert.pem, key.pem) the workers use TLS, as the scheduler must.
# The workers' pid (a process group) goes to RUN_DIR/gpu-workers.pid, logs to
# RUN_DIR/logs/gpu-workers.log; stop them with:
#   cluster/local/stop.sh --run-dir DIR    (workers first, then the scheduler if it started there)
# Needs: pip install 's2dask[gpu]' (dask-cuda, tensorflow[and-cuda]) and nvidia-smi working.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../recipe.env
source "$here/../recipe.env"

scheduler=""; scheduler_file=""; run_dir="${S2DASK_RUN_DIR:-./s2dask-cluster}"
threads="${S2DASK_THREADS:-1}"; certs="${S2DASK_CERTS:-}"; memory="${S2DASK_MEMORY_LIMIT:-auto}"
die() { echo "start-workers.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --scheduler) scheduler="${2:?--scheduler needs an address}"; shift 2 ;;
        --scheduler-file) scheduler_file="${2:?--scheduler-file needs a file}"; shift 2 ;;
        --run-dir) run_dir="${2:?--run-dir needs a value}"; shift 2 ;;
        --threads) threads="${2:?--threads needs a value}"; shift 2 ;;
        --certs) certs="${2:?--certs needs a directory}"; shift 2 ;;
        --memory-limit) memory="${2:?--memory-limit needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1: see --help" ;;
    esac
done
[ -n "$scheduler" ] || [ -n "$scheduler_file" ] || die "give --scheduler ADDRESS or --scheduler-file FILE"
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 \
    || die "no NVIDIA GPU visible (nvidia-smi -L fails): run this on a GPU node"
dask_bin="$(command -v "${DASK:-dask}")" || die "dask not found: pip install 's2dask[gpu]'"
"$dask_bin" cuda worker --help >/dev/null 2>&1 || die "'dask cuda worker' is missing: pip install 's2dask[gpu]' (dask-cuda)"

export TF_FORCE_GPU_ALLOW_GROWTH="${TF_FORCE_GPU_ALLOW_GROWTH:-true}"
where=(); if [ -n "$scheduler_file" ]; then where=(--scheduler-file "$scheduler_file"); else where=("$scheduler"); fi
tls=()
if [ -n "$certs" ]; then
    tls=(--tls-ca-file "$certs/$S2DASK_TLS_CA_NAME" --tls-cert "$certs/$S2DASK_TLS_CERT_NAME"
         --tls-key "$certs/$S2DASK_TLS_KEY_NAME")
    export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True
fi
mkdir -p "$run_dir/logs"
launch=(); command -v setsid >/dev/null && launch=(setsid)
"${launch[@]}" "$dask_bin" cuda worker "${where[@]}" --nthreads "$threads" --memory-limit "$memory" \
    --local-directory "$run_dir/gpu-workers" "${tls[@]}" >"$run_dir/logs/gpu-workers.log" 2>&1 </dev/null &
echo $! >"$run_dir/gpu-workers.pid"
echo "started $(nvidia-smi -L | wc -l) GPU worker(s), pid $(cat "$run_dir/gpu-workers.pid"); log $run_dir/logs/gpu-workers.log"
