"""The README's "Model registry" example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import write_model

README = Path(__file__).resolve().parents[2] / "README.md"


def test_registry_readme_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    section = README.read_text().split("## Model registry", 1)[1].split("\n## ", 1)[0]
    example = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    assert len(example.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AIARCH_HOME", raising=False)
    monkeypatch.delenv("AIARCH_REGISTRY", raising=False)
    write_model(tmp_path, 2.0).rename(tmp_path / "model.py")
    exec(compile(example, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out.split("\n")
    assert out[:2] == ["models:/fraud/1", "['models:/fraud/1']"]
    assert (tmp_path / ".aiarch" / "registry.db").is_file()
