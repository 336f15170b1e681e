"""`aiarch features apply|list|materialize|get`, run as a user would (a subprocess per
command), against a native snapshot store under a temporary AIARCH_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import aiarch

from .conftest import T0

S = 10**9


def cli(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    root = str(Path(aiarch.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["AIARCH_HOME"] = str(home)
    env.pop("AIARCH_FEATURE_STORE", None)
    return subprocess.run(
        [sys.executable, "-m", "aiarch.cli", "features", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    pq.write_table(
        pa.table(
            {
                "card": [1, 1, 2],
                "event_timestamp": pa.array([T0, T0 + 10 * S, T0], pa.timestamp("ns")),
                "amount": [1.0, 2.0, 3.0],
            }
        ),
        tmp_path / "txn.parquet",
    )
    (tmp_path / "defs.py").write_text(
        "from aiarch.features import Entity, Feature, FeatureView\n"
        "card = Entity('card')\n"
        f"views = [FeatureView('txn', card, (Feature('amount', default=-1),), "
        f"source={str(tmp_path / 'txn.parquet')!r})]\n"
    )
    return tmp_path


def test_apply_list_materialize_get(project: Path) -> None:
    home = project / "home"
    r = cli(["apply", str(project / "defs.py")], home)
    assert r.returncode == 0, r.stderr
    assert "applied feature_view txn" in r.stdout

    r = cli(["list", "--json"], home)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [v["name"] for v in listed["feature_views"]] == ["txn"]
    assert listed["feature_views"][0]["materialized_until_ns"] is None

    r = cli(["materialize", "txn", "--end", "2030-01-01T00:00:00"], home)
    assert r.returncode == 0, r.stderr
    assert "100.0%" in r.stderr  # progress on stderr
    assert "txn" in r.stdout and "2030-01-01" in r.stdout

    r = cli(["get", "txn:amount", "--ids", "1,2,3", "--json"], home)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["columns"] == ["txn:amount"]
    assert [(x["id"], x["status"], x["values"]) for x in got["rows"]] == [
        (1, "present", [2.0]),
        (2, "present", [3.0]),
        (3, "missing", [-1.0]),
    ]
    r = cli(["get", "txn:amount", "--ids", "1"], home)
    assert r.stdout.splitlines()[0].split() == ["card", "status", "txn:amount"]

    r = cli(["list"], home)
    assert "2030-01-01" in r.stdout  # the watermark


def test_user_errors_exit_1_without_traceback(project: Path) -> None:
    home = project / "home"
    cli(["apply", str(project / "defs.py")], home)
    for args, message in (
        (["get", "txn:nope", "--ids", "1"], "has no feature 'nope'; it has: ['amount']"),
        (["get", "nope:x", "--ids", "1"], "unknown feature view 'nope'"),
        (["get", "txn:amount", "--ids", "x"], "has int64 keys"),
        (["materialize", "ghost"], "known views: ['txn']"),
        (["apply", str(project / "missing.py")], "no such file"),
    ):
        r = cli(args, home)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr
    r = cli(["get"], home)
    assert r.returncode == 2  # argparse usage error


@pytest.mark.parametrize("as_json", [False, True])
def test_list_never_prints_the_online_store_password(tmp_path: Path, as_json: bool) -> None:
    secret = "S3cretPassw0rd"
    args = ["list", "--online", f"redis://:{secret}@127.0.0.1:6399/0"]
    r = cli([*args, "--json"] if as_json else args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert secret not in r.stdout + r.stderr
    assert "redis://:***@127.0.0.1:6399/0" in r.stdout


def test_get_prints_each_type(tmp_path: Path) -> None:
    (tmp_path / "defs.py").write_text(
        "from aiarch.features import Entity, Feature, FeatureView\n"
        "user = Entity('user', dtype='string')\n"
        "views = [FeatureView('u', user, (Feature('n', 'int64', default=-1), "
        "Feature('emb', 'vector[2]'), Feature('tag', 'string', default='none')))]\n"
    )
    assert cli(["apply", str(tmp_path / "defs.py")], tmp_path / "home").returncode == 0
    write = (
        "from aiarch.features import FeatureStore\n"
        's = FeatureStore(f\'native://{__import__("os").environ["AIARCH_HOME"]}/online\')\n'
        "s.write('u', {'user': ['ann'], 'event_timestamp': [1], 'n': [2**53 + 1], "
        "'emb': [[0.5, 2.0]], 'tag': ['vip']})\n"
        "s.close()\n"
    )
    env = dict(os.environ, AIARCH_HOME=str(tmp_path / "home"))
    root = str(Path(aiarch.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    subprocess.run([sys.executable, "-c", write], env=env, check=True, timeout=120)
    r = cli(["get", "u:*", "--ids", "ann,bob", "--json"], tmp_path / "home")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["columns"] == ["u:n", "u:emb", "u:tag"]
    assert [row["values"] for row in out["rows"]] == [
        [2**53 + 1, [0.5, 2.0], "vip"],
        [-1, [0.0, 0.0], "none"],
    ]
    assert [row["status"] for row in out["rows"]] == ["present", "missing"]
