"""The deployment recipes agree: one image, one classify command, one set of TLS settings.

The shared values live once in ``cluster/recipe.env``; each recipe (local scripts, Docker,
SLURM, Kubernetes) is parsed and checked against them.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from _cluster import CLUSTER, TLS_CLIENT_ENV, recipe_constants

yaml = pytest.importorskip("yaml")

C = recipe_constants()
TLS_ENV = set(C["S2DASK_TLS_ENV"].split())
TLS_DIR = C["S2DASK_TLS_DIR"]
TLS_FILES = {f"{TLS_DIR}/{C[k]}" for k in ("S2DASK_TLS_CA_NAME", "S2DASK_TLS_CERT_NAME", "S2DASK_TLS_KEY_NAME")}
RECIPE_FILES = sorted(p for p in CLUSTER.rglob("*") if p.is_file() and p.suffix not in (".pyc",)
                      and "__pycache__" not in p.parts)


def _k8s() -> dict:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kubernetes" / "daskcluster.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def _containers(doc: dict) -> list[dict]:
    if doc["kind"] == "DaskCluster":
        return [*doc["spec"]["scheduler"]["spec"]["containers"], *doc["spec"]["worker"]["spec"]["containers"]]
    return doc["spec"]["template"]["spec"]["containers"]


def _pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] == "DaskCluster":
        return [doc["spec"]["scheduler"]["spec"], doc["spec"]["worker"]["spec"]]
    return [doc["spec"]["template"]["spec"]]


def _tls_flag_values(args: list[str]) -> dict[str, str]:
    return {flag: args[args.index(flag) + 1] for flag in ("--tls-ca-file", "--tls-cert", "--tls-key")
            if flag in args}


# ------------------------------------------------------------------------------ shared constants


def test_recipe_env_is_plain_and_complete():
    for key in ("S2DASK_IMAGE", "S2DASK_CLASSIFY", "S2DASK_SCHEDULER_PORT", "S2DASK_DASHBOARD_PORT",
                "S2DASK_TLS_DIR", "S2DASK_TLS_CA_NAME", "S2DASK_TLS_CERT_NAME", "S2DASK_TLS_KEY_NAME",
                "S2DASK_TLS_ENV", "TF_FORCE_GPU_ALLOW_GROWTH"):
        assert C.get(key), key
    assert C["S2DASK_CLASSIFY"] == "s2dask classify"
    assert re.fullmatch(r"[a-z0-9.-]+(/[a-z0-9._-]+)+:[\w.-]+", C["S2DASK_IMAGE"])
    assert set(TLS_CLIENT_ENV) <= TLS_ENV
    # the shell reads the same values
    out = subprocess.run(["bash", "-c", f"source {CLUSTER / 'recipe.env'}; echo \"$S2DASK_IMAGE|$S2DASK_CLASSIFY\""],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{C['S2DASK_IMAGE']}|{C['S2DASK_CLASSIFY']}"


def test_make_certs_writes_the_shared_file_names():
    spec = importlib.util.spec_from_file_location("make_certs", CLUSTER / "tls" / "make_certs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (mod.CA_CERT, mod.CERT, mod.KEY) == (C["S2DASK_TLS_CA_NAME"], C["S2DASK_TLS_CERT_NAME"],
                                                C["S2DASK_TLS_KEY_NAME"])


@pytest.mark.parametrize("path", [p for p in RECIPE_FILES if p.suffix in (".sh", ".sbatch")],
                         ids=lambda p: str(p.relative_to(CLUSTER)))
def test_shell_scripts_parse_and_are_executable(path):
    assert path.stat().st_mode & 0o111, f"{path} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_every_image_reference_is_the_shared_image():
    for path in RECIPE_FILES:
        for image in re.findall(r"ghcr\.io/[\w./-]+(?::[\w.-]+)?", path.read_text()):
            assert image == C["S2DASK_IMAGE"], f"{path.relative_to(CLUSTER)} names {image}"


def test_every_dask_tls_variable_is_a_known_one():
    """A typo in a DASK_DISTRIBUTED__COMM__* name is silently ignored by Dask: catch it here."""
    seen = set()
    for path in RECIPE_FILES:
        for name in re.findall(r"DASK_DISTRIBUTED__COMM__[A-Z_]*[A-Z](?![A-Z_*])", path.read_text()):
            assert name in TLS_ENV, f"{path.relative_to(CLUSTER)}: unknown variable {name}"
            seen.add(name)
    assert set(TLS_CLIENT_ENV) <= seen


def test_local_recipe_uses_the_shared_settings():
    start = (CLUSTER / "local" / "start.sh").read_text()
    assert 'source "$here/../recipe.env"' in start
    for key in ("S2DASK_TLS_CA_NAME", "S2DASK_TLS_CERT_NAME", "S2DASK_TLS_KEY_NAME"):
        assert f"${key}" in start
    for flag in ("--tls-ca-file", "--tls-cert", "--tls-key", "--protocol tls", "--scheduler-file", "--nworkers"):
        assert flag in start
    assert "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True" in start


# ------------------------------------------------------------------------------ Kubernetes


def test_kubernetes_manifest_is_well_formed():
    docs = _k8s()
    assert set(docs) == {"DaskCluster", "Job"}
    cluster, job = docs["DaskCluster"], docs["Job"]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1" and job["apiVersion"] == "batch/v1"
    for doc in (cluster, job):
        assert doc["metadata"]["name"]
        for c in _containers(doc):
            assert c["name"] and c["image"] == C["S2DASK_IMAGE"]
            assert isinstance(c.get("command", []), list) and isinstance(c.get("args", []), list)
            assert all(isinstance(e["name"], str) and isinstance(e["value"], str) for e in c.get("env", [])
                       if "value" in e)
    assert isinstance(cluster["spec"]["worker"]["replicas"], int)
    ports = {p["name"]: p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    assert ports == {"tcp-comm": int(C["S2DASK_SCHEDULER_PORT"]), "http-dashboard": int(C["S2DASK_DASHBOARD_PORT"])}
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_kubernetes_gpu_workers():
    worker = _k8s()["DaskCluster"]["spec"]["worker"]["spec"]["containers"][0]
    assert worker["command"] == ["dask", "cuda", "worker"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == C["TF_FORCE_GPU_ALLOW_GROWTH"]


def test_kubernetes_tls_and_classify_command():
    docs = _k8s()
    name = docs["DaskCluster"]["metadata"]["name"]
    address = f"tls://{name}-scheduler:{C['S2DASK_SCHEDULER_PORT']}"
    scheduler, worker = _containers(docs["DaskCluster"])
    job = _containers(docs["Job"])[0]
    # every pod mounts the TLS Secret where every recipe expects the certificates
    for doc in docs.values():
        for pod in _pod_specs(doc):
            secrets = {v["name"] for v in pod["volumes"] if "secret" in v}
            for c in pod["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                assert mounts.get(TLS_DIR) in secrets
    # scheduler and workers: explicit TLS flags with the shared paths, tls:// only
    assert scheduler["args"][scheduler["args"].index("--protocol") + 1] == "tls"
    for c in (scheduler, worker):
        assert set(_tls_flag_values(c["args"]).values()) == TLS_FILES
        assert {e["name"]: e["value"] for e in c["env"]}["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    assert worker["args"][0] == address
    # the job: exactly `s2dask classify`, TLS through Dask's variables only (the env-var route)
    assert job["command"] == C["S2DASK_CLASSIFY"].split()
    assert job["args"][job["args"].index("--scheduler") + 1] == address
    assert not _tls_flag_values(job["args"])
    env = {e["name"]: e["value"] for e in job["env"] if "value" in e}
    assert {k: env[k] for k in TLS_CLIENT_ENV} == {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": f"{TLS_DIR}/{C['S2DASK_TLS_CA_NAME']}",
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": f"{TLS_DIR}/{C['S2DASK_TLS_CERT_NAME']}",
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": f"{TLS_DIR}/{C['S2DASK_TLS_KEY_NAME']}",
    }


# ------------------------------------------------------------------------------ Docker


def _dockerfile() -> list[tuple[str, str]]:
    text = (CLUSTER / "docker" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def test_dockerfile():
    instr = _dockerfile()
    names = [i for i, _ in instr]
    assert names[0] == "FROM" and "ENTRYPOINT" in names and "COPY" in names
    assert set(names) <= {"FROM", "ENV", "COPY", "RUN", "USER", "WORKDIR", "EXPOSE", "ENTRYPOINT", "CMD", "ARG", "LABEL"}
    runs = " ".join(r for i, r in instr if i == "RUN")
    assert re.search(r"pip install \"[^\"]*\[gpu[,\]]", runs), runs
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(r for i, r in instr if i == "ENV")))
    assert env["S2DASK_TLS_DIR"] == TLS_DIR
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == C["TF_FORCE_GPU_ALLOW_GROWTH"]
    entry = dict(instr)["ENTRYPOINT"]
    assert entry.startswith("[")  # exec form: signals reach dask
    expose = dict(instr)["EXPOSE"].split()
    assert expose == [C["S2DASK_SCHEDULER_PORT"], C["S2DASK_DASHBOARD_PORT"]]
    assert f"-t {C['S2DASK_IMAGE']}" in (CLUSTER / "docker" / "Dockerfile").read_text()


def test_docker_entrypoint_roles():
    text = (CLUSTER / "docker" / "entrypoint.sh").read_text()
    assert "exec s2dask classify" in text
    assert "exec dask cuda worker" in text and "exec dask worker" in text and "exec dask scheduler" in text
    for key in ("S2DASK_TLS_CA_NAME", "S2DASK_TLS_CERT_NAME", "S2DASK_TLS_KEY_NAME"):
        assert f"$tls_dir/{C[key]}" in text
    # the help role runs without docker
    out = subprocess.run([str(CLUSTER / "docker" / "entrypoint.sh"), "--help"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "cuda-worker" in out.stdout


# ------------------------------------------------------------------------------ SLURM


def test_sbatch_script():
    """Runs anywhere SLURM does: no GPU count or node count fixed, the venv by default, the image
    only with S2DASK_SIF, TLS on by default (run for real in tests/test_slurm.py)."""
    text = (CLUSTER / "slurm" / "s2dask.sbatch").read_text()
    directives = dict(re.findall(r"^#SBATCH\s+(--[\w-]+)=?(\S*)", text, flags=re.M))
    assert "--gres" not in directives and directives["--nodes"] == "1" and "--time" in directives
    assert "S2DASK_GPUS_PER_NODE" in text and "SLURM_GPUS_ON_NODE" in text
    assert re.search(rf"^S2DASK_IMAGE={re.escape(C['S2DASK_IMAGE'])}$", text, flags=re.M)
    assert re.search(rf"^S2DASK_TLS_DIR={re.escape(TLS_DIR)}$", text, flags=re.M)
    assert re.search(r"^run s2dask classify ", text, flags=re.M)
    assert "dask cuda worker" in text and "dask worker" in text and "--protocol tls" in text
    assert 'if [ -n "${S2DASK_SIF:-}" ]; then' in text and "S2DASK_VENV" in text
    assert 'if [ "${S2DASK_TLS:-1}" != 0 ]; then' in text and "make_certs.py" in text
    for name in TLS_ENV:
        assert f"export {name}=" in text
    for key in ("S2DASK_TLS_CA_NAME", "S2DASK_TLS_CERT_NAME", "S2DASK_TLS_KEY_NAME"):
        assert f"$tls_dir/{C[key]}" in text
    assert "export TF_FORCE_GPU_ALLOW_GROWTH=true" in text


def test_jobqueue_spec():
    path = CLUSTER / "slurm" / "jobqueue.py"
    tree = ast.parse(path.read_text())
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
    assert consts["S2DASK_IMAGE"] == C["S2DASK_IMAGE"]
    assert consts["S2DASK_TLS_DIR"] == TLS_DIR
    assert consts["S2DASK_CLASSIFY"] == C["S2DASK_CLASSIFY"]
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "SLURMCluster"]
    assert len(calls) == 1
    kw = {k.arg: k.value for k in calls[0].keywords}
    assert {"cores", "memory", "processes", "job_extra_directives", "protocol", "security", "python"} <= set(kw)
    env = next(n.value for n in tree.body if isinstance(n, ast.Assign)
               and any(getattr(t, "id", None) == "WORKER_ENV" for t in n.targets))
    names = {k.value for k in env.keys}
    assert names - {"TF_FORCE_GPU_ALLOW_GROWTH"} <= TLS_ENV and "TF_FORCE_GPU_ALLOW_GROWTH" in names


def _jobqueue_recipe():
    spec = importlib.util.spec_from_file_location("jobqueue_recipe", CLUSTER / "slurm" / "jobqueue.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_jobqueue_job_scripts(tmp_path, monkeypatch):
    """CPU jobs in this venv with TLS by default; GPUs and the image only when asked."""
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("S2DASK_DASHBOARD_ADDRESS", ":0")
    mod = _jobqueue_recipe()
    certs = mod.make_certs(tmp_path)
    assert sorted(p.name for p in Path(certs).iterdir()) == ["ca-key.pem", "ca.pem", "cert.pem", "key.pem"]
    cluster = mod.make_cluster(certs=certs)
    try:
        script = cluster.job_script()
        assert "--gres" not in script and "apptainer" not in script and os.sys.executable in script
        assert f"--tls-ca-file {certs}/ca.pem" in script and cluster.scheduler_address.startswith("tls://")
        assert f"export DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT={certs}/cert.pem" in script
    finally:
        cluster.close()
    cluster = mod.make_cluster(certs=certs, gpus_per_job=2, sif="/shared/s2dask.sif")
    try:
        script = cluster.job_script()
        assert "#SBATCH --gres=gpu:2" in script and "--resources GPU=2" in script
        assert f"apptainer exec --nv --bind {certs}:{TLS_DIR} /shared/s2dask.sif python" in script
        assert f"--tls-cert {TLS_DIR}/cert.pem" in script
    finally:
        cluster.close()
    cluster = mod.make_cluster(certs=None)
    try:
        assert cluster.scheduler_address.startswith("tcp://") and "--tls" not in cluster.job_script()
    finally:
        cluster.close()


# ------------------------------------------------------------------------------ README


def test_readme_covers_every_recipe():
    text = (CLUSTER / "README.md").read_text()
    for needle in ("cluster/local/start.sh", "cluster/local/stop.sh", "cluster/tls/make-certs.sh",
                   "cluster/gpu/start-workers.sh", "cluster/slurm/s2dask.sbatch", "cluster/slurm/jobqueue.py",
                   "cluster/kubernetes/daskcluster.yaml", "cluster/docker/Dockerfile",
                   "TF_FORCE_GPU_ALLOW_GROWTH", "AWS_ENDPOINT_URL", "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
                   C["S2DASK_CLASSIFY"]):
        assert needle in text, needle
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.strip() and not line.strip().startswith("#"):
                shlex.split(line.rstrip("\\"))  # every command line is valid shell quoting
