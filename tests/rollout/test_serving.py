"""Progressive rollouts against real `aiarch serve` processes on 127.0.0.1 (SQLite registry):
servers agree on the recorded step, a good candidate completes, a failing or slow one is rolled
back automatically, a restarted server comes up at the recorded step, two controllers race."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aiarch.cli import main
from aiarch.registry import Registry
from aiarch.rollout import Controller, LeaseHeldError, Rollout, Thresholds, state

from .conftest import Server, write_model

pytest.importorskip("uvloop", reason="uvloop is not installed")

SERVE = ["--model", "fraud@production", "--registry-poll", "0.05", "--log-level", "warning"]


class Fleet:
    """A registry with `fraud` v1 in production and a candidate v2, and servers following it."""

    def __init__(
        self,
        tmp_path: Path,
        serve: Callable[..., Server],
        *,
        servers: int = 1,
        fail: bool = False,
        delay_s: float = 0.0,
        extra: tuple[str, ...] = (),
        url: str | None = None,
    ):
        self.home = tmp_path / "home"
        self.url = url or f"sqlite:///{tmp_path / 'registry.db'}"
        self.reg = Registry(self.url, home=self.home)
        self.reg.register("fraud", write_model(tmp_path / "src", 1.0))
        self.reg.register("fraud", write_model(tmp_path / "src", 2.0, fail=fail, delay_s=delay_s))
        self.reg.promote("fraud", 1)
        self.serve = serve
        self.args = ["--registry", self.url, *SERVE, *extra]
        self.servers = [self.start_server() for _ in range(servers)]

    def start_server(self) -> Server:
        return self.serve(self.args, self.home)

    @property
    def urls(self) -> list[str]:
        return [s.base for s in self.servers]


class Traffic:
    """Closed-loop clients, one per server, sending x = `value` until stopped (bounded by
    `max_requests` each); records (status, version) of every answer."""

    def __init__(self, servers: list[Server], value: float = 1.0, max_requests: int = 50_000):
        self.value = value
        self.max_requests = max_requests
        self.stop_event = threading.Event()
        self.results: list[list[tuple[int, str]]] = [[] for _ in servers]
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._client, args=(s.port, out), daemon=True)
            for s, out in zip(servers, self.results)
        ]
        for t in self.threads:
            t.start()

    def _client(self, port: int, out: list[tuple[int, str]]) -> None:
        body = json.dumps(
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [self.value] * 4}
                ]
            }
        ).encode()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        try:
            while not self.stop_event.is_set() and len(out) < self.max_requests:
                conn.request("POST", "/v2/models/fraud/infer", body=body)
                r = conn.getresponse()
                answer = json.loads(r.read())
                out.append((r.status, str(answer.get("model_version", ""))))
        except BaseException as e:
            self.errors.append(e)
        finally:
            conn.close()

    def mark(self) -> list[int]:
        return [len(r) for r in self.results]

    def since(self, mark: list[int]) -> list[tuple[int, str]]:
        return [x for r, m in zip(self.results, mark) for x in r[m:]]

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)
        assert not self.errors, self.errors[0]


def route_weights(server: Server) -> dict[tuple[str, str], float]:
    """(arm, version) → weight, from the server's /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return {
        (m.group(1), m.group(2)): float(m.group(3))
        for m in re.finditer(
            r'aiarch_route_weight\{arm="([^"]+)",model="fraud",version="([^"]*)"\}\s+(\S+)', text
        )
    }


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def served_split(weights: dict[tuple[str, str], float], production: int, candidate: int) -> bool:
    return weights == {
        ("production", "1"): float(production),
        **({("candidate", "2"): float(candidate)} if candidate else {}),
    }


