"""The README's Monitoring example runs as written and prints what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_monitoring_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    section = README.read_text().split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the Monitoring section has no python example"
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 10
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(example, str(README), "exec"), namespace)
    assert capsys.readouterr().out.split() == ["1.0", "True"]
    namespace["rt"].close()  # type: ignore[attr-defined]
