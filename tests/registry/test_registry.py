"""The registry API on SQLite and PostgreSQL: versions, store, aliases, search, faults."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from aiarch.errors import InvalidArgumentError, NotFoundError
from aiarch.registry import (
    ConflictError,
    GateFailedError,
    IntegrityError,
    ModelNotFoundError,
    ModelVersion,
    Registry,
    parse_ref,
)
from aiarch.registry.filters import parse_filter
from aiarch.registry.search import matches

from .conftest import write_model


def _blob(folder: Path, name: str, content: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_bytes(content)
    return p


def test_register_assigns_versions_and_stores_by_content(reg: Registry, tmp_path: Path) -> None:
    model = write_model(tmp_path / "src", 2.0)
    mv1 = reg.register("fraud", f"{model}:predict", metrics={"auc": 0.91}, tags={"task": "fraud"})
    mv2 = reg.register("fraud", f"{model}:predict")
    other = reg.register("churn", f"{model}:predict")
    assert (mv1.version, mv2.version, other.version) == (1, 2, 1)
    assert isinstance(mv1, ModelVersion) and mv1.uri == "models:/fraud/1"
    assert mv1.format == "python" and mv1.entry == "predict"
    assert mv1.digest == mv2.digest  # same content, one stored artifact
    assert mv1.artifact_path.read_bytes() == model.read_bytes()
    assert mv1.artifact_path.is_relative_to(reg.store.root)
    assert mv1.signature == {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [4]}],
    }
    # Editing the source after registering does not change the stored version.
    model.write_text("broken")
    assert reg.open("fraud", 1).artifact_path.read_bytes() != b"broken"
    got = reg.get("fraud", 1)
    assert got.metrics == {"auc": 0.91} and got.tags == {"task": "fraud"}
    assert got.digest == mv1.digest and got.created_by


@pytest.mark.parametrize(
    ("suffix", "fmt"),
    [(".onnx", "onnx"), (".pt2", "torch_export"), (".pt", "torchscript"), (".py", "python")],
)
def test_format_is_inferred_from_the_suffix(
    reg: Registry, tmp_path: Path, suffix: str, fmt: str
) -> None:
    mv = reg.register("m", _blob(tmp_path, f"model{suffix}", b"not a real model"))
    assert mv.format == fmt and mv.entry is None and mv.signature is None


def test_folder_artifact_and_bad_paths(reg: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    _blob(folder / "sub", "weights.bin", os.urandom(1000))
    _blob(folder, "config.json", b"{}")
    mv = reg.register("m", folder, format="custom")
    assert mv.artifact_path.is_dir()
    assert (mv.artifact_path / "sub" / "weights.bin").read_bytes() == (
        folder / "sub" / "weights.bin"
    ).read_bytes()
    assert reg.verify("m", mv.version).digest == mv.digest
    with pytest.raises(InvalidArgumentError, match="cannot infer the format of folder"):
        reg.register("m", folder)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        reg.register("m", tmp_path / "missing.onnx")
    with pytest.raises(InvalidArgumentError, match="known suffixes"):
        reg.register("m", _blob(tmp_path, "model.xyz", b"x"))
    with pytest.raises(InvalidArgumentError, match="invalid model name"):
        reg.register("../evil", _blob(tmp_path, "a.onnx", b"x"))
    with pytest.raises(InvalidArgumentError, match=r"metrics\.auc must be a number"):
        reg.register("m", _blob(tmp_path, "a.onnx", b"x"), metrics={"auc": "high"})
    assert [v.version for v in reg.list_versions("m")] == [1]  # failures left nothing


def test_resolve_all_reference_forms(reg: Registry, tmp_path: Path) -> None:
    for i in range(3):
        reg.register("fraud", _blob(tmp_path, f"v{i}.onnx", bytes([i])))
    reg.set_alias("fraud", "production", 2)
    for ref, version in [
        ("models:/fraud/3", 3),
        ("models:/fraud@production", 2),
        ("models:/fraud/latest", 3),
        ("fraud@production", 2),
        ("fraud/1", 1),
        ("fraud", 3),
    ]:
        assert reg.resolve(ref).version == version, ref
    assert reg.get("fraud", alias="production").aliases == ("production",)
    with pytest.raises(InvalidArgumentError, match="expected models:/NAME/VERSION"):
        parse_ref("models:/fraud/zero")


def test_unknown_names_list_what_exists(reg: Registry, tmp_path: Path) -> None:
    reg.register("fraud", _blob(tmp_path, "a.onnx", b"a"))
    reg.register("fraud", _blob(tmp_path, "b.onnx", b"b"))
    reg.set_alias("fraud", "staging", 1)
    with pytest.raises(ModelNotFoundError, match=r"no model named 'frod'.*models: fraud"):
        reg.get("frod")
    with pytest.raises(NotFoundError, match=r"no version 7; versions: 1-2; aliases: staging → 1"):
        reg.get("fraud", 7)
    with pytest.raises(ModelNotFoundError, match=r"no alias 'production'.*staging → 1"):
        reg.resolve("fraud@production")


def test_store_rejects_tampering_on_open(reg: Registry, tmp_path: Path) -> None:
    mv = reg.register("m", _blob(tmp_path, "a.onnx", b"original"))
    assert reg.open("m", 1).digest == mv.digest
    path = mv.artifact_path
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="was modified"):
        reg.open("m", 1)
    with pytest.raises(IntegrityError):
        reg.verify("m", 1)
    folder = tmp_path / "dir"
    _blob(folder, "w.bin", b"weights")
    mv2 = reg.register("d", folder, format="custom")
    _blob(mv2.artifact_path, "extra.bin", b"injected")
    with pytest.raises(IntegrityError, match=r"unexpected file 'extra\.bin'"):
        reg.open("d", 1)
    (mv2.artifact_path / "extra.bin").unlink()
    os.chmod(mv2.artifact_path / "w.bin", 0o644)
    (mv2.artifact_path / "w.bin").unlink()
    with pytest.raises(IntegrityError, match=r"'w\.bin' is missing"):
        reg.open("d", 1)


def test_aliases_compare_and_swap_with_history(reg: Registry, tmp_path: Path) -> None:
    for i in range(3):
        reg.register("m", _blob(tmp_path, f"{i}.onnx", bytes([i])))
    c = reg.set_alias("m", "production", 1, expected_current=None, reason="first")
    assert c is not None and (c.from_version, c.to_version) == (None, 1)
    with pytest.raises(ConflictError, match="points at version 1, expected nothing"):
        reg.set_alias("m", "production", 2, expected_current=None)
    with pytest.raises(ConflictError, match="expected version 3"):
        reg.set_alias("m", "production", 2, expected_current=3)
    reg.set_alias("m", "production", 2, expected_current=1)
    assert reg.set_alias("m", "production", 2) is None  # already there: no history entry
    with pytest.raises(ModelNotFoundError, match="no version 9"):
        reg.set_alias("m", "production", 9)
    with pytest.raises(InvalidArgumentError, match="'latest' is reserved"):
        reg.set_alias("m", "latest", 1)
    h = reg.history("m")
    assert [(x.alias, x.action, x.from_version, x.to_version, x.reason) for x in h] == [
        ("production", "set", None, 1, "first"),
        ("production", "set", 1, 2, ""),
    ]
    assert h[0].actor and h[0].at <= h[1].at and h[0].id < h[1].id


def test_promote_gates_rollback_and_history(reg: Registry, tmp_path: Path) -> None:
    aucs = [0.91, 0.85, 0.95, 0.97]
    for i, auc in enumerate(aucs):
        reg.register("m", _blob(tmp_path, f"{i}.onnx", bytes([i])), metrics={"auc": auc})
    gate = "metrics.auc >= 0.9"
    reg.promote("m", 1, gates=gate)
    with pytest.raises(GateFailedError, match=r"metrics.auc >= 0.9 \(actual: 0.85\)"):
        reg.promote("m", 2, gates=[gate])
    with pytest.raises(GateFailedError, match="actual: None"):
        reg.promote("m", 3, gates="metrics.recall > 0.5")
    reg.promote("m", 3, gates=gate)
    reg.promote("m", 4, gates=gate)
    assert reg.get("m", alias="production").version == 4
    assert reg.rollback("m").to_version == 3
    assert reg.rollback("m").to_version == 1  # walks back past earlier promotions
    with pytest.raises(ConflictError, match="no earlier version"):
        reg.rollback("m")
    reg.promote("m", 4)
    actions = [(c.action, c.from_version, c.to_version) for c in reg.history("m", "production")]
    assert actions == [
        ("promote", None, 1),
        ("promote", 1, 3),
        ("promote", 3, 4),
        ("rollback", 4, 3),
        ("rollback", 3, 1),
        ("promote", 1, 4),
    ]
    assert reg.rollback("m").to_version == 1


def test_rollback_refuses_a_tampered_target(reg: Registry, tmp_path: Path) -> None:
    v1 = reg.register("m", _blob(tmp_path, "1.onnx", b"one"))
    reg.register("m", _blob(tmp_path, "2.onnx", b"two"))
    reg.promote("m", 1)
    reg.promote("m", 2)
    os.chmod(v1.artifact_path, 0o644)
    v1.artifact_path.write_bytes(b"evil")
    with pytest.raises(IntegrityError):
        reg.rollback("m")
    assert reg.get("m", alias="production").version == 2


def test_archive_and_delete_refuse_aliased_versions(reg: Registry, tmp_path: Path) -> None:
    for i in range(3):
        reg.register("m", _blob(tmp_path, f"{i}.onnx", bytes([i])))
    reg.promote("m", 3)
    with pytest.raises(ConflictError, match="alias\\(es\\) production point at it"):
        reg.delete("m", 3)
    with pytest.raises(ConflictError, match="production"):
        reg.archive("m", 3)
    assert reg.archive("m", 2).status == "archived"
    with pytest.raises(ConflictError, match="archived"):
        reg.promote("m", 2)
    path = reg.get("m", 1).artifact_path
    reg.delete("m", 1)
    assert not path.exists()
    with pytest.raises(ModelNotFoundError, match="versions: 2-3"):
        reg.get("m", 1)
    reg.promote("m", 3)  # no-op, still fine
    reg.set_alias("m", "production", 3)
    reg.delete("m", 2)
    # A deleted number is never handed out again; the latest skips archived versions.
    assert reg.register("m", _blob(tmp_path, "n.onnx", b"new")).version == 4
    assert [v.version for v in reg.list_versions("m")] == [4, 3]
    summary = {s.name: s for s in reg.list_models()}["m"]
    assert (summary.versions, summary.latest, summary.aliases) == (2, 4, {"production": 3})


def test_reference_profile_is_stored_with_the_version(reg: Registry, tmp_path: Path) -> None:
    class Profile:
        def to_bytes(self) -> bytes:
            return b"\x00profile\xff" * 100

    reg.register("m", _blob(tmp_path, "a.onnx", b"a"), reference=Profile())
    reg.register("m", _blob(tmp_path, "b.onnx", b"b"), reference=b"raw")
    reg.register("m", _blob(tmp_path, "c.onnx", b"c"))
    assert reg.load_reference("m", 1) == b"\x00profile\xff" * 100
    assert reg.load_reference("m", 2) == b"raw"
    assert reg.load_reference("m", 3) is None
    with pytest.raises(InvalidArgumentError, match="to_bytes"):
        reg.register("m", _blob(tmp_path, "d.onnx", b"d"), reference=42)


def test_watch_sees_alias_moves(make_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    writer, reader = make_registry(), make_registry()
    for i in range(2):
        writer.register("m", _blob(tmp_path, f"{i}.onnx", bytes([i])))
    watch = reader.watch("m", "production")
    counter = reader.change_counter("m")
    assert watch.version is None and watch.poll() is None
    writer.promote("m", 1)
    assert watch.poll() == 1 and watch.poll() is None
    writer.promote("m", 2)
    assert watch.poll() == 2
    assert reader.change_counter("m") == counter + 2


def test_search_matches_a_python_scan(reg: Registry, tmp_path: Path) -> None:
    rng = random.Random(7)
    art = _blob(tmp_path, "a.onnx", b"a")
    for i in range(60):
        reg.register(
            f"model{i % 6}",
            art,
            metrics={"auc": round(rng.uniform(0.5, 1.0), 3), "loss": rng.random()},
            params={"opt": rng.choice(["adam", "sgd"]), "layers": str(rng.randint(1, 4))},
            tags={"task": rng.choice(["fraud", "churn", "ranking"]), "team": "risk"},
        )
    reg.optimize()  # planner statistics: the plans change, the answers must not
    everything = reg.search(limit=1000)
    assert len(everything) == 60
    filters = [
        "metrics.auc >= 0.8 and tags.task = 'fraud' and params.opt = 'adam'",
        "metrics.loss < 0.5 and tags.task != 'churn'",
        "tags.task like 'fr%' and params.layers >= '3'",
        "name = 'model3' and version > 2",
        "format = 'onnx' and metrics.auc > 0.95",
        "tags.team = 'risk'",
        "tags.missing = 'x'",
    ]
    for f in filters:
        conds = parse_filter(f)
        expected = {(m.name, m.version) for m in everything if matches(m, conds)}
        got = reg.search(f, limit=1000)
        assert {(m.name, m.version) for m in got} == expected, f
    top = reg.search("tags.task = 'fraud'", order_by="metrics.auc desc", limit=5)
    aucs = [m.metrics["auc"] for m in top]
    assert aucs == sorted(aucs, reverse=True) and len(top) == 5
    fraud = [m for m in everything if m.tags["task"] == "fraud"]
    assert aucs[0] == max(m.metrics["auc"] for m in fraud)
    ordered = reg.search(order_by="name asc, version desc", limit=1000)
    assert [(m.name, -m.version) for m in ordered] == sorted((m.name, -m.version) for m in ordered)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics.auc >> 1", "expected a number or a quoted string"),
        ("metrics.auc >= 'high'", "compares with a number"),
        ("tags.task = fraud", "expected a number or a quoted string"),
        ("tags.task = 3", "quote the value"),
        ("weights.x = 1", "unknown field 'weights.x'"),
        ("metrics.auc > 1 or tags.a = 'b'", "only 'and' is supported"),
        ("metrics.auc >", "incomplete condition"),
        ("metrics.auc like 'x'", "like applies to strings"),
    ],
)
def test_bad_filters_say_what_is_expected(reg: Registry, text: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        reg.search(text)


def test_store_content_is_named_by_its_hash(reg: Registry, tmp_path: Path) -> None:
    reg.register("m", _blob(tmp_path, "a.onnx", b"content"))
    objects = [p for p in reg.store.objects.rglob("*") if p.is_file()]
    assert len(objects) == 1
    assert objects[0].name == hashlib.sha256(b"content").hexdigest()
