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


def test_feature_types_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text()
    section = text[text.index("## Online features") :]
    first, types = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:2]
    assert len(types.strip().splitlines()) <= 10
    monkeypatch.setenv("AIARCH_HOME", str(tmp_path))
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(
        compile(first.replace('"memory://"', '"memory://readme-types"'), str(README), "exec"),
        namespace,
    )
    exec(compile(types, str(README), "exec"), namespace)
    typed = namespace["typed"]
    assert typed["user:visits"].tolist() == [2**40 + 1, -1]  # type: ignore[index]
    assert typed["user:emb"].tolist() == [[0.5, 1.5], [0.0, 0.0]]  # type: ignore[index]
    assert typed["user:country"].tolist() == ["DE", ""]  # type: ignore[index]
    model_input = namespace["model_input"]
    # visits (cast), emb (2 columns), country ("DE" is index 1; the default "" is 2: unknown).
    np.testing.assert_array_equal(model_input, [[2.0**40, 0.5, 1.5, 1], [-1, 0, 0, 2]])
    assert namespace["status"].tolist() == [0, 2]  # type: ignore[attr-defined]
