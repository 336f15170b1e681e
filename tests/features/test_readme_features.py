"""The README's "Online features" example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent.parent / "README.md"


def test_online_features_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text()
    section = text[text.index("## Online features") :]
    example = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    assert len(example.strip().splitlines()) <= 10
    monkeypatch.setenv("AIARCH_HOME", str(tmp_path))
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(example, str(README), "exec"), namespace)
    values, status = namespace["values"], namespace["status"]
    np.testing.assert_array_equal(values, [[310.5, 3.0], [0.0, -1.0]])
    assert status.tolist() == [0, 2]  # type: ignore[attr-defined]
    assert (tmp_path / "features.db").exists()
