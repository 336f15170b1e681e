"""`aiarch models ...` end to end: table and JSON output, exit codes, error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiarch.cli import main

from .conftest import write_model


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["models", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_models_cli_lifecycle(
    registry_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIARCH_HOME", str(tmp_path / "home"))
    reg = ["--registry", registry_url]
    model = write_model(tmp_path / "src", 2.0)
    code, out, _ = _run(
        capsys,
        "register",
        "fraud",
        f"{model}:predict",
        "--metric",
        "auc=0.93",
        "--tag",
        "task=fraud",
        "--param",
        "lr=0.01",
        *reg,
        "--json",
    )
    assert code == 0
    v1 = json.loads(out)
    assert (v1["version"], v1["format"], v1["entry"], v1["uri"]) == (
        1,
        "python",
        "predict",
        "models:/fraud/1",
    )
    other = tmp_path / "m.onnx"
    other.write_bytes(b"onnx bytes")
    assert _run(capsys, "register", "fraud", str(other), "--metric", "auc=0.80", *reg)[0] == 0

    code, out, _ = _run(capsys, "list", *reg)
    assert code == 0 and out.split("\n")[0].split()[:4] == ["NAME", "VERSIONS", "LATEST", "ALIASES"]
    assert out.split("\n")[1].split() == ["fraud", "2", "2"]

    code, out, err = _run(capsys, "promote", "fraud", "2", "--gate", "metrics.auc >= 0.9", *reg)
    assert code == 1 and "fails promotion gate" in err and "actual: 0.8" in err
    assert _run(capsys, "promote", "fraud", "1", "--gate", "metrics.auc >= 0.9", *reg)[0] == 0
    code, _, err = _run(capsys, "promote", "fraud", "2", "--expect", "2", *reg)
    assert code == 1 and "points at version 1, expected version 2" in err
    assert _run(capsys, "promote", "fraud", "2", "--expect", "1", *reg)[0] == 0

    code, out, _ = _run(capsys, "show", "fraud@production", *reg, "--json")
    assert code == 0 and json.loads(out)["version"] == 2
    code, out, _ = _run(
        capsys, "search", "metrics.auc >= 0.9 and tags.task = 'fraud'", *reg, "--json"
    )
    assert code == 0 and [v["version"] for v in json.loads(out)["versions"]] == [1]
    code, out, _ = _run(capsys, "search", "", "--order-by", "metrics.auc desc", *reg)
    lines = out.strip().split("\n")
    assert lines[0].split()[:2] == ["NAME", "VERSION"] and [ln.split()[1] for ln in lines[1:]] == [
        "1",
        "2",
    ]

    code, out, _ = _run(capsys, "rollback", "fraud", *reg)
    assert code == 0 and "2 → 1 (rollback)" in out
    code, out, _ = _run(capsys, "history", "fraud", *reg, "--json")
    assert [(c["action"], c["from_version"], c["to_version"]) for c in json.loads(out)] == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("rollback", 2, 1),
    ]
    code, _, err = _run(capsys, "delete", "fraud", "1", *reg)
    assert code == 1 and "production" in err
    assert _run(capsys, "archive", "fraud", "2", *reg)[0] == 0
    code, out, _ = _run(capsys, "verify", "fraud/1", *reg)
    assert code == 0 and out.startswith("ok: models:/fraud/1")
    code, _, err = _run(capsys, "show", "fraud/7", *reg)
    assert code == 2 and "no version 7; versions: 1-2" in err
    code, _, err = _run(capsys, "search", "metrics.auc >> 1", *reg)
    assert code == 2 and "expected a number or a quoted string" in err
    code, _, err = _run(capsys, "register", "fraud", str(tmp_path / "missing.onnx"), *reg)
    assert code == 2 and "does not exist" in err
    assert "Traceback" not in err


def test_models_cli_verify_detects_tampering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIARCH_HOME", str(tmp_path / "home"))
    art = tmp_path / "m.onnx"
    art.write_bytes(b"weights")
    code, out, _ = _run(capsys, "register", "m", str(art), "--json")
    path = Path(json.loads(out)["artifact_path"])
    path.chmod(0o644)
    path.write_bytes(b"evil")
    code, _, err = _run(capsys, "verify", "m/1")
    assert code == 1 and "was modified" in err


def test_models_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["models", "--help"])
    assert e.value.code == 0
    assert "aiarch models promote fraud 3 --to production" in capsys.readouterr().out
