"""A throw-away S3-compatible server for tests and benchmarks: moto's standalone server (the one
MLflow's own tests use) on a free loopback port, in a subprocess.

    with TemporaryS3() as s3:
        s3.create_bucket("models")
        reg = Registry(url, artifacts=s3.artifacts_url("models", "team-a"))

`TemporaryS3(authenticated=True)` checks every request's signature against an IAM user it
creates (`access_key` / `secret_key`); otherwise any credentials are accepted.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["S3Unavailable", "TemporaryS3"]

_DUMMY_KEY = "testing"
# Requests the server answers before it starts checking signatures: the three IAM calls that
# create the user whose keys are checked afterwards.
_SETUP_ACTIONS = 3


class S3Unavailable(RuntimeError):
    """moto's server could not be started (not installed, or it did not answer)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TemporaryS3:
    """moto_server on 127.0.0.1:<free port>; `stop()` (or leaving the `with`) ends it."""

    def __init__(self, *, authenticated: bool = False, log: Path | None = None):
        self.authenticated = authenticated
        self.port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.access_key = _DUMMY_KEY
        self.secret_key = _DUMMY_KEY
        self.region = "us-east-1"
        self._log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: Any = None

    def start(self) -> TemporaryS3:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise S3Unavailable(
                "moto[server] is not installed: pip install 'aiarch[test]'"
            ) from None
        env = dict(os.environ)
        if self.authenticated:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_SETUP_ACTIONS)
        self._out = out = open(self._log, "ab") if self._log else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=out or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise S3Unavailable(f"moto_server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise S3Unavailable(
                        f"moto_server did not listen on {self.port} in 30 s"
                    ) from None
                time.sleep(0.05)
        if self.authenticated:
            self._create_user()
        return self

    def _create_user(self) -> None:
        iam = self.client("iam")
        iam.create_user(UserName="aiarch")
        iam.put_user_policy(
            UserName="aiarch",
            PolicyName="s3",
            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
            '"Action":"s3:*","Resource":"*"}]}',
        )
        key = iam.create_access_key(UserName="aiarch")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def client(self, service: str = "s3", **overrides: Any) -> Any:
        """A boto3 client of this server with its credentials (or `overrides`)."""
        import boto3

        kwargs: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }
        kwargs.update(overrides)
        return boto3.client(service, **kwargs)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 at this server with its credentials."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def artifacts_url(self, bucket: str, prefix: str = "") -> str:
        """An artifacts URL naming this server's endpoint."""
        path = f"/{prefix}" if prefix else ""
        return f"s3://{bucket}{path}?endpoint_url={self.endpoint_url}&region={self.region}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._out is not None:
            self._out.close()
            self._out = None

    def __enter__(self) -> TemporaryS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
