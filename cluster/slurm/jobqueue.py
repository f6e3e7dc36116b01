"""A SLURM cluster from Python with dask-jobqueue: GPU workers in the project image, TLS on.

    pip install dask-jobqueue
    python cluster/slurm/jobqueue.py --jobs 4 --certs ~/s2dask-tls -- \\
        s3://bucket/scene.tif --model /shared/models/m --out s3://bucket/out

Each SLURM job is one worker with one GPU (``--gres=gpu:1``, so ``CUDA_VISIBLE_DEVICES`` is
set by SLURM), running in the same image as every other recipe (``S2DASK_IMAGE`` in
``cluster/recipe.env``) through Apptainer. The scheduler runs in this process; the job is
the library call behind ``s2dask classify``.
"""

from __future__ import annotations

import argparse
import os
import sys

S2DASK_IMAGE = "ghcr.io/s2dask/s2dask:0.1.0"
S2DASK_TLS_DIR = "/etc/s2dask/tls"
S2DASK_CLASSIFY = "s2dask classify"

#: environment of every worker job (same names as the local, Docker and Kubernetes recipes)
WORKER_ENV = {
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": f"{S2DASK_TLS_DIR}/ca.pem",
    "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": f"{S2DASK_TLS_DIR}/cert.pem",
    "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": f"{S2DASK_TLS_DIR}/key.pem",
}


def make_cluster(*, certs: str, queue: str | None = None, account: str | None = None,
                 cores: int = 8, memory: str = "64GB", walltime: str = "02:00:00",
                 sif: str | None = None):
    """A ``dask_jobqueue.SLURMCluster`` of single-GPU workers; scale it with ``cluster.scale(jobs=N)``.

    Parameters
    ----------
    certs
        Directory with ``ca.pem``, ``cert.pem``, ``key.pem`` (cluster/tls/make-certs.sh) on a
        file system the nodes share; bound at ``/etc/s2dask/tls`` in the container.
    sif
        Apptainer image; default ``docker://`` + :data:`S2DASK_IMAGE`.

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

    certs = os.path.abspath(os.path.expanduser(certs))
    image = sif or f"docker://{S2DASK_IMAGE}"
    security = Security(
        tls_ca_file=os.path.join(certs, "ca.pem"),
        tls_scheduler_cert=os.path.join(certs, "cert.pem"), tls_scheduler_key=os.path.join(certs, "key.pem"),
        tls_worker_cert=os.path.join(certs, "cert.pem"), tls_worker_key=os.path.join(certs, "key.pem"),
        tls_client_cert=os.path.join(certs, "cert.pem"), tls_client_key=os.path.join(certs, "key.pem"),
        require_encryption=True,
    )
    exports = [f"export APPTAINERENV_{k}={v}" for k, v in WORKER_ENV.items()]
    return SLURMCluster(
        queue=queue, account=account, cores=cores, processes=1, memory=memory, walltime=walltime,
        job_extra_directives=["--gres=gpu:1"],
        job_script_prologue=exports,
        # the worker command runs inside the project image, certificates bound where every recipe has them
        python=f"apptainer exec --nv --bind {certs}:{S2DASK_TLS_DIR} {image} python",
        worker_extra_args=["--nthreads", "1", "--resources", "GPU=1",
                           "--tls-ca-file", f"{S2DASK_TLS_DIR}/ca.pem",
                           "--tls-cert", f"{S2DASK_TLS_DIR}/cert.pem",
                           "--tls-key", f"{S2DASK_TLS_DIR}/key.pem"],
        protocol="tls://", security=security,
        scheduler_options={"dashboard_address": ":8787"},
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2, help="SLURM jobs = GPU workers (default 2)")
    p.add_argument("--certs", required=True, help="directory with ca.pem, cert.pem, key.pem")
    p.add_argument("--queue"), p.add_argument("--account")
    p.add_argument("classify", nargs=argparse.REMAINDER, help="arguments of s2dask classify, after --")
    args = p.parse_args(argv)
    from s2dask.cli import main as s2dask_main

    cluster = make_cluster(certs=args.certs, queue=args.queue, account=args.account)
    try:
        cluster.scale(jobs=args.jobs)
        rest = [a for a in args.classify if a != "--"]
        certs = os.path.abspath(os.path.expanduser(args.certs))
        # exactly `s2dask classify ... --scheduler ADDRESS --tls-*`, as in every other recipe
        return s2dask_main([*S2DASK_CLASSIFY.split()[1:], *rest, "--scheduler", cluster.scheduler_address,
                            "--tls-ca-file", os.path.join(certs, "ca.pem"),
                            "--tls-cert", os.path.join(certs, "cert.pem"),
                            "--tls-key", os.path.join(certs, "key.pem")])
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
