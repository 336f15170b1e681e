"""Flask with aiarch embedded under gunicorn's pre-fork, and the per-process Runtime rule."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("flask", reason="flask is not installed (the 'embed' extra)")

import aiarch
from aiarch.integrations import ServiceRuntime

from .conftest import EXAMPLES, PY, get, metric, post_json


@pytest.fixture
def gunicorn_app(app_process):
    pytest.importorskip("gunicorn", reason="gunicorn is not installed (the 'embed' extra)")
    # --preload imports the app module once in the parent, before the fork: the Runtime must
    # still be created in each worker.
    return app_process(
        [PY, "-m", "gunicorn", "--workers", "2", "--threads", "8", "--preload",
         "--chdir", str(EXAMPLES), "--bind", "127.0.0.1:{port}", "flask_app:app"]
    )  # fmt: skip


def test_two_gunicorn_workers_each_create_their_own_runtime(gunicorn_app):
    url = gunicorn_app.base
    master = gunicorn_app.proc.pid
    seen: dict[int, dict] = {}
    with ThreadPoolExecutor(16) as pool:
        for _ in range(25):  # new connections spread over the workers; stop once both answered
            for status, body in pool.map(lambda _: get(f"{url}/healthz"), range(32)):
                assert status == 200
                h = json.loads(body)
                seen[h["pid"]] = h
            if len(seen) == 2:
                break
    assert len(seen) == 2, f"only worker(s) {sorted(seen)} answered"
    for pid, h in seen.items():
        assert pid != master
        assert h["runtime_pid"] == pid  # created after the fork, in the worker itself
        assert h["models"] == {"classify": {"version": "1", "ready": True}}


def test_flask_example_predicts_with_threads_sharing_batches(gunicorn_app):
    url = gunicorn_app.base
    import sys

    sys.path.insert(0, str(EXAMPLES))
    try:
        import flask_app
    finally:
        sys.path.remove(str(EXAMPLES))
    rows = np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: post_json(f"{url}/predict", {"x": r.tolist()}), rows))
    expected = flask_app.classify(rows)
    for (status, body), want in zip(answers, expected):
        assert status == 200, body
        np.testing.assert_allclose(body["scores"], want, rtol=1e-5)
        assert body["label"] == int(want.argmax())

    status, body = post_json(f"{url}/predict", {"x": [1.0, 2.0]})
    assert status == 400 and "expected shape [-1, 4]" in body["error"]
    status, body = post_json(f"{url}/predict", {"x": ["a", 1, 2, 3]})
    assert status == 400 and "cannot convert" in body["error"]
    status, body = post_json(f"{url}/predict", [1, 2])
    assert status == 400 and "expected a JSON object" in body["error"]

    status, text = get(f"{url}/metrics")
    assert status == 200
    assert metric(text, "aiarch_model_ready", model="classify", version="1") == 1
    assert gunicorn_app.terminate() == 0


def _double_service() -> ServiceRuntime:
    def setup(svc: ServiceRuntime) -> None:
        svc.add_model("double", lambda x: x * 2, inputs=[aiarch.TensorSpec("x", "float32", (2,))])

    return ServiceRuntime(setup)


def test_runtime_inherited_across_fork_is_refused_with_a_clear_error():
    service = _double_service()
    service.start()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            service.infer_sync("double", np.ones((1, 2), np.float32))
            msg = "no error"
        except aiarch.UnavailableError as e:
            msg = str(e)
        except BaseException as e:  # pragma: no cover - reported to the parent
            msg = f"{type(e).__name__}: {e}"
        os.write(write, msg.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        msg = f.read().decode()
    os.waitpid(pid, 0)
    assert f"started in process {os.getpid()}" in msg and "after the fork" in msg, msg
    # The parent's runtime is unaffected.
    np.testing.assert_array_equal(service.infer_sync("double", np.ones((1, 2), np.float32)), 2)
    service.close()


def test_not_started_and_closed_services_fail_at_once():
    service = _double_service()
    with pytest.raises(aiarch.UnavailableError, match="not started"):
        service.infer_sync("double", np.ones((1, 2), np.float32))
    assert service.health()[0] is False
    rt = service.ensure_started()
    assert service.ensure_started() is rt
    np.testing.assert_array_equal(service.infer_sync("double", np.ones((1, 2), np.float32)), 2)
    service.close()
    with pytest.raises(aiarch.UnavailableError, match="closed"):
        service.infer_sync("double", np.ones((1, 2), np.float32))
    with pytest.raises(aiarch.UnavailableError, match="closed"):
        service.start()


def test_start_freezes_the_start_up_heap_unless_told_not_to():
    import gc

    gc.unfreeze()
    service = _double_service()
    service.start()
    assert gc.get_freeze_count() > 0  # models and framework objects left out of collections
    service.close()
    gc.unfreeze()
    kept = ServiceRuntime(lambda svc: None, freeze_gc=False)
    kept.start()
    assert gc.get_freeze_count() == 0
    kept.close()
