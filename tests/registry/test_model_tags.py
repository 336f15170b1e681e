"""Model-level tags and description: set, get, delete, search by them, CLI tables and JSON,
and the migration that adds them to an existing registry database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiarch.cli import main
from aiarch.errors import InvalidArgumentError
from aiarch.registry import GateFailedError, ModelNotFoundError, Registry
from aiarch.registry import db as registry_db


def _artifact(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(name.encode())
    return path


def _three_models(reg: Registry, tmp_path: Path) -> None:
    for model, versions in (("fraud", 2), ("churn", 1), ("ranking", 1)):
        for i in range(versions):
            reg.register(model, _artifact(tmp_path / "art", f"{model}{i}.onnx"), tags={"v": str(i)})
    reg.set_model_tag("fraud", "team", "risk")
    reg.set_model_tag("fraud", "tier", "1")
    reg.set_model_tag("churn", "team", "growth")
    reg.set_model_tag("ranking", "team", "risk")
    reg.set_model_description("fraud", "card fraud score, retrained weekly")


def test_set_get_delete_model_tags_and_description(reg: Registry, tmp_path: Path) -> None:
    _three_models(reg, tmp_path)
    fraud = reg.get_model("fraud")
    assert fraud.tags == {"team": "risk", "tier": "1"}
    assert fraud.description == "card fraud score, retrained weekly"
    assert (fraud.versions, fraud.latest) == (2, 2)

    reg.set_model_tag("fraud", "tier", 2)  # non-strings are stored as their JSON text
    reg.delete_model_tag("fraud", "team")
    reg.set_model_description("fraud", "")
    fraud = reg.get_model("fraud")
    assert (fraud.tags, fraud.description) == ({"tier": "2"}, "")
    # Model tags belong to the model, not to its versions.
    assert reg.get("fraud", 1).tags == {"v": "0"}
    assert {m.name: m.tags for m in reg.list_models()} == {
        "churn": {"team": "growth"},
        "fraud": {"tier": "2"},
        "ranking": {"team": "risk"},
    }

    with pytest.raises(ModelNotFoundError, match="has no tag 'team'; tags: tier"):
        reg.delete_model_tag("fraud", "team")
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        reg.set_model_tag("nope", "team", "risk")
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        reg.get_model("nope")
    with pytest.raises(InvalidArgumentError, match="keys must be non-empty strings"):
        reg.set_model_tag("fraud", "", "x")
    with pytest.raises(InvalidArgumentError, match="description must be a string"):
        reg.set_model_description("fraud", 3)  # type: ignore[arg-type]


def test_search_versions_by_model_tags_and_description(reg: Registry, tmp_path: Path) -> None:
    _three_models(reg, tmp_path)
    uris = lambda f, **kw: [v.uri for v in reg.search(f, **kw)]  # noqa: E731
    assert uris("model.tags.team = 'risk'") == [
        "models:/ranking/1",
        "models:/fraud/2",
        "models:/fraud/1",
    ]
    assert uris("model.tags.team = 'risk' and model.tags.tier = '1' and tags.v = '0'") == [
        "models:/fraud/1"
    ]
    assert uris("model.tags.team != 'risk'") == ["models:/churn/1"]
    assert uris("model.description like '%weekly%'") == ["models:/fraud/2", "models:/fraud/1"]
    assert uris("model.tags.missing = 'x'") == []
    assert uris("model.tags.team like 'r%'", order_by="model.tags.tier asc, version asc") == [
        "models:/fraud/1",
        "models:/fraud/2",
        "models:/ranking/1",  # no tier: NULLs sort last
    ]
    reg.set_model_tag("churn", "cost center", "42")
    assert uris("model.tags.`cost center` = '42'") == ["models:/churn/1"]


def test_list_models_filters_by_model_fields_only(reg: Registry, tmp_path: Path) -> None:
    _three_models(reg, tmp_path)
    names = lambda f: [m.name for m in reg.list_models(f)]  # noqa: E731
    assert names("model.tags.team = 'risk'") == ["fraud", "ranking"]
    assert names("model.tags.team = 'risk' and model.tags.tier = '1'") == ["fraud"]
    assert names("model.description like 'card%'") == ["fraud"]
    assert names("name != 'fraud'") == ["churn", "ranking"]
    with pytest.raises(InvalidArgumentError, match=r"tags\.v is a field of versions"):
        reg.list_models("tags.v = '0'")
    with pytest.raises(InvalidArgumentError, match=r"unknown field 'model\.owner'"):
        reg.list_models("model.owner = 'x'")


def test_promotion_gates_read_model_tags(reg: Registry, tmp_path: Path) -> None:
    _three_models(reg, tmp_path)
    reg.promote("fraud", 2, gates="model.tags.team = 'risk'")
    with pytest.raises(GateFailedError, match=r"model\.tags\.team = 'risk' \(actual: 'growth'\)"):
        reg.promote("churn", 1, gates="model.tags.team = 'risk'")


def test_migration_adds_model_tags_to_an_existing_database(
    registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A registry created by a release that knew only the first migration.
    monkeypatch.setattr(registry_db, "MIGRATIONS", registry_db.MIGRATIONS[:1])
    with Registry(registry_url, home=tmp_path / "home") as old:
        old.register("fraud", _artifact(tmp_path, "a.onnx"), tags={"task": "fraud"})
    monkeypatch.undo()
    with Registry(registry_url, home=tmp_path / "home") as new:
        assert new.get_model("fraud").description == ""
        new.set_model_tag("fraud", "team", "risk")
        assert [v.uri for v in new.search("model.tags.team = 'risk'")] == ["models:/fraud/1"]
        with new.db.tx() as tx:
            applied = [r[0] for r in tx.all("SELECT version FROM schema_migrations ORDER BY 1")]
        assert applied == [m[0] for m in registry_db.MIGRATIONS]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["models", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_models_cli_tags_and_description(
    registry_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIARCH_HOME", str(tmp_path / "home"))
    reg = ["--registry", registry_url]
    for name in ("fraud", "churn"):
        assert (
            _cli(capsys, "register", name, str(_artifact(tmp_path, f"{name}.onnx")), *reg)[0] == 0
        )

    code, out, _ = _cli(capsys, "tag", "fraud", "team=risk", "tier=1", *reg, "--json")
    assert code == 0 and json.loads(out)["tags"] == {"team": "risk", "tier": "1"}
    code, out, _ = _cli(capsys, "describe", "fraud", "--set", "card fraud score", *reg)
    assert code == 0 and "card fraud score" in out and '"team": "risk"' in out
    code, out, _ = _cli(capsys, "untag", "fraud", "tier", *reg, "--json")
    assert code == 0 and json.loads(out)["tags"] == {"team": "risk"}

    code, out, _ = _cli(capsys, "list", *reg)
    lines = out.strip().split("\n")
    assert lines[0].split() == ["NAME", "VERSIONS", "LATEST", "ALIASES", "TAGS", "DESCRIPTION"]
    assert lines[2].split() == ["fraud", "1", "1", "team=risk", "card", "fraud", "score"]
    code, out, _ = _cli(capsys, "list", "--filter", "model.tags.team = 'risk'", *reg, "--json")
    models = json.loads(out)
    assert code == 0 and [(m["name"], m["tags"], m["description"]) for m in models] == [
        ("fraud", {"team": "risk"}, "card fraud score")
    ]
    code, out, _ = _cli(capsys, "search", "model.tags.team = 'risk'", *reg, "--json")
    assert code == 0 and [v["uri"] for v in json.loads(out)["versions"]] == ["models:/fraud/1"]

    code, _, err = _cli(capsys, "untag", "fraud", "tier", *reg)
    assert code == 2 and "has no tag 'tier'; tags: team" in err
    code, _, err = _cli(capsys, "list", "--filter", "metrics.auc > 0.5", *reg)
    assert code == 2 and "metrics.auc is a field of versions" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as exited:
        _cli(capsys, "tag", "fraud", "team", *reg)
    assert exited.value.code == 2 and "expected KEY=VALUE, got 'team'" in capsys.readouterr().err
