"""A storage fault injector: a threaded HTTP reverse proxy in front of an S3 server (moto).

It listens on 127.0.0.1 and forwards every request to ``upstream`` (for example moto's
``ThreadedMotoServer``), except those that a :class:`Fault` rule picks: those get a real S3
``503 SlowDown`` error (``kind="503"``) or a connection closed with a TCP reset before any
response (``kind="reset"``, what a load balancer dropping a connection looks like). Point
``AWS_ENDPOINT_URL`` at :attr:`FaultyProxy.url` and botocore, s3fs and GDAL's ``/vsis3/`` all
go through it::

    with FaultyProxy(moto_url, [Fault(methods={"GET"}, path=r"\\.tif$", first=2)]) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        ...
        assert proxy.failed == 2

Rules are checked in order; the first that matches a request decides. A rule fails the
``first`` N matching requests, or each matching request with probability ``fraction``
(a seeded random stream, so a run is repeatable). Counters: :attr:`requests`,
:attr:`failed`, and :attr:`log` (method, path, what was done) for assertions.

Used by ``tests/test_retry.py`` and ``benchmarks/chaos.py``; it is test code, not part of
the package.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import struct
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["Fault", "FaultyProxy", "SLOWDOWN_XML", "ACCESS_DENIED_XML"]

ACCESS_DENIED_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    "<Message>Access Denied</Message>"
    "<RequestId>{rid}</RequestId><HostId>s2dask-faulty-proxy</HostId></Error>"
)
SLOWDOWN_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    "<Message>Please reduce your request rate.</Message>"
    "<RequestId>{rid}</RequestId><HostId>s2dask-faulty-proxy</HostId></Error>"
)
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailers", "transfer-encoding", "upgrade"}


@dataclass
class Fault:
    """One rule: which requests to fail, how many, and how.

    Attributes
    ----------
    methods
        HTTP methods it applies to (``{"GET", "PUT"}``); empty means all.
    path
        A regular expression searched in the request path and query (``r"\\.tif"``).
    first
        Fail the first ``first`` matching requests (then pass them all).
    fraction
        Or fail each matching request with this probability (``first`` is then ignored).
    kind
        ``"503"`` (S3 SlowDown XML), ``"403"`` (S3 AccessDenied XML, a permanent error)
        or ``"reset"`` (close the connection with a TCP reset).
    seed
        Seed of the random stream used by ``fraction``.
    """

    methods: set[str] = field(default_factory=set)
    path: str = ""
    first: int = 0
    fraction: float = 0.0
    kind: str = "503"
    seed: int = 0
    matched: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("503", "403", "reset"):
            raise ValueError(f"unknown fault kind {self.kind!r}: use '503', '403' or 'reset'")
        self._re = re.compile(self.path)
        self._rng = random.Random(self.seed)

    def applies(self, method: str, path: str) -> bool:
        return (not self.methods or method in self.methods) and bool(self._re.search(path))

    def decide(self) -> bool:
        """Count one matching request; whether to fail it."""
        self.matched += 1
        fail = self._rng.random() < self.fraction if self.fraction else self.matched <= self.first
        self.failed += fail
        return fail


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        body = self._body()
        proxy = self.server.proxy
        action = proxy._decide(self.command, self.path)
        if action in ("503", "403"):
            xml, status, reason = ((SLOWDOWN_XML, 503, "Slow Down") if action == "503"
                                   else (ACCESS_DENIED_XML, 403, "Forbidden"))
            payload = xml.format(rid=uuid.uuid4().hex[:16]).encode()
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-amz-request-id", "s2dask-faulty-proxy")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        if action == "reset":
            # SO_LINGER 0: close() sends a RST, as a dropped connection mid-transfer
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        self._forward(body)

    def _forward(self, body: bytes) -> None:
        up = self.server.proxy._upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status, resp.reason)
            for key, value in resp.getheaders():
                if key.lower() not in _HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            length = resp.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: "FaultyProxy"


class FaultyProxy:
    """The proxy; a context manager that starts and stops its server thread.

    Parameters
    ----------
    upstream
        The S3 server to forward to (``http://127.0.0.1:PORT``).
    faults
        The rules, checked in order; may be replaced later with :meth:`set_faults`.
    """

    def __init__(self, upstream: str, faults: list[Fault] | None = None):
        self._upstream = urlsplit(upstream)
        self._lock = threading.Lock()
        self.faults = list(faults or [])
        self.requests = 0
        self.log: list[tuple[str, str, str]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="faulty-proxy")

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` to use as ``AWS_ENDPOINT_URL``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def failed(self) -> int:
        """Requests failed so far, by all rules."""
        return sum(f.failed for f in self.faults)

    def set_faults(self, faults: list[Fault]) -> None:
        """Replace the rules (counters of the old rules are dropped)."""
        with self._lock:
            self.faults = list(faults)

    def failures(self, method: str | None = None, path: str = "") -> int:
        """How many logged requests of ``method`` whose path matches ``path`` were failed."""
        return sum(1 for m, p, a in self.log if a != "pass" and (method is None or m == method)
                   and re.search(path, p))

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            self.requests += 1
            action = "pass"
            for fault in self.faults:
                if fault.applies(method, path):
                    if fault.decide():
                        action = fault.kind
                    break
            self.log.append((method, path, action))
            return action

    def start(self) -> "FaultyProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FaultyProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
