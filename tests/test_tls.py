"""A secured cluster: the local recipe with TLS, clients with and without certificates."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("cryptography")
pytest.importorskip("distributed")

from _cluster import BIN, MAKE_CERTS, local_recipe, pid_alive, recipe_env, run_or_dump  # noqa: E402

from s2dask.errors import ClusterError  # noqa: E402
from s2dask.job.cluster import connect, make_security  # noqa: E402


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    with local_recipe(tmp_path_factory.mktemp("tls"), n_workers=2, tls=True) as info:
        yield info


def _n_workers(client) -> int:
    return len(client.scheduler_info(n_workers=-1)["workers"])


# ------------------------------------------------------------------------------ certificates


def test_make_certs(tmp_path):
    from cryptography import x509

    out = subprocess.run([str(MAKE_CERTS), str(tmp_path), "--san", "scheduler.example", "--san", "10.0.0.5"],
                         env=recipe_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in ("ca.pem", "ca-key.pem", "cert.pem", "key.pem"):
        assert (tmp_path / name).is_file()
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    ips = {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    assert {"localhost", "scheduler.example"} <= names and {"127.0.0.1", "10.0.0.5"} <= ips
    # a second certificate from the same CA
    again = subprocess.run([str(MAKE_CERTS), str(tmp_path), "--name", "client"], env=recipe_env(),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    x509.load_pem_x509_certificate((tmp_path / "client-cert.pem").read_bytes()).verify_directly_issued_by(ca)
    missing = subprocess.run([str(MAKE_CERTS), str(tmp_path / "empty"), "--name", "client"], env=recipe_env(),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no CA in" in missing.stderr


def test_make_security_needs_all_three_files(tmp_path):
    with pytest.raises(ClusterError, match="missing --tls-key"):
        make_security(ca_file="ca.pem", cert="cert.pem")
    with pytest.raises(ClusterError, match="does not exist"):
        make_security(ca_file=str(tmp_path / "ca.pem"), cert=str(tmp_path / "c"), key=str(tmp_path / "k"))


# ------------------------------------------------------------------------------ clients


def test_client_with_certificate_flags(tls_cluster):
    assert tls_cluster.address.startswith("tls://127.0.0.1:")
    security = make_security(ca_file=str(tls_cluster.ca_file), cert=str(tls_cluster.cert),
                             key=str(tls_cluster.key))
    client, _ = connect(tls_cluster.address, security=security, timeout=10)
    try:
        assert _n_workers(client) == 2
        assert all(a.startswith("tls://") for a in client.scheduler_info(n_workers=-1)["workers"])
        assert client.submit(sum, [1, 2, 3]).result() == 6
    finally:
        client.close()


_CLIENT_SCRIPT = textwrap.dedent("""
    import json, sys
    from s2dask.job.cluster import connect
    client, _ = connect(scheduler_file=sys.argv[1], timeout=10)
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        print(json.dumps({"workers": len(workers), "sum": client.submit(sum, [1, 2, 3]).result(),
                          "tls": all(a.startswith("tls://") for a in workers)}))
    finally:
        client.close()
""")


def _run_client(scheduler_file, env) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CLIENT_SCRIPT, str(scheduler_file)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_client_with_dask_env_vars(tls_cluster):
    """No flags at all: Dask's DASK_DISTRIBUTED__COMM__TLS__* variables are enough."""
    env = recipe_env(tls_cluster.client_env())
    assert _run_client(tls_cluster.scheduler_file, env) == {"workers": 2, "sum": 6, "tls": True}


def test_client_with_dask_yaml_config(tls_cluster, tmp_path):
    """The same settings in a Dask YAML config file (DASK_CONFIG) work too."""
    config = {"distributed": {"comm": {"require-encryption": True, "tls": {
        "ca-file": str(tls_cluster.ca_file),
        "client": {"cert": str(tls_cluster.cert), "key": str(tls_cluster.key)}}}}}
    (tmp_path / "tls.yaml").write_text(json.dumps(config))  # JSON is YAML
    env = recipe_env({"DASK_CONFIG": str(tmp_path)})
    assert _run_client(tls_cluster.scheduler_file, env) == {"workers": 2, "sum": 6, "tls": True}


def test_client_sourcing_client_env(tls_cluster):
    """``source RUN_DIR/client.env`` gives a client everything it needs."""
    text = (tls_cluster.run_dir / "client.env").read_text()
    for key, value in tls_cluster.client_env().items():
        assert f"export {key}={value}" in text
    assert f"export S2DASK_SCHEDULER_FILE={tls_cluster.scheduler_file}" in text


@pytest.mark.parametrize("how", ["tls-address", "tcp-address"])
def test_client_without_certificates_is_refused(tls_cluster, how):
    address = tls_cluster.address if how == "tls-address" else tls_cluster.address.replace("tls://", "tcp://")
    start = time.monotonic()
    with pytest.raises(ClusterError) as err:
        connect(address, timeout=5)
    elapsed = time.monotonic() - start
    msg = str(err.value)
    assert elapsed < 15, elapsed
    assert "\n" not in msg and msg.startswith(f"cannot connect to {address}")
    if how == "tls-address":
        assert "--tls-ca-file" in msg


