"""Registry artifacts in an S3 bucket: two hosts (registries with separate local homes) share one
PostgreSQL and one bucket on moto's S3 server started on 127.0.0.1."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aiarch.registry import (
    IntegrityError,
    ModelNotFoundError,
    Registry,
    StorageUnavailableError,
)
from aiarch.registry.errors import InvalidArgumentError
from aiarch.registry.objectstore import ObjectArtifactStore
from aiarch.registry.pgcluster import TemporaryPostgres
from aiarch.registry.s3server import S3Unavailable, TemporaryS3

from .conftest import child_env, http_json, write_model

pytestmark = [pytest.mark.postgres, pytest.mark.s3]

_ids = itertools.count()


def _start(tmp: Path, authenticated: bool = False) -> Iterator[TemporaryS3]:
    try:
        server = TemporaryS3(authenticated=authenticated, log=tmp / "moto.log").start()
    except S3Unavailable as e:
        pytest.fail(str(e))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporaryS3]:
    yield from _start(tmp_path_factory.mktemp("s3"))


@pytest.fixture
def s3_env(s3: TemporaryS3, monkeypatch: pytest.MonkeyPatch) -> TemporaryS3:
    """boto3 in this process talks to the test server with its credentials."""
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AIARCH_ARTIFACTS", raising=False)
    return s3


@pytest.fixture
def bucket(s3_env: TemporaryS3) -> str:
    name = f"models-{os.getpid()}-{next(_ids)}"
    s3_env.create_bucket(name)
    return name


@pytest.fixture
def pg_url(postgres: TemporaryPostgres) -> str:
    return postgres.url(schema=f"s3_{os.getpid()}_{next(_ids)}")


@pytest.fixture
def hosts(
    pg_url: str, bucket: str, s3_env: TemporaryS3, tmp_path: Path
) -> Iterator[Callable[[str], Registry]]:
    """`hosts("a")`: a registry with its own local home over the shared database and bucket."""
    opened: list[Registry] = []

    def make(name: str, **kwargs: Any) -> Registry:
        kwargs.setdefault("artifacts", s3_env.artifacts_url(bucket, "team"))
        reg = Registry(pg_url, home=tmp_path / f"host-{name}", **kwargs)
        opened.append(reg)
        return reg

    yield make
    for reg in opened:
        reg.close()


def _store(reg: Registry) -> ObjectArtifactStore:
    assert isinstance(reg.store, ObjectArtifactStore)
    return reg.store


def _keys(reg: Registry, under: str = "") -> list[str]:
    """Keys of the registry's bucket under `team/<under>`."""
    st = _store(reg)
    listing = st.client.list_objects_v2(Bucket=st.loc.bucket, Prefix=f"team/{under}")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _object_key(mv: Any) -> str:
    from aiarch.registry.store import hash_file

    return f"team/objects/{hash_file(mv.artifact_path)[0]}"


def _put(reg: Registry, key: str, data: bytes) -> None:
    st = _store(reg)
    st.client.put_object(Bucket=st.loc.bucket, Key=key, Body=data)


def _delete(reg: Registry, key: str) -> None:
    st = _store(reg)
    st.client.delete_object(Bucket=st.loc.bucket, Key=key)


def test_what_one_host_registers_the_other_loads_and_verifies(
    hosts: Callable[..., Registry], tmp_path: Path
) -> None:
    a, b = hosts("a"), hosts("b")
    model = write_model(tmp_path / "src", 3.0)
    mv = a.register("fraud", f"{model}:predict", metrics={"auc": 0.9})
    a.promote("fraud", mv.version, to="production")

    got = b.open("fraud@production")
    assert got.digest == mv.digest
    assert str(got.artifact_path).startswith(str(tmp_path / "host-b"))  # b's own cache
    assert got.artifact_path.read_bytes() == model.read_bytes()
    assert b.verify("fraud/1").digest == mv.digest
    assert _keys(a) == sorted([_object_key(mv), f"team/manifests/{mv.digest}.json"])

    # The same content registered again from the other host shares the bucket's entries.
    mv2 = b.register("fraud", f"{model}:predict")
    assert (mv2.version, mv2.digest) == (2, mv.digest)
    assert len(_keys(a)) == 2