def test_good_candidate_completes_and_every_server_follows_each_step(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    fleet = Fleet(tmp_path, serve, servers=2)
    # Both arms run the same kind of model: the floor keeps the shared test machine's
    # scheduling hiccups (tens of ms) from being judged as a latency regression.
    limits = Thresholds(min_requests=10, p99_floor_s=0.25)
    Rollout.start(fleet.reg, "fraud", 2, dwell_s=0.3, step_timeout_s=60, thresholds=limits)
    for server in fleet.servers:  # every server reads the recorded step
        wait_for(lambda s=server: served_split(route_weights(s), 95, 5), "the 5 % split")
    traffic = Traffic(fleet.servers)
    seen: list[tuple[int, list[dict[tuple[str, str], float]]]] = []

    def observe(obs: Any) -> None:
        seen.append((obs.weight, [route_weights(s) for s in fleet.servers]))

    outcomes: list[Any] = []

    def control(owner: str) -> None:
        reg = Registry(fleet.url, home=fleet.home)
        try:
            ctl = Controller(
                reg, "fraud", fleet.urls, owner=owner, poll_s=0.05, on_observation=observe
            )
            outcomes.append(ctl.run())
        except LeaseHeldError as e:
            outcomes.append(e)
        finally:
            reg.close()

    controllers = [threading.Thread(target=control, args=(o,)) for o in ("ctl-a", "ctl-b")]
    for t in controllers:
        t.start()
    for t in controllers:
        t.join(180)
    try:
        done = [o for o in outcomes if isinstance(o, Rollout)]
        refused = [o for o in outcomes if isinstance(o, LeaseHeldError)]
        assert len(done) == 1 and len(refused) == 1, outcomes  # two controllers: one wins
        assert "is controlled by ctl-" in str(refused[0])
        ro = done[0]
        assert ro.state == "completed", ro.reason
        assert fleet.reg.alias_version("fraud", "production") == 2
        decisions = [(e.decision, e.weight) for e in ro.events(fleet.reg)]
        assert decisions == [
            ("start", 5),
            ("advance", 5),
            ("advance", 25),
            ("advance", 50),
            ("complete", 100),
        ]
        for ev in ro.events(fleet.reg)[1:]:
            assert ev.arms["candidate"]["requests"] >= 10 and ev.arms["candidate"]["errors"] == 0
        # The servers split traffic at the weights the controller judged.
        for w in (5, 25, 50, 100):
            # Within each step both servers were seen applying it (each polls every 50 ms).
            assert any(
                all(served_split(ws, 100 - w, w) for ws in per_server)
                for weight, per_server in seen
                if weight == w
            ), (w, [x for x in seen if x[0] == w])
        for server in fleet.servers:
            wait_for(
                lambda s=server: route_weights(s) == {("production", "2"): 100.0},
                "production on version 2 and no candidate arm",
            )
        mark = traffic.mark()
        wait_for(lambda: len(traffic.since(mark)) > 50, "traffic after completion")
        assert {x for x in traffic.since(mark)} == {(200, "2")}
    finally:
        traffic.stop()
    assert all(status == 200 for r in traffic.results for status, _ in r)


def test_failing_candidate_is_rolled_back_at_once(
    registry_url: str,
    tmp_path: Path,
    serve: Callable[..., Server],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On SQLite and PostgreSQL, driven by the CLI as an operator would.
    fleet = Fleet(tmp_path, serve, fail=True, url=registry_url)
    monkeypatch.setenv("AIARCH_HOME", str(fleet.home))  # the CLI's artifact store
    traffic = Traffic(fleet.servers, value=-1.0)  # the candidate raises on negative inputs
    try:
        code = main(
            [
                "rollout",
                "start",
                "fraud",
                "2",
                "--registry",
                fleet.url,
                "--server",
                fleet.urls[0],
                "--dwell",
                "0.3",
                "--step-timeout",
                "60",
                "--min-requests",
                "10",
                "--poll",
                "0.05",
            ]
        )
        assert code == 3  # rolled back
        printed = capsys.readouterr().out
        assert "rolled_back" in printed and " rollback " in printed
        ro = state.latest(fleet.reg, "fraud")
        assert ro is not None and ro.state == "rolled_back"
        assert ro.weight == 0 and ro.step == 0  # never left the first step
        assert re.match(r"at 5 %: error rate 100\.00 % vs 0\.00 % in production", ro.reason)
        assert fleet.reg.alias_version("fraud", "production") == 1
        assert [h.to_version for h in fleet.reg.history("fraud", "production")] == [1]
        wait_for(
            lambda: route_weights(fleet.servers[0]) == {("production", "1"): 100.0},
            "the candidate arm gone",
        )
        mark = traffic.mark()
        wait_for(lambda: len(traffic.since(mark)) > 50, "traffic after the rollback")
        assert set(traffic.since(mark)) == {(200, "1")}
    finally:
        traffic.stop()
    answered = {x for r in traffic.results for x in r}
    assert any(status == 500 for status, _ in answered)  # the candidate did fail
    # `status` shows the decision with the per-arm figures it was made on.
    assert main(["rollout", "status", "fraud", "--registry", fleet.url]) == 0
    out = capsys.readouterr().out
    assert "rolled_back" in out and "CAND_ERR" in out and "PROD_P99" in out
    rollback_row = [line for line in out.splitlines() if " rollback " in line]
    assert len(rollback_row) == 1 and "100.00%" in rollback_row[0]
    assert main(["rollout", "status", "fraud", "--registry", fleet.url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rollout"]["state"] == "rolled_back"
    assert [e["decision"] for e in doc["events"]] == ["start", "rollback"]
    assert doc["events"][1]["arms"]["candidate"]["error_rate"] == 1.0


def test_slow_candidate_is_rolled_back_on_p99(tmp_path: Path, serve: Callable[..., Server]) -> None:
    # 0.3 s per batch on the candidate, ~1 ms on production; executed off the event loop so
    # the slow arm does not hold up production's requests.
    fleet = Fleet(tmp_path, serve, delay_s=0.3, extra=("--inline-execution", "off"))
    limits = Thresholds(min_requests=5, p99_floor_s=0.1)
    Rollout.start(
        fleet.reg, "fraud", 2, steps=(25, 100), dwell_s=0.3, step_timeout_s=60, thresholds=limits
    )
    traffic = Traffic(fleet.servers)
    try:
        ro = Controller(fleet.reg, "fraud", fleet.urls, poll_s=0.05).run()
    finally:
        traffic.stop()
    assert ro.state == "rolled_back", ro.reason
    assert re.match(r"at 25 %: p99 \d+\.\d ms vs \d+\.\d ms in production", ro.reason), ro.reason
    ev = ro.events(fleet.reg)[-1]
    assert ev.decision == "rollback" and ev.arms["candidate"]["p99_s"] >= 0.3
    assert ev.arms["candidate"]["errors"] == 0  # slow, not failing
    assert fleet.reg.alias_version("fraud", "production") == 1


def test_restarted_server_comes_up_at_the_recorded_step(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    fleet = Fleet(tmp_path, serve)
    ro = Rollout.start(fleet.reg, "fraud", 2, dwell_s=60)
    server = fleet.servers[0]
    wait_for(lambda: served_split(route_weights(server), 95, 5), "the 5 % split")
    server.stop()
    ro = state.acquire_lease(fleet.reg, ro.id, "ctl", 60)
    ro = state.advance(fleet.reg, ro, "ctl", {}, "judged while the server was down")
    assert ro.weight == 25
    restarted = fleet.start_server()
    # Ready means loaded at the recorded step: no poll needed.
    assert served_split(route_weights(restarted), 75, 25)
    traffic = Traffic([restarted], max_requests=300)
    traffic.threads[0].join(60)
    traffic.stop()
    versions = [v for status, v in traffic.results[0] if status == 200]
    assert len(versions) == 300
    assert {"1", "2"} == set(versions)  # both arms serve (P(no candidate in 300) = 0.75^300)
    # Aborted while it runs: the candidate arm is dropped on the next poll.
    state.abort(fleet.reg, "fraud", "operator")
    wait_for(lambda: route_weights(restarted) == {("production", "1"): 100.0}, "abort applied")


def test_cli_refuses_bad_input_and_a_second_controller(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("AIARCH_HOME", str(tmp_path / "home"))  # the CLI's artifact store
    reg = Registry(url, home=tmp_path / "home")
    for factor in (1.0, 2.0):
        reg.register("fraud", write_model(tmp_path / "src", factor))
    reg.promote("fraud", 1)
    base = ["--registry", url]

    def run(*argv: str) -> tuple[int, str]:
        code = main(["rollout", *argv, *base])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    code, out = run("start", "fraud", "2", "--steps", "50,25,100", "--detach")
    assert code == 2 and "steps must increase strictly" in out
    code, out = run("start", "fraud", "2", "--steps", "5,50,150", "--detach")
    assert code == 2 and "from 1 to 100" in out
    code, out = run("start", "fraud", "1", "--detach")
    assert code == 2 and "is production already" in out
    code, out = run("start", "nope", "2", "--detach")
    assert code == 2 and "no model named 'nope'" in out
    code, out = run("start", "fraud", "7", "--detach")
    assert code == 2 and "no version 7; versions: 1-2" in out
    code, out = run("start", "fraud", "2")
    assert code == 2 and "give --server URL" in out
    for verb in ("pause", "resume", "abort"):
        code, out = run(verb, "fraud")
        assert code == 2 and "no active rollout of 'fraud'" in out
    code, out = run("status", "fraud")
    assert code == 0 and "no rollout of fraud yet" in out

    code, out = run("start", "fraud", "2", "--detach", "--dwell", "5")
    assert code == 0 and "version 2 vs production 1, running, step 1/4" in out
    code, out = run("start", "fraud", "2", "--detach")
    assert code == 1 and "already running" in out
    ro = state.active(reg, "fraud")
    assert ro is not None
    state.acquire_lease(reg, ro.id, "ctl-elsewhere", 60)
    code, out = run("run", "fraud", "--server", "http://127.0.0.1:9")
    assert code == 1 and "controlled by ctl-elsewhere" in out
    code, out = run("pause", "fraud", "--reason", "holiday traffic")
    assert code == 0 and "paused" in out
    code, out = run("resume", "fraud")
    assert code == 0 and "running" in out
    code, out = run("abort", "fraud", "--reason", "wrong features")
    assert code == 0 and "aborted" in out and "wrong features" in out
    code, out = run("status", "fraud")
    rows = [line.split() for line in out.splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]
    # An operator's rows carry no arm figures: time, step, weight, decision, reason.
    assert [r[3] for r in rows] == ["start", "pause", "resume", "abort"]
    assert rows[1][4:] == ["holiday", "traffic"] and rows[3][2] == "0%"
    reg.close()


def test_a_step_without_enough_requests_pauses_naming_why(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    from aiarch.serving.process import free_port

    fleet = Fleet(tmp_path, serve)  # and no traffic at all
    limits = Thresholds(min_requests=1000)
    Rollout.start(fleet.reg, "fraud", 2, dwell_s=0.2, step_timeout_s=0.6, thresholds=limits)
    dead = f"http://127.0.0.1:{free_port()}"  # a server that never answers
    ended: list[Rollout] = []
    controller = Controller(fleet.reg, "fraud", [*fleet.urls, dead], poll_s=0.05)
    thread = threading.Thread(target=lambda: ended.append(controller.run()))
    thread.start()
    try:
        wait_for(
            lambda: getattr(state.active(fleet.reg, "fraud"), "state", "") == "paused",
            "the step to time out",
        )
        held = state.active(fleet.reg, "fraud")
        assert held is not None and held.weight == 5  # servers keep the split
        assert "step 1 at 5 % not judged within 0.6 s: candidate has 0 requests (need 1000)" in (
            held.reason
        )
        assert f"no answer from {dead}" in held.reason
    finally:
        state.abort(fleet.reg, "fraud", "no traffic to judge on")
        thread.join(30)
    assert ended and ended[0].state == "aborted"
    assert [e.decision for e in ended[0].events(fleet.reg)] == ["start", "hold", "abort"]
