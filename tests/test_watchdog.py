"""s2dask.job.watch on real processes: a `dask scheduler` SIGKILLed mid-computation, and
addresses where something answers that is not a Dask scheduler."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from _cluster import local_recipe, wait_dead

from s2dask.errors import ClusterError, JobError, ParameterError
from s2dask.job.watch import SchedulerWatch, check_scheduler, completed


def test_scheduler_sigkill_mid_computation_stops_within_bound(tmp_path):
    with local_recipe(tmp_path, n_workers=1, threads=2) as info:
        client = info.connect(timeout=20)[0]
        try:
            check_scheduler(info.address, timeout=5)  # a real scheduler passes the check
            # time.sleep: importable by the scheduler process (a function of this module is not)
            futures = [client.submit(time.sleep, 0.1 if i == 0 else 60, pure=False) for i in range(4)]
            done, t_kill = [], None
            resume = "s2dask classify scene.tif --model m --out out --resume"
            with pytest.raises(JobError) as err:
                for fut, _ in completed(client, futures, timeout=5, resume=resume,
                                        kept="out/.scene.partial"):
                    done.append(futures.index(fut))
                    # the fast task is finished, three are running or queued: kill now
                    os.kill(info.pids["scheduler"], signal.SIGKILL)
                    t_kill = time.monotonic()
            elapsed = time.monotonic() - t_kill
            assert done == [0]
            assert wait_dead([info.pids["scheduler"]], timeout=5) == []
            assert 4 <= elapsed < 5 + 6, elapsed  # the bound: timeout plus one probe and a poll
            msg = str(err.value)
            assert "\n" not in msg
            assert msg.startswith(f"the Dask scheduler {info.address} is gone (no answer for ")
            assert "finished chunks are kept in out/.scene.partial" in msg and msg.endswith(resume)
        finally:
            t0 = time.monotonic()
            client.close(timeout=5)
            assert time.monotonic() - t0 < 15  # closing a client of a dead scheduler is bounded


def test_scheduler_frozen_with_a_result_unfetched_ends_in_one_line(tmp_path):
    # the results are fetched under the watch: a scheduler that stops answering (frozen, or
    # cut off without a TCP reset) while a finished chunk's counts are still to be fetched
    # gives the watch's line within the bound; a plain future.result() would wait forever
    from distributed import wait

    with local_recipe(tmp_path, n_workers=1, threads=1) as info:
        client = info.connect(timeout=20)[0]
        try:
            fut = client.submit(max, 2, 3, pure=False)
            wait([fut], timeout=30)
            os.kill(info.pids["scheduler"], signal.SIGSTOP)
            t_stop = time.monotonic()
            with pytest.raises(JobError) as err:
                list(completed(client, [fut], timeout=3, resume="s2dask classify ... --resume",
                               kept="out/.scene.partial"))
            elapsed = time.monotonic() - t_stop
            assert fut.status == "finished"  # finished, never fetched: the fetch was watched
            assert 3 <= elapsed < 3 + 6, elapsed
            msg = str(err.value)
            assert "\n" not in msg and getattr(err.value, "scheduler_lost", False)
            assert msg.startswith(f"the Dask scheduler {info.address} is gone (no answer for "), msg
            assert msg.endswith("finish the job with: s2dask classify ... --resume")
        finally:
            os.kill(info.pids["scheduler"], signal.SIGKILL)
            client.close(timeout=5)


def test_completed_yields_each_result_or_exception(cluster_client):
    futures = [cluster_client.submit(max, 2, 3, pure=False),
               cluster_client.submit(int, "not a number", pure=False)]
    got = {futures.index(fut): (fut.status, value) for fut, value in completed(cluster_client, futures)}
    assert got[0] == ("finished", 3)
    status, error = got[1]
    assert status == "error" and isinstance(error, ValueError) and "not a number" in str(error)


def test_watch_arguments():
    with pytest.raises(ParameterError, match="scheduler timeout must be a positive number"):
        SchedulerWatch(object(), timeout=0)


def _garbage_server() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"\x89 this is not dask \x00\xff" * 16)
                time.sleep(0.2)

    threading.Thread(target=serve, daemon=True).start()
    return sock, sock.getsockname()[1]


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args):
        pass


def test_garbage_server_is_not_a_scheduler():
    sock, port = _garbage_server()
    try:
        t0 = time.monotonic()
        with pytest.raises(ClusterError) as err:
            check_scheduler(f"tcp://127.0.0.1:{port}", timeout=3)
        assert time.monotonic() - t0 < 10
        msg = str(err.value)
        assert msg.startswith(f"tcp://127.0.0.1:{port} answers but is not a Dask scheduler")
        assert "8786" in msg and "\n" not in msg
    finally:
        sock.close()


def test_http_server_is_not_a_scheduler():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        t0 = time.monotonic()
        with pytest.raises(ClusterError) as err:
            check_scheduler(f"tcp://127.0.0.1:{port}", timeout=2)
        assert time.monotonic() - t0 < 10
        msg = str(err.value)
        assert msg.startswith(f"something listens at tcp://127.0.0.1:{port} but did not answer "
                              "Dask's handshake") and "not a Dask scheduler" in msg
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_listening_is_its_own_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ClusterError, match=rf"nothing listens at tcp://127.0.0.1:{port} "
                                           r"\(connection refused\)"):
        check_scheduler(f"tcp://127.0.0.1:{port}", timeout=2)
    with pytest.raises(ClusterError, match="is not a scheduler address"):
        check_scheduler("tcp://127.0.0.1:notaport", timeout=2)