def test_a_folder_artifact_round_trips_through_the_bucket(
    hosts: Callable[..., Registry], tmp_path: Path
) -> None:
    src = tmp_path / "bundle"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(os.urandom(3 << 20))
    (src / "sub" / "config.json").write_text('{"k": 1}')
    (src / "sub" / "copy.bin").write_bytes((src / "weights.bin").read_bytes())
    mv = hosts("a").register("bundle", src, format="custom")
    got = hosts("b").open("bundle/1")
    assert got.artifact_path.is_dir()
    for rel in ("weights.bin", "sub/config.json", "sub/copy.bin"):
        assert (got.artifact_path / rel).read_bytes() == (src / rel).read_bytes()
    assert len(_keys(hosts("c"), "objects/")) == 2  # equal files are stored once
    assert got.digest == mv.digest


def test_a_tampered_object_is_refused_and_nothing_is_cached(
    hosts: Callable[..., Registry], tmp_path: Path
) -> None:
    a, b = hosts("a"), hosts("b")
    mv = a.register("fraud", f"{write_model(tmp_path / 'src', 2.0)}:predict")
    _put(a, _object_key(mv), b"def predict(x):\n    return x * 1000\n")

    with pytest.raises(IntegrityError) as e:
        b.open("fraud/1")
    msg = str(e.value)
    assert "models:/fraud/1" in msg and "arrived altered" in msg and "refusing" in msg
    assert not _store(b).local.has(mv.digest)
    cached = [p for p in _store(b).local.objects.rglob("*") if p.is_file()]
    assert cached == []
    with pytest.raises(IntegrityError, match="was modified"):
        a.verify("fraud/1")  # verify checks the bucket, not a's intact cache


def test_a_damaged_cached_copy_is_fetched_again(
    hosts: Callable[..., Registry], tmp_path: Path
) -> None:
    a, b = hosts("a"), hosts("b")
    model = write_model(tmp_path / "src", 5.0)
    a.register("fraud", f"{model}:predict")
    path = b.open("fraud/1").artifact_path
    os.chmod(path, 0o644)
    path.write_text("damaged")
    assert b.open("fraud/1").artifact_path.read_bytes() == model.read_bytes()


def test_an_interrupted_upload_leaves_no_visible_version(
    hosts: Callable[..., Registry], tmp_path: Path
) -> None:
    from botocore.exceptions import ConnectionClosedError

    a, b = hosts("a"), hosts("b")
    model = write_model(tmp_path / "src", 4.0)

    def drop_manifest_upload(params: Any, **_: Any) -> None:
        # The connection breaks after the objects went up, while the manifest is sent.
        if "/manifests/" in params["url"]:
            raise ConnectionClosedError(endpoint_url=params["url"])

    events = _store(a).client.meta.events
    events.register("before-call.s3.PutObject", drop_manifest_upload)
    with pytest.raises(StorageUnavailableError, match="cannot upload the artifact"):
        a.register("fraud", f"{model}:predict")
    events.unregister("before-call.s3.PutObject", drop_manifest_upload)

    with pytest.raises(ModelNotFoundError):
        b.get("fraud")
    assert b.list_models() == []
    assert _keys(a, "manifests/") == []

    mv = a.register("fraud", f"{model}:predict")  # a retry completes the artifact
    assert mv.version == 1
    assert b.open("fraud/1").digest == mv.digest


