"""Shared test helpers: run the real ``cluster/local`` recipe, make tiny model bundles.

Other test modules import :func:`local_recipe` to run jobs through a real scheduler and
real worker processes::

    from _cluster import local_recipe

    def test_something(tmp_path):
        with local_recipe(tmp_path, n_workers=2, tls=True) as info:
            client, _ = connect(scheduler_file=info.scheduler_file, security=info.security())

The processes are always stopped on exit, also when the test fails or start-up fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
START = CLUSTER / "local" / "start.sh"
STOP = CLUSTER / "local" / "stop.sh"
MAKE_CERTS = CLUSTER / "tls" / "make-certs.sh"
BIN = Path(sys.executable).parent

TEN_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]

#: the environment variables Dask reads for TLS (see cluster/recipe.env)
TLS_CLIENT_ENV = (
    "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION",
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
)


def recipe_constants() -> dict[str, str]:
    """The shared settings in ``cluster/recipe.env`` as a dict."""
    out = {}
    for line in (CLUSTER / "recipe.env").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = " ".join(shlex.split(value)) if value else ""
    return out


def recipe_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for recipe scripts: this venv's ``dask``/``python`` first on PATH.

    Any ``DASK_DISTRIBUTED__COMM__*`` from the calling process is dropped, so a test's
    client settings never leak into the cluster it starts.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_DISTRIBUTED__COMM__")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHON"] = sys.executable
    env["DASK"] = str(BIN / "dask")
    env.update(extra or {})
    return env


@dataclass
class RecipeInfo:
    """A running ``cluster/local`` recipe."""

    run_dir: Path
    scheduler_file: Path
    address: str
    n_workers: int
    tls: bool
    ca_file: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    pids: dict[str, int] = field(default_factory=dict)
    stdout: str = ""

    def security(self):
        """``distributed.Security`` for a client of this cluster (``None`` without TLS)."""
        if not self.tls:
            return None
        from s2dask.job.cluster import make_security

        return make_security(ca_file=str(self.ca_file), cert=str(self.cert), key=str(self.key))

    def client_env(self) -> dict[str, str]:
        """Dask's TLS environment variables for a client process (empty without TLS)."""
        if not self.tls:
            return {}
        return dict(zip(TLS_CLIENT_ENV, ("True", str(self.ca_file), str(self.cert), str(self.key))))

    def tls_args(self) -> list[str]:
        """``--tls-ca-file F --tls-cert F --tls-key F`` for ``s2dask classify`` (empty without TLS)."""
        if not self.tls:
            return []
        return ["--tls-ca-file", str(self.ca_file), "--tls-cert", str(self.cert), "--tls-key", str(self.key)]

    def connect(self, **kwargs):
        """``s2dask.job.cluster.connect`` to this cluster through its scheduler file."""
        from s2dask.job.cluster import connect

        return connect(scheduler_file=str(self.scheduler_file), security=self.security(), **kwargs)


