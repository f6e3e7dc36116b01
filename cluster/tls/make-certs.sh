#!/usr/bin/env bash
# Make a private CA and a certificate/key for the Dask cluster's TLS.
#   cluster/tls/make-certs.sh DIR [--san HOST_OR_IP ...] [--days N] [--name NAME]
# Writes DIR/ca.pem, DIR/ca-key.pem, DIR/cert.pem, DIR/key.pem (keys 0600). Uses the Python
# `cryptography` package (no openssl binary needed). Set PYTHON to choose the interpreter.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/make_certs.py" "$@"
