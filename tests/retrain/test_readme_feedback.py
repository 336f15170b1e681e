"""The README's "Feedback and retraining" section: its example runs and prints what it says,
its server table and its policy parse as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    return README.read_text().split("## Feedback and retraining", 1)[1].split("\n## ", 1)[0]


def test_feedback_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    example = re.findall(r"```python\n(.*?)```", _section(), flags=re.S)[0]
    assert len(example.strip().splitlines()) <= 12
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(example, str(README), "exec"), namespace)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "FeedbackResult(joined=2, unknown=1, late=0)",
        "{'1': {'metric': 'auc', 'value': 1.0, 'labels': 2}}",
    ]
    namespace["rt"].close()  # type: ignore[attr-defined]


def test_server_table_and_policy_parse(tmp_path: Path) -> None:
    from aiarch.retrain import TRIGGER_KINDS, policy_from_dict
    from aiarch.serving.config import load_config_file

    serve, policy = re.findall(r"```toml\n(.*?)```", _section(), flags=re.S)[:2]
    cfg = tmp_path / "serve.toml"
    cfg.write_text(serve)
    _, models = load_config_file(cfg)
    assert models[0].monitor["feedback"]["metric"] == "auc"  # type: ignore[index]
    p = policy_from_dict(tomllib.loads(policy), tmp_path)
    assert [t.kind for t in p.triggers] == list(TRIGGER_KINDS)
    assert p.promote_alias == "candidate" and p.gates.vs_production == {"auc": 0.0}
    assert p.train.script == str(tmp_path / "train.py")
    assert p.rollout is not None and p.rollout.steps == (5, 25, 50, 100)
    assert p.rollout.servers == ("http://127.0.0.1:8000",) and p.rollout.drive
    assert p.rollout.limits().max_quality_drop == 0.02
