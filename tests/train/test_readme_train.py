"""The README's training script runs as written under `aiarch train --nproc 2`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .conftest import Jobs

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_training_script_runs_on_two_processes(jobs: Jobs):
    text = README.read_text()
    section = text[text.index("## Distributed training") :]
    section = section[: section.index("\n## ", 1)]
    (script,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    path = jobs.cwd / "train.py"
    path.write_text(script)

    finished = jobs.cli(str(path), "--nproc", "2", "--json").wait()
    assert finished.returncode == 0, finished.stderr
    result = finished.json()
    assert result["world_size"] == 2 and result["restarts"] == 0
    assert [e["epoch"] for e in result["epochs"]] == [0, 1, 2, 3, 4]
    assert result["epochs"][-1]["loss"] < result["epochs"][0]["loss"]
    # one progress line per epoch, printed by the main rank only (on stderr under --json)
    assert len(re.findall(r"^epoch \d/5 ", finished.stderr, flags=re.M)) == 5
    pointer = json.loads((Path(result["run_dir"]) / "checkpoints" / "latest.json").read_text())
    assert pointer["step"] == 4
