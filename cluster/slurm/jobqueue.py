"""A SLURM cluster from Python with dask-jobqueue: one SLURM job per Dask worker, TLS on.

    pip install dask-jobqueue
    python cluster/slurm/jobqueue.py --jobs 4 -- /shared/scenes/a.tif --model /shared/models/m --out /shared/out

The scheduler runs in this process; each SLURM job is one worker (``--cores`` threads of one
process, ``--gpus-per-job`` GPUs through ``--gres=gpu:N``, so SLURM sets
``CUDA_VISIBLE_DEVICES``). Workers run this Python (the project's venv, which must be on a
file system the nodes share) or, with ``--sif``/``S2DASK_SIF``, the project image
(``S2DASK_IMAGE``) through Apptainer. TLS is on unless ``--no-tls``: certificates from
``--certs`` or, when none are given, made in ``RUN_DIR/tls`` with ``cluster/tls/make_certs.py``.
The job is the library call behind ``s2dask classify`` with everything after ``--``.
Every option also reads an environment variable (see ``--help``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

S2DASK_IMAGE = "ghcr.io/s2dask/s2dask:0.1.0"
S2DASK_TLS_DIR = "/etc/s2dask/tls"
S2DASK_CLASSIFY = "s2dask classify"
MAKE_CERTS = Path(__file__).resolve().parents[1] / "tls" / "make_certs.py"

#: Dask's TLS variables of every worker job (the same names as the other recipes), relative
#: to the certificate directory the worker sees
WORKER_ENV = {
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": "{tls}/ca.pem",
    "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": "{tls}/cert.pem",
    "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": "{tls}/key.pem",
}


def make_certs(run_dir: str | os.PathLike) -> str:
    """``RUN_DIR/tls`` with a CA and a certificate (made with ``cluster/tls/make_certs.py`` when
    missing); returns the directory."""
    tls = Path(run_dir).resolve() / "tls"
    if not (tls / "cert.pem").is_file():
        tls.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(MAKE_CERTS), str(tls)], check=True, stdout=subprocess.DEVNULL)
    return str(tls)


def make_cluster(*, certs: str | None, queue: str | None = None, account: str | None = None,
                 cores: int = 1, memory: str = "4GB", walltime: str = "02:00:00",
                 gpus_per_job: int = 0, sif: str | None = None, log_directory: str | None = None):
    """A ``dask_jobqueue.SLURMCluster``, one worker per job; scale it with ``cluster.scale(jobs=N)``.

    Parameters
    ----------
    certs
        Directory with ``ca.pem``, ``cert.pem``, ``key.pem`` on a file system the nodes share
        (bound at ``/etc/s2dask/tls`` in the container); ``None``: no TLS.
    queue, account
        SLURM partition and account (``None``: the cluster's defaults).
    cores, memory, walltime
        Of each job; ``cores`` are the worker's threads.
    gpus_per_job
        GPUs of each job (``--gres=gpu:N``) and the worker's ``GPU`` resource; 0: none.
    sif
        Run workers in this Apptainer image (``docker://`` + :data:`S2DASK_IMAGE` pulls it);
        ``None``: this Python, the project's venv.
    log_directory
        Where the jobs' output goes.

    Raises
    ------
    ImportError
        If dask-jobqueue is not installed.
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ImportError("this recipe needs dask-jobqueue: pip install dask-jobqueue") from None
    from distributed.security import Security

    tls_args: list[str] = []
    security, exports, protocol = None, ["export TF_FORCE_GPU_ALLOW_GROWTH=true"], "tcp://"
    if certs is not None:
        certs = os.path.abspath(os.path.expanduser(certs))
        seen = S2DASK_TLS_DIR if sif else certs  # where the worker finds them
        files = {n: os.path.join(certs, f"{n}.pem") for n in ("ca", "cert", "key")}
        security = Security(
            tls_ca_file=files["ca"],
            tls_scheduler_cert=files["cert"], tls_scheduler_key=files["key"],
            tls_worker_cert=files["cert"], tls_worker_key=files["key"],
            tls_client_cert=files["cert"], tls_client_key=files["key"],
            require_encryption=True,
        )
        exports = [f"export {k}={v.format(tls=seen)}" for k, v in WORKER_ENV.items()]
        tls_args = ["--tls-ca-file", f"{seen}/ca.pem", "--tls-cert", f"{seen}/cert.pem",
                    "--tls-key", f"{seen}/key.pem"]
        protocol = "tls://"
    python = sys.executable
    if sif:
        nv = "--nv " if gpus_per_job else ""
        binds = f"--bind {certs}:{S2DASK_TLS_DIR} " if certs else ""
        python = f"apptainer exec {nv}{binds}{sif} python"
    return SLURMCluster(
        queue=queue, account=account, cores=cores, processes=1, memory=memory, walltime=walltime,
        job_extra_directives=[f"--gres=gpu:{gpus_per_job}"] if gpus_per_job else [],
        job_script_prologue=exports, python=python, log_directory=log_directory,
        worker_extra_args=[*(["--resources", f"GPU={gpus_per_job}"] if gpus_per_job else []), *tls_args],
        protocol=protocol, security=security,
        scheduler_options={"dashboard_address": os.environ.get("S2DASK_DASHBOARD_ADDRESS", ":8787")},
    )


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=int(env("S2DASK_JOBS", 2)),
                   help="SLURM jobs = Dask workers (S2DASK_JOBS, default 2)")
    p.add_argument("--cores", type=int, default=int(env("S2DASK_CORES", 1)),
                   help="cores (threads) of each job (S2DASK_CORES, default 1)")
    p.add_argument("--memory", default=env("S2DASK_MEMORY", "4GB"), help="memory of each job (S2DASK_MEMORY, default 4GB)")
    p.add_argument("--walltime", default=env("S2DASK_WALLTIME", "02:00:00"), help="(S2DASK_WALLTIME, default 02:00:00)")
    p.add_argument("--gpus-per-job", type=int, default=int(env("S2DASK_GPUS_PER_JOB", 0)),
                   help="GPUs of each job, --gres=gpu:N (S2DASK_GPUS_PER_JOB, default 0)")
    p.add_argument("--queue", default=env("S2DASK_PARTITION"), help="partition (S2DASK_PARTITION)")
    p.add_argument("--account", default=env("S2DASK_ACCOUNT"), help="account (S2DASK_ACCOUNT)")
    p.add_argument("--sif", default=env("S2DASK_SIF"), help="run workers in this Apptainer image (S2DASK_SIF)")
    p.add_argument("--run-dir", default=env("S2DASK_RUN_DIR", "s2dask-jobqueue"),
                   help="job logs and made certificates, on a shared file system (S2DASK_RUN_DIR)")
    p.add_argument("--certs", default=env("S2DASK_CERTS"),
                   help="directory with ca.pem, cert.pem, key.pem (S2DASK_CERTS; default: made in RUN_DIR/tls)")
    p.add_argument("--no-tls", action="store_true", default=env("S2DASK_TLS", "1") == "0",
                   help="plain tcp:// (S2DASK_TLS=0)")
    p.add_argument("--start-timeout", type=float, default=float(env("S2DASK_START_TIMEOUT", 300)),
                   help="seconds to wait for the first worker (S2DASK_START_TIMEOUT, default 300)")
    p.add_argument("classify", nargs=argparse.REMAINDER, help="arguments of s2dask classify, after --")
    args = p.parse_args(argv)
    from s2dask.cli import main as s2dask_main

    run_dir = Path(args.run_dir).resolve()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    certs = None if args.no_tls else (os.path.abspath(args.certs) if args.certs else make_certs(run_dir))
    cluster = make_cluster(certs=certs, queue=args.queue, account=args.account, cores=args.cores,
                           memory=args.memory, walltime=args.walltime, gpus_per_job=args.gpus_per_job,
                           sif=args.sif, log_directory=str(run_dir / "logs"))
    try:
        cluster.scale(jobs=args.jobs)
        cluster.wait_for_workers(1, timeout=args.start_timeout)  # the others join as they start
        rest = [a for a in args.classify if a != "--"]
        tls = [] if certs is None else ["--tls-ca-file", os.path.join(certs, "ca.pem"),
                                        "--tls-cert", os.path.join(certs, "cert.pem"),
                                        "--tls-key", os.path.join(certs, "key.pem")]
        # exactly `s2dask classify ... --scheduler ADDRESS --tls-*`, as in every other recipe
        return s2dask_main([*S2DASK_CLASSIFY.split()[1:], *rest, "--scheduler", cluster.scheduler_address, *tls])
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