def run_or_dump(cmd: list[str], env: dict[str, str], *, timeout: float,
                run_dir: Path | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run`` that, on a hang, fails with every thread's stack of the process
    and of the processes it started.

    The process runs with ``PYTHONFAULTHANDLER=1`` in a session of its own; past
    ``timeout`` its whole process group (its embedded cluster's fork server and workers
    too, which share its stderr) gets SIGABRT, so Python's fault handler writes each
    thread's traceback to stderr, and the failure shows them, whether the process itself
    had exited (a descendant holding its output open) and the tails of ``run_dir``'s
    cluster logs, instead of a bare timeout.
    """
    proc = subprocess.Popen(cmd, env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = proc.poll()
        state = "still running" if code is None else f"had exited with {code}; the rest held its output"
        group = _group(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        logs = ""
        for log in sorted((run_dir / "logs").glob("*.log")) if run_dir else []:
            logs += f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise AssertionError(f"{shlex.join(cmd)} hung for {timeout:g} s ({state}); its process group: "
                             f"{group}; their threads:\n{err[-20000:]}\nstdout: {out[-2000:]}{logs}") from None
    finally:  # nothing of the group outlives the call
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def wait_while_running(proc: subprocess.Popen, ready: Callable[[], bool], what: str, *,
                       timeout: float = 120, every: float = 0.05) -> None:
    """Poll ``ready()`` every ``every`` s until it holds while ``proc`` runs; fail the test,
    with ``proc``'s stderr, if it ends first, or (killing it) if ``timeout`` s pass
    (``what``: the awaited state, for the message)."""
    import pytest

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{shlex.join(map(str, proc.args))} ended (exit {proc.returncode}) before "
                        f"{what}: {proc.communicate()[1][-3000:]}")
        if ready():
            return
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {timeout:g} s")
        time.sleep(every)


def _group(pgid: int) -> list[str]:
    """``pid command`` of the live processes in process group ``pgid``."""
    found = []
    for pid in group_members(pgid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append(f"{pid} {cmdline[:160].strip()}")
    return found


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _kill_leftovers(pids: dict[str, int]) -> None:
    """Last resort after stop.sh: SIGKILL what is left of the groups we started."""
    for pid in pids.values():
        for member in group_members(pid) or ([pid] if pid_alive(pid) else []):
            with contextlib.suppress(OSError):
                os.kill(member, signal.SIGKILL)


def stop_recipe(run_dir: Path, *, timeout: float = 10) -> subprocess.CompletedProcess:
    """Run ``cluster/local/stop.sh`` for ``run_dir``."""
    return subprocess.run([str(STOP), "--run-dir", str(run_dir), "--timeout", str(int(timeout))],
                          env=recipe_env(), capture_output=True, text=True, timeout=timeout * 3 + 30)


def _read_pids(run_dir: Path) -> dict[str, int]:
    pids = {}
    for name in ("scheduler", "workers"):
        f = run_dir / f"{name}.pid"
        with contextlib.suppress(OSError, ValueError):
            pids[name] = int(f.read_text().strip())
    return pids


@contextlib.contextmanager
def local_recipe(tmp_path: Path, n_workers: int = 2, tls: bool = False, *, threads: int = 1,
                 timeout: int = 60, env: dict[str, str] | None = None,
                 memory_limit: str = "auto") -> Iterator[RecipeInfo]:
    """Start ``cluster/local/start.sh`` in ``tmp_path/cluster``; stop it on exit, always.

    Parameters
    ----------
    tmp_path
        A per-test directory; the run directory is ``tmp_path / "cluster"``.
    n_workers, threads
        Worker processes and threads each.
    tls
        Start the scheduler and workers with TLS (certificates made in ``run_dir/tls``).
    timeout
        Seconds start.sh waits for the workers.
    env
        Extra environment for the scheduler and workers (for instance ``AWS_*``).

    Yields
    ------
    RecipeInfo
        Scheduler file, address, certificate paths and the pids of what was started.

    Raises
    ------
    RuntimeError
        If start.sh fails (its one-line message and the log tails are included).
    """
    run_dir = Path(tmp_path) / "cluster"
    args = [str(START), "--run-dir", str(run_dir), "--workers", str(n_workers), "--threads", str(threads),
            "--timeout", str(int(timeout)), "--no-dashboard", "--memory-limit", str(memory_limit),
            "--tls" if tls else "--no-tls"]
    pids: dict[str, int] = {}
    try:
        proc = subprocess.run(args, env=recipe_env(env), capture_output=True, text=True,
                              timeout=timeout + 60)
        pids = _read_pids(run_dir)
        if proc.returncode != 0:
            logs = ""
            for log in sorted((run_dir / "logs").glob("*.log")):
                tail = log.read_text(errors="replace").splitlines()[-15:]
                logs += f"\n--- {log.name}\n" + "\n".join(tail)
            raise RuntimeError(f"cluster/local/start.sh failed ({proc.returncode}): {proc.stderr.strip()}{logs}")
        scheduler_file = run_dir / "scheduler.json"
        address = json.loads(scheduler_file.read_text())["address"]
        tls_dir = run_dir / "tls"
        info = RecipeInfo(run_dir=run_dir, scheduler_file=scheduler_file, address=address,
                          n_workers=n_workers, tls=tls, pids=dict(pids), stdout=proc.stdout,
                          ca_file=tls_dir / "ca.pem" if tls else None,
                          cert=tls_dir / "cert.pem" if tls else None,
                          key=tls_dir / "key.pem" if tls else None)
        yield info
    finally:
        pids = pids or _read_pids(run_dir)
        try:
            stop_recipe(run_dir)
        finally:
            _kill_leftovers(pids)


def wait_dead(pids, timeout: float = 15) -> list[int]:
    """Wait until all ``pids`` are dead; return those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if pid_alive(p)]
    return left


def make_tiny_model(directory: Path, *, classes: int = 3) -> Path:
    """A deterministic 10-band, ``classes``-class model bundle in ``directory``."""
    import numpy as np

    from s2dask.model.bundle import build_model, save_bundle

    model = build_model(10, classes, mean=np.full(10, 1000.0), variance=np.full(10, 250_000.0))
    names = ["water", "forest", "field", "urban", "bare"][:classes]
    Path(directory).mkdir(parents=True, exist_ok=True)
    save_bundle(model, directory, bands=TEN_BANDS,
                classes=[{"value": i, "name": n} for i, n in enumerate(names)])
    return Path(directory)


def make_tiny_scene(path: Path, *, width: int = 64, height: int = 48, bands: int = 10) -> Path:
    """A small 10-band uint16 GeoTIFF (UTM 33N, 10 m) with band descriptions B02..B12."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    data = rng.integers(0, 3000, size=(bands, height, width), dtype="uint16")
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype="uint16",
                   crs="EPSG:32633", transform=from_origin(500000, 4000000, 10, 10), nodata=0,
                   tiled=True, blockxsize=32, blockysize=32)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(TEN_BANDS[:bands], start=1):
            dst.set_band_description(i, name)
    return Path(path)
