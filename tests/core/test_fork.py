"""A forked child never uses, shuts down or waits for the parent's runtimes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import aiarch

    rt = aiarch.Runtime()
    rt.add_model("m", lambda x: x * 2, inputs=[aiarch.TensorSpec("x", "float32", (2,))])
    assert rt.infer_sync("m", np.ones((1, 2), np.float32)).tolist() == [[2.0, 2.0]]
    pid = os.fork()
    if pid == 0:
        try:
            rt.infer_sync("m", np.ones((1, 2), np.float32))
        except aiarch.UnavailableError as e:
            print("child:", e, flush=True)
        mine = aiarch.Runtime()  # a runtime made after the fork works
        mine.add_model("m", lambda x: x * 3, inputs=[aiarch.TensorSpec("x", "float32", (2,))])
        print("child infer:", mine.infer_sync("m", np.ones((1, 2), np.float32)).tolist(), flush=True)
        sys.exit(0)  # a normal exit: the at-exit close must not wait for the parent's threads
    _, status = os.waitpid(pid, 0)
    print("child exit:", os.waitstatus_to_exitcode(status), flush=True)
    print("parent infer:", rt.infer_sync("m", np.ones((1, 2), np.float32)).tolist(), flush=True)
    """
)


def test_forked_child_refuses_inherited_runtime_and_exits():
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "cannot be used in a forked child; create the Runtime after the fork" in out
    assert "child infer: [[3.0, 3.0]]" in out
    assert "child exit: 0" in out
    assert "parent infer: [[2.0, 2.0]]" in out
