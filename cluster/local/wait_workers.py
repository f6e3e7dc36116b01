"""Wait until a scheduler has N workers; print its address. Used by ``start.sh``.

    python wait_workers.py SCHEDULER_FILE N TIMEOUT [--pid PID ...] [--tls-ca-file F --tls-cert F --tls-key F]

Exit 0 when N workers are connected, 1 with one line on stderr when the time is up or a
watched process (``--pid``) died first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead, whatever kill(0) says
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("scheduler_file")
    p.add_argument("n", type=int)
    p.add_argument("timeout", type=float)
    p.add_argument("--pid", type=int, action="append", default=[])
    p.add_argument("--tls-ca-file")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    args = p.parse_args(argv)

    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)
    from distributed import Client
    from distributed.security import Security

    security = None
    if args.tls_ca_file:
        security = Security(tls_ca_file=args.tls_ca_file, tls_client_cert=args.tls_cert,
                            tls_client_key=args.tls_key, require_encryption=True)
    deadline = time.monotonic() + args.timeout
    have = 0
    client = None
    try:
        while time.monotonic() < deadline:
            dead = [pid for pid in args.pid if not _alive(pid)]
            if dead:
                print(f"process {dead[0]} exited before {args.n} workers connected ({have} did)",
                      file=sys.stderr)
                return 1
            try:
                if client is None:
                    left = max(1.0, deadline - time.monotonic())
                    client = Client(scheduler_file=args.scheduler_file, security=security,
                                    timeout=min(10.0, left))
                have = len(client.scheduler_info(n_workers=-1)["workers"])
                if have >= args.n:
                    print(client.scheduler.address)
                    return 0
            except Exception:  # not up yet; retry until the deadline
                pass
            time.sleep(0.25)
        print(f"only {have} of {args.n} workers connected within {args.timeout:g} s", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
