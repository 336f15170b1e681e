"""A failing rank's error file is replaced whole, never written in place: torch's launcher reads
the error files of failed ranks while a peer may still be writing its own, and a file it finds
empty or half written fails the job with a JSONDecodeError instead of naming the failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import os, sys

    target = os.path.abspath(os.environ["TORCHELASTIC_ERROR_FILE"])
    writes = []

    def audit(event, args):
        # Any open of the error file itself for writing could be seen half written.
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(args[0]))
            mode, flags = args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR)
            )
            if path == target and writing:
                writes.append(event)
        elif event == "os.rename" and os.path.abspath(os.fsdecode(args[1])) == target:
            writes.append("rename")

    sys.addaudithook(audit)
    from aiarch.train.worker import _install_error_recorder

    _install_error_recorder()
    import atexit

    atexit.register(lambda: print("WRITES", ",".join(writes), flush=True))
    raise RuntimeError("rank failed on purpose")
    """
)


def test_the_error_file_is_renamed_into_place_with_the_exception(tmp_path: Path) -> None:
    error_file = tmp_path / "error.json"
    env = {**os.environ, "TORCHELASTIC_ERROR_FILE": str(error_file)}
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 1
    assert "RuntimeError: rank failed on purpose" in r.stderr  # the usual traceback still shows
    writes = [line for line in r.stdout.splitlines() if line.startswith("WRITES ")]
    assert writes == ["WRITES rename"], r.stdout
    data = json.loads(error_file.read_text())
    assert data["message"]["message"] == "RuntimeError: rank failed on purpose"
    assert data["message"]["extraInfo"]["py_callstack"].startswith("Traceback (most recent call")
    assert int(data["message"]["extraInfo"]["timestamp"]) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["error.json"]  # no temporary left behind