def test_client_with_a_foreign_ca_is_refused(tls_cluster, tmp_path):
    out = subprocess.run([str(MAKE_CERTS), str(tmp_path)], env=recipe_env(), capture_output=True, timeout=60)
    assert out.returncode == 0
    security = make_security(ca_file=str(tmp_path / "ca.pem"), cert=str(tmp_path / "cert.pem"),
                             key=str(tmp_path / "key.pem"))
    start = time.monotonic()
    with pytest.raises(ClusterError) as err:
        connect(tls_cluster.address, security=security, timeout=5)
    assert time.monotonic() - start < 15
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ workers


def test_worker_without_certificates_cannot_join(tls_cluster):
    """Rogue workers (no certificates; tls:// and plain tcp://) never register."""
    env = recipe_env({"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    tcp = tls_cluster.address.replace("tls://", "tcp://")
    rogues = [subprocess.Popen([str(BIN / "dask"), "worker", address, "--no-nanny", "--no-dashboard",
                                "--host", "127.0.0.1", "--nthreads", "1", "--death-timeout", "5",
                                "--name", f"rogue-{i}"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
              for i, address in enumerate((tls_cluster.address, tcp))]
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and any(r.poll() is None for r in rogues):
            time.sleep(0.25)
        client, _ = tls_cluster.connect(timeout=10)
        try:
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
            assert len(workers) == 2
            assert not any(str(w.get("name", "")).startswith("rogue") for w in workers)
        finally:
            client.close()
        for rogue in rogues:  # each either gave up with an error or is still knocking
            assert rogue.poll() is None or rogue.returncode != 0
    finally:
        for rogue in rogues:
            if rogue.poll() is None:
                rogue.kill()
            rogue.wait(timeout=10)
            rogue.stderr.close()
    assert not any(pid_alive(r.pid) for r in rogues)


# ------------------------------------------------------------------------------ s2dask classify


def _cli(args, env, timeout=240, run_dir=None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    # a hang fails with the CLI's thread stacks (one run in a full suite once hung 240 s)
    proc = run_or_dump([sys.executable, "-m", "s2dask.cli", "classify", *map(str, args)], env,
                       timeout=timeout, run_dir=run_dir)
    return proc, time.monotonic() - start


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    from _cluster import make_tiny_model, make_tiny_scene

    base = tmp_path_factory.mktemp("job")
    return make_tiny_scene(base / "scene.tif"), make_tiny_model(base / "model")


def test_classify_cli_on_tls_cluster(tls_cluster, job_inputs, tmp_path):
    """Flags route: --scheduler-file plus --tls-*; outputs checked against the model itself."""
    import numpy as np
    import rasterio

    from s2dask.model.bundle import load_model

    scene, model = job_inputs
    proc, _ = _cli([scene, "--model", model, "--out", tmp_path / "out", "--chunks", 32, "-q",
                    "--scheduler-file", tls_cluster.scheduler_file, *tls_cluster.tls_args()], recipe_env(),
                   run_dir=tls_cluster.run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out" / "scene"
    record = json.loads((out / "job.json").read_text())
    assert record["cluster"]["scheduler"] == tls_cluster.address and record["cluster"]["workers"] == 2
    with rasterio.open(scene) as src:
        data, crs, transform = src.read(), src.crs, src.transform
    with rasterio.open(out / "classes.tif") as dst:
        assert dst.crs == crs and dst.transform == transform and dst.dtypes[0] == "uint8"
        classes = dst.read(1)
    expected = load_model(model).predict(data.reshape(data.shape[0], -1).T).reshape(data.shape[1:])
    np.testing.assert_array_equal(classes, expected)


def test_classify_cli_with_dask_env_vars(tls_cluster, job_inputs, tmp_path):
    """Env-var route: no --tls-* flags; DASK_DISTRIBUTED__COMM__TLS__* and a tls:// address."""
    scene, model = job_inputs
    proc, _ = _cli([scene, "--model", model, "--out", tmp_path / "out", "--chunks", 32, "-q",
                    "--scheduler", tls_cluster.address], recipe_env(tls_cluster.client_env()),
                   run_dir=tls_cluster.run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "scene" / "classes.tif").is_file()


def test_classify_cli_without_certificates_is_refused(tls_cluster, job_inputs, tmp_path):
    scene, model = job_inputs
    proc, elapsed = _cli([scene, "--model", model, "--out", tmp_path / "out", "-q", "--timeout", 5,
                          "--scheduler", tls_cluster.address], recipe_env(), timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert tls_cluster.address in lines[0] and "--tls-ca-file" in lines[0]
    assert elapsed < 30, elapsed  # interpreter start and imports included; the refusal itself is instant
    assert not (tmp_path / "out" / "scene" / "classes.tif").exists()
