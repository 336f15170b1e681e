"""The README's code example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs(capsys):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 10
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(example, str(README), "exec"), namespace)
    rt = namespace["rt"]
    assert rt.stats("score")["requests"]["success"] == 2  # type: ignore[attr-defined]
    assert "[[8.]]" in capsys.readouterr().out
    rt.close()  # type: ignore[attr-defined]
