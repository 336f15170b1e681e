"""Reads the instructions of a Dockerfile that a container runtime would execute at start-up."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class StartUp:
    """What `docker run IMAGE` runs, from the final stage of a Dockerfile."""

    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    env: dict[str, str]

    @property
    def command(self) -> list[str]:
        return [*self.entrypoint, *self.cmd]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _exec_form(value: str, what: str) -> list[str]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} must use the exec (JSON array) form, got {value!r}") from e
    if not (isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)):
        raise ValueError(f"{what} must be a JSON array of strings, got {value!r}")
    return parsed


def start_up(path: Path) -> StartUp:
    """ENTRYPOINT, CMD, HEALTHCHECK CMD and ENV of the last stage of `path`."""
    stage: list[tuple[str, str]] = []
    for word, rest in _instructions(path.read_text()):
        if word == "FROM":
            stage = []
        stage.append((word, rest))
    found = StartUp(entrypoint=[], cmd=[], healthcheck=[], env={})
    for word, rest in stage:
        if word == "ENTRYPOINT":
            found.entrypoint = _exec_form(rest, "ENTRYPOINT")
        elif word == "CMD":
            found.cmd = _exec_form(rest, "CMD")
        elif word == "HEALTHCHECK":
            _, _, command = rest.partition(" CMD ")
            found.healthcheck = _exec_form(command.strip(), "HEALTHCHECK CMD")
        elif word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                found.env[key] = value
    return found
