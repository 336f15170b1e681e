"""Faults with real processes: concurrent start-up, concurrent promotions, many concurrent
writers on SQLite, and a registration killed with SIGKILL."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aiarch.registry import Registry
from aiarch.registry.db import MIGRATIONS

from .conftest import child_env


def _run_all(scripts: list[str], timeout: float) -> list[subprocess.CompletedProcess[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(s)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for s in scripts
    ]
    results = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def test_migrations_run_once_when_processes_start_together(
    registry_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    start_at = time.time() + 1.5  # all processes open the empty database at the same moment
    script = f"""
        import time
        from aiarch.registry import Registry
        time.sleep(max(0.0, {start_at} - time.time()))
        reg = Registry({registry_url!r}, home={str(home)!r})
        print(reg.db.migrate())
    """
    results = _run_all([script] * 6, timeout=90)
    for r in results:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(MIGRATIONS[-1][0])
    reg = Registry(registry_url, home=home)
    with reg.db.tx() as tx:
        rows = tx.all("SELECT version FROM schema_migrations ORDER BY version")
    reg.close()
    assert rows == [(number,) for number, _, _ in MIGRATIONS]


def test_concurrent_promotions_exactly_one_wins(registry_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    reg = Registry(registry_url, home=home)
    art = tmp_path / "m.onnx"
    n = 6
    for i in range(n + 1):
        art.write_bytes(bytes([i]))
        reg.register("m", art)
    reg.promote("m", 1)
    script = f"""
        import sys
        from aiarch.registry import Registry, ConflictError
        reg = Registry({registry_url!r}, home={str(home)!r})
        current = reg.alias_version("m", "production")
        print("read", current, flush=True)
        sys.stdin.readline()  # every process has read version 1 before any promotes
        try:
            reg.promote("m", int(sys.argv[1]), expected_current=current)
            print("won", flush=True)
        except ConflictError as e:
            print("conflict:", e, flush=True)
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), str(v)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for v in range(2, n + 2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "read 1"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    outcomes = [out.strip() for out, _ in results]
    winners = [i for i, o in enumerate(outcomes) if o == "won"]
    assert len(winners) == 1, outcomes
    assert all(o.startswith("conflict: alias 'production'") for o in outcomes if o != "won")
    winner_version = winners[0] + 2
    assert reg.get("m", alias="production").version == winner_version
    history = reg.history("m", "production")
    assert [(c.from_version, c.to_version) for c in history] == [(None, 1), (1, winner_version)]
    reg.close()


def test_sixteen_processes_register_on_sqlite_without_lock_errors(tmp_path: Path) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    procs, per_proc = 16, 200
    scripts = [
        f"""
        from pathlib import Path
        from aiarch.registry import Registry
        reg = Registry({url!r}, home={str(home)!r})
        src = Path({str(tmp_path)!r}) / "src{p}"
        src.mkdir()
        for i in range({per_proc}):
            f = src / f"a{{i}}.bin"
            f.write_bytes(b"p{p}-%d" % i)
            reg.register("shared", f, format="blob", metrics={{"i": i}}, tags={{"proc": "{p}"}})
        print("done")
        """
        for p in range(procs)
    ]
    results = _run_all(scripts, timeout=240)
    errors = [r.stderr for r in results if r.returncode != 0]
    assert not errors, errors[0]
    reg = Registry(url, home=home)
    versions = sorted(v.version for v in reg.list_versions("shared"))
    assert versions == list(range(1, procs * per_proc + 1))
    per = {str(p): len(reg.search(f"tags.proc = '{p}'", limit=1000)) for p in range(procs)}
    assert set(per.values()) == {per_proc}
    reg.close()


def _store_is_consistent(reg: Registry) -> None:
    """Every object is named by its content; every version's artifact verifies."""
    for obj in (p for p in reg.store.objects.rglob("*") if p.is_file()):
        assert hashlib.sha256(obj.read_bytes()).hexdigest() == obj.name
    for mv in reg.search(limit=10_000):
        reg.verify(mv.name, mv.version)


def test_sigkill_during_register_leaves_no_half_version(registry_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    # Each registration writes 24 MiB of new content (3 x 8 MiB: each copy takes a while), so
    # every one copies (nothing dedupes).
    script = f"""
        import os, sys
        from pathlib import Path
        from aiarch.registry import Registry
        reg = Registry({registry_url!r}, home={str(home)!r})
        folder = Path({str(tmp_path)!r}) / f"big{{os.getpid()}}"
        folder.mkdir()
        print("ready", flush=True)
        sys.stdin.readline()
        i = 0
        while True:
            for k in range(3):
                (folder / f"shard{{k:02d}}.bin").write_bytes(os.urandom(8 << 20))
            reg.register("big", folder, format="blob", tags={{"i": str(i)}})
            i += 1
    """
    tmp_dir = home / "artifacts" / "tmp"
    leftovers: set[str] = set()  # temporary entries of interrupted copies
    # "copy": kill as soon as a new temporary file exists (inside the copy, every time);
    # a number: kill after that many seconds (any phase: hashing, copying, the transaction).
    for when in ("copy", 0.05, "copy", 0.3, "copy", 0.8):
        p = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:
            assert p.stdout is not None and p.stdin is not None
            assert p.stdout.readline().strip() == "ready"
            p.stdin.write("go\n")
            p.stdin.flush()
            if when == "copy":
                deadline = time.monotonic() + 30
                while not ({e.name for e in tmp_dir.iterdir()} - leftovers):
                    assert time.monotonic() < deadline, "the registration never started copying"
                    time.sleep(0.001)
            else:
                time.sleep(float(when))
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        assert p.returncode == -signal.SIGKILL
        reg = Registry(registry_url, home=home)
        leftovers.update(e.name for e in reg.store.tmp.iterdir())
        _store_is_consistent(reg)
        versions = [v.version for v in reg.list_versions("big")] if reg.list_models() else []
        assert sorted(versions) == list(range(1, len(versions) + 1))
        reg.close()
    assert len(leftovers) >= 3  # the three "copy" kills each left a temporary file
    reg = Registry(registry_url, home=home)
    removed = reg.sweep_store()
    assert not any(reg.store.tmp.iterdir()) and removed >= len(leftovers)
    before = len(reg.list_versions("big")) if reg.list_models() else 0
    folder = tmp_path / "after"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"after the crashes")
    assert reg.register("big", folder, format="blob").version == before + 1
    _store_is_consistent(reg)
    reg.close()


def test_register_after_failed_copy_keeps_numbers_contiguous(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = tmp_path / "a.onnx"
    art.write_bytes(b"a")
    reg.register("m", art)

    def broken_put(source: object) -> object:
        raise OSError("disk full")

    monkeypatch.setattr(reg.store, "put", broken_put)
    for _ in range(3):
        with pytest.raises(OSError, match="disk full"):
            reg.register("m", art)
    monkeypatch.undo()
    assert reg.register("m", art).version == 2
