"""The local recipe (cluster/local/start.sh, stop.sh) with real scheduler and worker processes."""

from __future__ import annotations

import os
import subprocess

import pytest
from _cluster import START, STOP, local_recipe, pid_alive, recipe_env, stop_recipe, wait_dead

pytest.importorskip("distributed")


def test_local_recipe_start_compute_stop(tmp_path):
    with local_recipe(tmp_path, n_workers=2) as info:
        assert info.scheduler_file.is_file()
        assert info.address.startswith("tcp://127.0.0.1:")
        assert (info.run_dir / "logs" / "scheduler.log").is_file()
        client, cluster = info.connect(timeout=10)
        try:
            assert cluster is None
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert len(workers) == 2
            assert all(w["nthreads"] == 1 for w in workers.values())
            # builtins only: the workers cannot import this test module
            assert client.gather(client.map(abs, range(-5, 5))) == [abs(i) for i in range(-5, 5)]
            assert client.submit(sum, range(101)).result() == 5050
            worker_pids = list(client.run(os.getpid).values())
            scheduler_pid = client.run_on_scheduler(os.getpid)
        finally:
            client.close()
        assert scheduler_pid == info.pids["scheduler"]
        all_pids = [*info.pids.values(), *worker_pids]
        assert all(pid_alive(p) for p in all_pids)
        # a second start on the same run directory is refused while this one runs
        again = subprocess.run([str(START), "--run-dir", str(info.run_dir), "--no-dashboard"],
                               env=recipe_env(), capture_output=True, text=True, timeout=60)
        assert again.returncode == 1
        assert "already running" in again.stderr and len(again.stderr.strip().splitlines()) == 1
        stopped = stop_recipe(info.run_dir)
        assert stopped.returncode == 0, stopped.stderr
    assert wait_dead(all_pids, timeout=5) == []
    assert not (info.run_dir / "scheduler.pid").exists()
    assert not (info.run_dir / "workers.pid").exists()


def test_start_fails_clearly_and_cleans_up(tmp_path):
    """A scheduler that cannot start (its port is taken): one line, exit 1, nothing left running."""
    import socket

    run_dir = tmp_path / "cluster"
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        proc = subprocess.run([str(START), "--run-dir", str(run_dir), "--workers", "1", "--timeout", "20",
                               "--port", str(port), "--no-dashboard"], env=recipe_env(),
                              capture_output=True, text=True, timeout=90)
    finally:
        taken.close()
    try:
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("start.sh: ")
        assert "workers.log" in lines[0] or "scheduler" in lines[0]
        assert not (run_dir / "scheduler.pid").exists() and not (run_dir / "workers.pid").exists()
    finally:
        stop_recipe(run_dir)


@pytest.mark.parametrize("args, expect", [
    (["--workers", "zero"], "--workers must be a positive integer"),
    (["--bogus"], "unknown option --bogus"),
])
def test_start_rejects_bad_options(tmp_path, args, expect):
    proc = subprocess.run([str(START), "--run-dir", str(tmp_path / "c"), *args], env=recipe_env(),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert expect in proc.stderr


def test_stop_without_cluster_is_harmless(tmp_path):
    proc = subprocess.run([str(STOP), "--run-dir", str(tmp_path / "nothing")], env=recipe_env(),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path):
    """stop.sh escalates to SIGKILL on the whole process group after its timeout."""
    run_dir = tmp_path / "cluster"
    run_dir.mkdir()
    proc = subprocess.Popen(["setsid", "sh", "-c", "trap '' TERM; sleep 60 & wait; sleep 60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        (run_dir / "workers.pid").write_text(f"{proc.pid}\n")
        out = subprocess.run([str(STOP), "--run-dir", str(run_dir), "--timeout", "1"], env=recipe_env(),
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "SIGKILL" in out.stdout
        proc.wait(timeout=5)
        assert not pid_alive(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------ GPU


def _cuda_gpus() -> int:
    import shutil

    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def test_gpu_local_cuda_cluster():
    """connect(gpu=True) starts one dask-cuda worker per GPU, each pinned to its own device."""
    pytest.importorskip("dask_cuda")
    n = _cuda_gpus()
    if n == 0:
        pytest.skip("no NVIDIA GPU visible (nvidia-smi -L)")
    from s2dask.job.cluster import connect

    client, cluster = connect(gpu=True, dashboard=False)
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == n
        first = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"].split(",")[0])
        assert len(set(first.values())) == n
        from dask.system import CPU_COUNT  # the cores are shared out among the GPU workers

        assert {w["nthreads"] for w in workers.values()} == {max(1, CPU_COUNT // n)}
        assert client.submit(sum, [1, 2]).result() == 3
    finally:
        client.close()
        cluster.close()


def test_embedded_cluster_on_a_gpu_machine_is_one_worker_with_a_thread_per_core(monkeypatch):
    """Not one process per core each starting the backend on the one GPU."""
    from dask.system import CPU_COUNT

    from s2dask.job.cluster import close_cluster, connect, start_fork_server

    # workers fork from the fork server with its environment: start it before the override,
    # so that the workers of later tests do not resolve their engine for a GPU
    start_fork_server()
    monkeypatch.setenv("S2DASK_DEVICE", "gpu")  # what detect_device says on a GPU machine
    client, cluster = connect(dashboard=False)
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert [w["nthreads"] for w in workers.values()] == [max(1, CPU_COUNT)]
    finally:
        close_cluster(client, cluster)
    monkeypatch.setenv("S2DASK_DEVICE", "cpu")
    client, cluster = connect(dashboard=False)
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert sorted(w["nthreads"] for w in workers.values()) == [1] * max(1, CPU_COUNT)
    finally:
        close_cluster(client, cluster)


def test_gpu_without_dask_cuda_says_how_to_install(monkeypatch):
    import sys

    from s2dask.errors import ClusterError
    from s2dask.job.cluster import connect

    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # import fails as if not installed
    with pytest.raises(ClusterError, match=r"pip install 's2dask\[gpu\]'"):
        connect(gpu=True)


def test_gpu_worker_script_fails_clearly_without_a_gpu(tmp_path):
    if _cuda_gpus():
        pytest.skip("this node has a GPU")
    from _cluster import CLUSTER

    proc = subprocess.run([str(CLUSTER / "gpu" / "start-workers.sh"), "--scheduler", "tcp://127.0.0.1:1",
                           "--run-dir", str(tmp_path)], env=recipe_env(), capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("start-workers.sh: no NVIDIA GPU visible")
    assert not (tmp_path / "gpu-workers.pid").exists()
