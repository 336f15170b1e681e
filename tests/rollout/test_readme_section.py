"""The README's "Progressive rollout" section stays accurate: its commands parse with the CLI
as written, and its Python example compiles against the names the package exports."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import aiarch.rollout
from aiarch.cli import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    return README.read_text().split("## Progressive rollout", 1)[1].split("\n## ", 1)[0]


def test_every_command_of_the_section_parses() -> None:
    block = re.findall(r"```bash\n(.*?)```", _section(), flags=re.S)[0]
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert len(commands) >= 8
    parser = build_parser()
    seen = set()
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "aiarch", command
        args = parser.parse_args(argv[1:])  # SystemExit (a test failure) on a wrong flag
        seen.add(getattr(args, "rollout_command", args.command))
    assert {"serve", "start", "run", "status", "pause", "resume", "abort"} <= seen


def test_the_python_example_uses_exported_names() -> None:
    example = re.findall(r"```python\n(.*?)```", _section(), flags=re.S)[0]
    assert len(example.strip().splitlines()) <= 10
    compile(example, str(README), "exec")
    for name in re.findall(r"from aiarch\.rollout import (.*)", example)[0].split(","):
        assert name.strip() in aiarch.rollout.__all__
    fields = set(aiarch.rollout.Thresholds.__dataclass_fields__)
    assert set(re.findall(r"(\w+)=", example.split("Thresholds(", 1)[1].split(")")[0])) <= fields
