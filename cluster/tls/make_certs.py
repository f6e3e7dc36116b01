"""Make a private CA and a certificate/key for a Dask cluster's TLS (scheduler, workers, client).

Needs only the ``cryptography`` package (no ``openssl`` binary)::

    python cluster/tls/make_certs.py DIR [--san HOST_OR_IP ...] [--days N] [--name NAME]

writes into ``DIR``:

``ca.pem``      the CA certificate: every scheduler, worker and client trusts it (``--tls-ca-file``)
``ca-key.pem``  the CA's private key (0600): keep it off the cluster, it issues more certificates
``cert.pem``    a certificate signed by the CA, usable as server and client (``--tls-cert``)
``key.pem``     its private key (0600) (``--tls-key``)

The certificate's subject alternative names always include ``localhost`` and
``127.0.0.1``; add the scheduler's host names or addresses with ``--san``. With
``--name NAME`` an existing CA in ``DIR`` issues ``NAME-cert.pem``/``NAME-key.pem``
instead (for instance a separate client certificate). Exit code 2 with one line on error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

CA_CERT, CA_KEY, CERT, KEY = "ca.pem", "ca-key.pem", "cert.pem", "key.pem"


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _sans(names: list[str]):
    from cryptography import x509

    out, seen = [], set()
    for name in ["localhost", "127.0.0.1", *names]:
        if name in seen:
            continue
        seen.add(name)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def make_ca(directory: Path, *, days: int = 365, common_name: str = "s2dask cluster CA"):
    """Create ``ca.pem`` and ``ca-key.pem`` in ``directory``; return ``(cert, key)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_cert(directory / CA_CERT, cert)
    _write_key(directory / CA_KEY, key)
    return cert, key


def load_ca(directory: Path):
    """Read ``(cert, key)`` of the CA in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    return cert, key


def issue(directory: Path, ca_cert, ca_key, *, name: str | None = None, sans: list[str] = (),
          days: int = 365) -> tuple[Path, Path]:
    """Issue a server+client certificate signed by the CA; return ``(cert_path, key_path)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name or "s2dask-dask")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_sans(list(sans))), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path = directory / (f"{name}-{CERT}" if name else CERT)
    key_path = directory / (f"{name}-{KEY}" if name else KEY)
    _write_cert(cert_path, cert)
    _write_key(key_path, key)
    return cert_path, key_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where to write ca.pem, ca-key.pem, cert.pem, key.pem")
    parser.add_argument("--san", action="append", default=[],
                        help="extra host name or IP address of the scheduler/workers (repeatable)")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    parser.add_argument("--name", help="issue NAME-cert.pem/NAME-key.pem from the existing CA in DIRECTORY")
    parser.add_argument("--force", action="store_true", help="replace an existing CA")
    args = parser.parse_args(argv)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        print("make_certs: needs the cryptography package: pip install cryptography", file=sys.stderr)
        return 2
    directory = Path(args.directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        have_ca = (directory / CA_CERT).is_file() and (directory / CA_KEY).is_file()
        if args.name:
            if not have_ca:
                print(f"make_certs: no CA in {directory} ({CA_CERT}, {CA_KEY}): run without --name first",
                      file=sys.stderr)
                return 2
            ca_cert, ca_key = load_ca(directory)
        elif have_ca and not args.force:
            ca_cert, ca_key = load_ca(directory)
        else:
            ca_cert, ca_key = make_ca(directory, days=args.days)
        cert, key = issue(directory, ca_cert, ca_key, name=args.name, sans=args.san, days=args.days)
    except (OSError, ValueError) as exc:
        print(f"make_certs: cannot write certificates to {directory}: {exc}", file=sys.stderr)
        return 2
    print(f"CA {directory / CA_CERT}; certificate {cert}; key {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
