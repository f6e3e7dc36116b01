#!/usr/bin/env bash
# Container entrypoint: one image, several roles.
#
#   scheduler [dask scheduler options]        port 8786, dashboard 8787
#   worker ADDRESS [dask worker options]      CPU worker
#   cuda-worker ADDRESS [dask cuda worker options]   one worker per visible GPU (dask-cuda)
#   classify SCENE... [s2dask classify options]
#   anything else is run as a command (s2dask train ..., bash, ...)
#
# With certificates in $S2DASK_TLS_DIR (ca.pem, cert.pem, key.pem; default /etc/s2dask/tls)
# scheduler and workers get --protocol tls and --tls-*, every process refuses unencrypted
# connections, and clients get Dask's DASK_DISTRIBUTED__COMM__TLS__* variables (values
# already set in the environment win).
set -euo pipefail

tls_dir="${S2DASK_TLS_DIR:-/etc/s2dask/tls}"
ca="$tls_dir/ca.pem"; cert="$tls_dir/cert.pem"; key="$tls_dir/key.pem"
server_tls=()
if [ -f "$ca" ] && [ -f "$cert" ] && [ -f "$key" ]; then
    server_tls=(--tls-ca-file "$ca" --tls-cert "$cert" --tls-key "$key")
    export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION="${DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION:-True}"
    export DASK_DISTRIBUTED__COMM__TLS__CA_FILE="${DASK_DISTRIBUTED__COMM__TLS__CA_FILE:-$ca}"
    export DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT="${DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT:-$cert}"
    export DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY="${DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY:-$key}"
fi
export TF_FORCE_GPU_ALLOW_GROWTH="${TF_FORCE_GPU_ALLOW_GROWTH:-true}"

role="${1:---help}"
shift || true
case "$role" in
    scheduler)
        proto=(); [ ${#server_tls[@]} -gt 0 ] && proto=(--protocol tls)
        exec dask scheduler --port "${S2DASK_SCHEDULER_PORT:-8786}" \
            --dashboard-address ":${S2DASK_DASHBOARD_PORT:-8787}" "${proto[@]}" "${server_tls[@]}" "$@" ;;
    worker)
        exec dask worker "${server_tls[@]}" "$@" ;;
    cuda-worker)
        exec dask cuda worker "${server_tls[@]}" "$@" ;;
    classify)
        exec s2dask classify "$@" ;;
    -h|--help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
    *)
        exec "$role" "$@" ;;
esac
