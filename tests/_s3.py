"""moto's S3 on loopback for tests, and the AWS_* environment that points at it.

``moto_server()`` runs one ``ThreadedMotoServer`` on 127.0.0.1 and yields its endpoint URL;
``aws_env`` is the environment of a test (fake credentials, us-east-1, optionally the endpoint)
that takes nothing from this machine: no config or credentials files, never the EC2 metadata
service. ``isolate_aws`` puts it into ``os.environ`` through ``monkeypatch`` after dropping
every ``AWS_*`` already there, and ``fresh_bucket`` creates a bucket and empties and removes it
afterwards. The conftest fixtures ``moto_url`` and ``moto_s3`` are built from these.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port; yields ``http://127.0.0.1:PORT``."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_env(tmp_path: Path, *, endpoint: str | None = None, key: str = "testing", secret: str = "testing",
            token: str | None = None) -> dict[str, str]:
    """The ``AWS_*`` variables of a test: these credentials, us-east-1, ``endpoint`` when given,
    no config or credentials files (names under ``tmp_path`` that do not exist), no EC2 metadata."""
    env = {"AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
           "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1"}
    if token is not None:
        env["AWS_SESSION_TOKEN"] = token
    if endpoint is not None:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


def isolate_aws(monkeypatch, tmp_path: Path, **kwargs) -> dict[str, str]:
    """Drop every ``AWS_*`` of this process, then set :func:`aws_env` (``kwargs`` as there);
    returns what was set. ``monkeypatch`` undoes it all after the test."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    env = aws_env(tmp_path, **kwargs)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@contextlib.contextmanager
def fresh_bucket(client, name: str) -> Iterator[str]:
    """Create bucket ``name`` with the boto3 ``client``; afterwards delete its objects and it."""
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        _remove_bucket(client, name)


def _remove_bucket(client, name: str, *, within: float = 30.0) -> None:
    """Empty bucket ``name`` and delete it. A job stopped by an error cancels its chunk tasks,
    but those already running on a worker finish and write their chunk: empty it again until
    it can be deleted (``within`` seconds)."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + within
    while True:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        try:
            client.delete_bucket(Bucket=name)
            return
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "BucketNotEmpty" or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