def test_an_unreachable_store_at_register_writes_no_row(
    hosts: Callable[..., Registry], tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = hosts(
        "down",
        artifacts=f"s3://models/team?endpoint_url=http://user:hunter2@127.0.0.1:{closed}",
    )
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as e:
        down.register("fraud", f"{write_model(tmp_path / 'src', 1.0)}:predict")
    assert time.monotonic() - started < 30  # bounded retries, never a hang
    msg = str(e.value)
    assert f"127.0.0.1:{closed}" in msg and "s3://models/team/" in msg
    assert "hunter2" not in msg and "***" in msg
    assert hosts("b").list_models() == []


def test_wrong_credentials_at_register_are_named_and_write_no_row(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for server in _start(tmp_path, authenticated=True):
        server.create_bucket("secured")
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        url = server.artifacts_url("secured", "team")
        model = f"{write_model(tmp_path / 'src', 1.0)}:predict"
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        wrong = Registry(pg_url, home=tmp_path / "wrong", artifacts=url)
        with pytest.raises(StorageUnavailableError) as e:
            wrong.register("fraud", model)
        msg = str(e.value)
        assert "cannot upload the artifact to s3://secured/team/" in msg
        assert "403" in msg and "check the credentials" in msg
        assert "not-the-secret" not in str(e.value)
        assert wrong.list_models() == []
        wrong.close()

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
        right = Registry(pg_url, home=tmp_path / "right", artifacts=url)
        assert right.register("fraud", model).version == 1
        right.close()


def test_a_deleted_object_makes_verify_name_the_broken_version(
    hosts: Callable[..., Registry], tmp_path: Path, s3_env: TemporaryS3, pg_url: str
) -> None:
    a = hosts("a")
    a.register("fraud", f"{write_model(tmp_path / 'src', 1.0)}:predict")
    mv2 = a.register("fraud", f"{write_model(tmp_path / 'src', 2.0)}:predict")
    _delete(a, _object_key(mv2))

    assert a.verify("fraud/1").version == 1
    with pytest.raises(IntegrityError) as e:
        a.verify("fraud/2")
    assert "models:/fraud/2" in str(e.value) and "is missing from s3://" in str(e.value)

    # The CLI says the same and exits 1; the bucket comes from --artifacts.
    cli = subprocess.run(
        [
            *(sys.executable, "-m", "aiarch", "models", "verify", "fraud/2", "--registry", pg_url),
            *("--artifacts", f"{_store(a).loc.url}?endpoint_url={s3_env.endpoint_url}"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(AIARCH_HOME=str(tmp_path / "cli"), **s3_env.env()),
    )
    assert cli.returncode == 1, cli.stderr
    assert "models:/fraud/2" in cli.stderr and "missing" in cli.stderr


def test_sweep_store_removes_bucket_entries_no_version_uses(
    hosts: Callable[..., Registry], tmp_path: Path
) -> None:
    a = hosts("a")
    keep = a.register("fraud", f"{write_model(tmp_path / 'src', 1.0)}:predict")
    drop = a.register("fraud", f"{write_model(tmp_path / 'src', 2.0)}:predict")
    a.delete("fraud", drop.version)
    assert len(_keys(a)) == 4

    a.sweep_store()  # the default grace keeps young bucket entries
    assert len(_keys(a)) == 4
    assert a.sweep_store(grace_s=0) >= 2
    assert _keys(a) == sorted([_object_key(keep), f"team/manifests/{keep.digest}.json"])
    assert hosts("b").open("fraud/1").digest == keep.digest


def test_artifacts_urls_are_checked_and_credentials_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with pytest.raises(InvalidArgumentError, match="carries credentials") as e:
        Registry(url, home=tmp_path, artifacts="s3://AKIA:topsecret@bucket/p")
    assert "topsecret" not in str(e.value)
    with pytest.raises(InvalidArgumentError, match="unknown parameter 'endpoint'"):
        Registry(url, home=tmp_path, artifacts="s3://bucket/p?endpoint=http://x")
    with pytest.raises(InvalidArgumentError, match="s3://BUCKET"):
        Registry(url, home=tmp_path, artifacts="gs://bucket/p")


def _infer(server: Any) -> tuple[int, Any]:
    return http_json(
        "POST",
        f"{server.base}/v2/models/fraud/infer",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
        headers={"Content-Type": "application/json"},
    )


def test_a_server_on_another_host_serves_from_the_bucket_and_keeps_serving_when_it_breaks(
    hosts: Callable[..., Registry],
    s3_env: TemporaryS3,
    bucket: str,
    pg_url: str,
    serve: Callable[..., Any],
    tmp_path: Path,
) -> None:
    a = hosts("a")
    mv = a.register("fraud", f"{write_model(tmp_path / 'src', 3.0)}:predict")
    a.promote("fraud", mv.version, to="production")
    env = child_env(
        AIARCH_HOME=str(tmp_path / "server-home"),
        AIARCH_ARTIFACTS=s3_env.artifacts_url(bucket, "team"),
        **s3_env.env(),
    )
    server = serve(["--model", "fraud@production", "--registry", pg_url], env)
    status, body = _infer(server)
    assert status == 200, body
    assert (body["model_version"], body["outputs"][0]["data"]) == ("1", [3.0, 6.0, 9.0, 12.0])
    cached = list((tmp_path / "server-home" / "artifacts" / "trees").glob("*.manifest.json"))
    assert [p.name for p in cached] == [f"{mv.digest}.manifest.json"]

    # Version 2's object disappears from the bucket before the server ever fetched it.
    mv2 = a.register("fraud", f"{write_model(tmp_path / 'src', 4.0)}:predict")
    _delete(a, _object_key(mv2))
    a.set_alias("fraud", "production", mv2.version)  # set_alias does not verify; the server must
    deadline = time.monotonic() + 30
    while "cannot switch production to version 2" not in server.output():
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.1)
    assert "is missing from s3://" in server.output()
    status, body = _infer(server)
    assert (status, body["model_version"], body["outputs"][0]["data"][0]) == (200, "1", 3.0)
