"""Label feedback through the real server on 127.0.0.1: `POST /v2/models/{m}/feedback` joined
with the predictions of id-carrying infer requests, on both front ends (the native one keeps
answering infer requests natively), exported in `/monitor` and `/metrics`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    FRONT_ENDS,
    MODELS,
    ServerProcess,
    _require_server_deps,
    request,
    running_server,
)

# 40 scores i/40 with label 1 for the top half, except that the 19th and 20th swap labels:
# one discordant pair out of 20 x 20, so AUC = 399/400.
SCORES = [i / 40 for i in range(40)]
LABELS = [1 if i >= 20 else 0 for i in range(40)]
LABELS[19], LABELS[20] = 1, 0
EXPECTED_AUC = 0.9975


def _config(tmp: Path, inline: bool = False) -> Path:
    cfg = tmp / "serve.toml"
    cfg.write_text(
        f"""
[models.score]
source = "{MODELS}:scorer"
[models.score.batching]
inline_execution = {str(inline).lower()}
[models.score.monitor.feedback]
metric = "auc"
label_log = "{tmp / "labels"}"
"""
    )
    return cfg


def _infer(port: int, rid: str, score: float) -> str:
    body = json.dumps(
        {
            "id": rid,
            "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [score, 0.0]}],
        }
    ).encode()
    r = request(port, "POST", "/v2/models/score/infer", body, {"Content-Type": "application/json"})
    assert r.status == 200, r.body
    out = r.json()
    assert out["id"] == rid  # type: ignore[index]
    return r.body.decode()


def _feedback(port: int, labels: list[dict[str, object]]) -> dict[str, int]:
    body = json.dumps({"labels": labels}).encode()
    r = request(
        port, "POST", "/v2/models/score/feedback", body, {"Content-Type": "application/json"}
    )
    assert r.status == 200, r.body
    return r.json()  # type: ignore[return-value]


@pytest.mark.parametrize("inline", [False, True], ids=["worker", "inline"])
@pytest.mark.parametrize("http", FRONT_ENDS)
def test_feedback_joins_ids_into_online_auc(tmp_path: Path, http: str, inline: bool) -> None:
    """Batches run by a batcher worker or inline on the event loop (the native flush answers
    those without a drain): either way a label sent after its answer joins."""
    _require_server_deps()
    cfg = _config(tmp_path, inline)
    args = ["--config", str(cfg), "--http", http, "--log-level", "warning"]
    with running_server(args, tmp_path) as srv:
        bodies = [_infer(srv.port, f"r{i}", SCORES[i]) for i in range(40)]
        # Which front end answered: the native encoder writes float32 in its shortest form
        # ("0.025"), msgspec widens it to float64 ("0.02500000037252903").
        assert ("[0.025]" in bodies[1]) == (http == "native")
        labels = [{"id": f"r{i}", "label": LABELS[i]} for i in range(40)]
        labels += [{"id": "never-sent", "label": 1}, {"id": "nor-this", "label": 0}]
        assert _feedback(srv.port, labels) == {"joined": 40, "unknown": 2, "late": 0}
        # A second label for an id already joined counts as late, not as a second join.
        assert _feedback(srv.port, [{"id": "r3", "label": 0}]) == {
            "joined": 0,
            "unknown": 0,
            "late": 1,
        }

        mon = request(srv.port, "GET", "/v2/models/score/monitor").json()
        q = mon["quality"]["1"]  # type: ignore[index]
        assert q["metric"] == "auc" and q["labels"] == 40
        assert q["value"] == pytest.approx(EXPECTED_AUC, abs=1e-12)
        assert mon["feedback"] == {"1": {"joined": 40, "late": 1}, "": {"unknown": 2}}  # type: ignore[index]

        text = request(srv.port, "GET", "/metrics").body.decode()
        assert (
            f'aiarch_online_quality{{metric="auc",model="score",version="1"}} {EXPECTED_AUC}'
            in text
        )
        assert (
            'aiarch_feedback_labels_total{model="score",outcome="joined",version="1"} 40.0' in text
        )
        assert (
            'aiarch_feedback_labels_total{model="score",outcome="unknown",version=""} 2.0' in text
        )
        assert 'aiarch_feedback_labels_total{model="score",outcome="late",version="1"} 1.0' in text
    files = list((tmp_path / "labels").glob("score-labels-*.parquet"))
    import pyarrow.parquet as pq

    rows = sum(pq.read_table(f).num_rows for f in files)
    assert rows == 40  # the joined labels (unknown ids carry no entity or time to train on)


@pytest.fixture(scope="module")
def feedback_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    _require_server_deps()
    tmp = tmp_path_factory.mktemp("fb")
    with running_server(["--config", str(_config(tmp)), "--log-level", "warning"], tmp) as srv:
        yield srv


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "not JSON"),
        (b'{"labels": [{"id": "a"}]}', "label"),
        (b'{"label": 1}', "labels"),
        (
            b'{"labels": [{"id": "a", "entity_id": 3, "label": 1}]}',
            "exactly one of 'id' or 'entity_id'",
        ),
        (b'{"labels": [{"id": "a", "label": 1, "colour": "red"}]}', "colour"),
    ],
)
def test_malformed_feedback_is_refused_naming_the_fields(
    feedback_server: ServerProcess, body: bytes, expected: str
) -> None:
    port = feedback_server.port
    r = request(
        port, "POST", "/v2/models/score/feedback", body, {"Content-Type": "application/json"}
    )
    assert r.status == 400
    message = r.json()["error"]  # type: ignore[index]
    assert expected in message and '"labels"' in message
    # One bad feedback request never affects serving or the next one.
    rid = f"ok-{expected}"
    _infer(port, rid, 0.5)
    assert _feedback(port, [{"id": rid, "label": 1}])["joined"] == 1


def test_feedback_for_a_model_without_feedback_is_404(tmp_path: Path) -> None:
    _require_server_deps()
    args = ["--model", f"lin={MODELS}:linear", "--log-level", "warning"]
    with running_server(args, tmp_path) as srv:
        r = request(
            srv.port,
            "POST",
            "/v2/models/lin/feedback",
            b'{"labels": []}',
            {"Content-Type": "application/json"},
        )
        assert r.status == 404 and "monitor.feedback" in r.json()["error"]  # type: ignore[index]
        r = request(
            srv.port,
            "POST",
            "/v2/models/nope/feedback",
            b'{"labels": []}',
            {"Content-Type": "application/json"},
        )
        assert r.status == 404


def test_workers_merge_quality_and_counts(tmp_path: Path) -> None:
    """With `--workers 2`, each connection's labels join in the worker that answered its infer
    requests, and `/monitor` and `/metrics` report every worker's labels whichever answers."""
    import socket

    from .conftest import read_response
    from .test_supervisor import _wait_for, _workers

    _require_server_deps()
    args = ["--config", str(_config(tmp_path)), "--workers", "2"]
    with running_server(args, tmp_path) as srv:
        _wait_for(lambda: len(_workers(srv)) == 2, 60, "2 listening workers")
        for c in range(8):  # the kernel spreads the connections over the workers
            with (
                socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s,
                s.makefile("rb") as f,
            ):

                def post(path: str, payload: object) -> object:
                    body = json.dumps(payload).encode()
                    s.sendall(
                        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                    r = read_response(f)
                    assert r.status == 200, r.body
                    return r.json()

                for i in range(5 * c, 5 * c + 5):
                    x = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [SCORES[i], 0.0]}
                    post("/v2/models/score/infer", {"id": f"r{i}", "inputs": [x]})
                labels = [{"id": f"r{i}", "label": LABELS[i]} for i in range(5 * c, 5 * c + 5)]
                assert post("/v2/models/score/feedback", {"labels": labels})["joined"] == 5  # type: ignore[index]

        def labels_seen() -> int:
            # A worker that joined none of the labels shows no quality for version 1 until the
            # other's first publication lands: not there yet counts as none seen.
            mon = request(srv.port, "GET", "/v2/models/score/monitor").json()
            version = mon["quality"].get("1", {})  # type: ignore[index]
            return int(version.get("labels", 0))

        # Each worker publishes its part every PUBLISH_PERIOD_S: wait for the other's to land.
        _wait_for(lambda: labels_seen() == 40, 20, "40 joined labels in /monitor")
        for _ in range(4):  # fresh connections: either worker answers with the server's view
            q = request(srv.port, "GET", "/v2/models/score/monitor").json()["quality"]["1"]  # type: ignore[index]
            assert q["labels"] == 40 and q["value"] == pytest.approx(EXPECTED_AUC, abs=1e-12)
            text = request(srv.port, "GET", "/metrics").body.decode()
            assert (
                'aiarch_feedback_labels_total{model="score",outcome="joined",version="1"} 40.0'
                in text
            )
