"""CheckpointStore on one process: round trips, the atomic pointer under crashes, pruning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install '.[torch]')")

from aiarch.train import CheckpointCorruptError, CheckpointStore, RunDir, TrainContext  # noqa: E402
from aiarch.train import checkpoint as checkpoint_module  # noqa: E402


def solo_context(tmp_path: Path) -> TrainContext:
    """A real single-process context (no process group: barriers and broadcasts are local)."""
    return TrainContext(
        rank=0,
        local_rank=0,
        world_size=1,
        local_world_size=1,
        restart_count=0,
        run_id="unit",
        run_dir=RunDir(tmp_path / "run"),
        device=torch.device("cpu"),
        collective_timeout_s=5.0,
        io_timeout_s=5.0,
    )


def make_store(tmp_path: Path, keep: int = 2) -> CheckpointStore:
    return CheckpointStore(tmp_path / "ckpt", solo_context(tmp_path), keep=keep)


def model_and_optimizer(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()  # gives the optimizer state to save
    return model, opt


def test_empty_store_has_no_latest(tmp_path):
    store = make_store(tmp_path)
    assert store.load_latest() is None
    assert store.latest_step() is None


def test_round_trip_loads_modules_and_optimizers_into_objects(tmp_path):
    store = make_store(tmp_path)
    model, opt = model_and_optimizer(seed=1)
    store.save({"model": model, "optimizer": opt, "epoch": 7, "note": "x"}, step=7)

    other, other_opt = model_and_optimizer(seed=2)
    assert not torch.equal(other[0].weight, model[0].weight)
    loaded = store.load_latest(into={"model": other, "optimizer": other_opt})
    assert loaded is not None
    assert loaded.step == 7 and loaded.state["epoch"] == 7 and loaded.state["note"] == "x"
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert other_opt.state_dict()["state"][0]["exp_avg"].equal(
        opt.state_dict()["state"][0]["exp_avg"]
    )
    assert store.latest_step() == 7


def test_missing_entry_for_into_names_what_exists(tmp_path):
    store = make_store(tmp_path)
    store.save({"model": torch.nn.Linear(2, 2)}, step=0)
    with pytest.raises(KeyError, match=r"no entry 'optimizer'; it has: model"):
        store.load_latest(
            into={"optimizer": torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), 0.1)}
        )


def test_crash_while_writing_file_keeps_previous_checkpoint(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    store.save({"w": torch.ones(3)}, step=1)
    real_replace = os.replace

    def crash_on_checkpoint(src, dst):
        if str(dst).endswith(".pt"):
            raise OSError("disk went away")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", crash_on_checkpoint)
    with pytest.raises(OSError, match="disk went away"):
        store.save({"w": torch.zeros(3)}, step=2)
    monkeypatch.undo()

    loaded = make_store(tmp_path).load_latest()
    assert loaded is not None and loaded.step == 1 and torch.equal(loaded.state["w"], torch.ones(3))
    assert not (tmp_path / "ckpt" / "step-000000002.pt").exists()
    assert not list((tmp_path / "ckpt").glob(".*tmp*"))


def test_crash_before_pointer_moves_keeps_previous_checkpoint(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    store.save({"w": torch.ones(3)}, step=1)

    def crash(path, value):
        raise OSError("killed before the pointer moved")

    monkeypatch.setattr(checkpoint_module, "write_json_atomic", crash)
    with pytest.raises(OSError):
        store.save({"w": torch.zeros(3)}, step=2)
    monkeypatch.undo()

    # The step-2 file is complete on disk but was never published: resume uses step 1.
    assert (tmp_path / "ckpt" / "step-000000002.pt").exists()
    loaded = make_store(tmp_path).load_latest()
    assert loaded is not None and loaded.step == 1


def test_partial_files_from_a_crash_are_removed_on_start(tmp_path):
    store = make_store(tmp_path)
    store.save({"w": torch.ones(1)}, step=0)
    partial = tmp_path / "ckpt" / ".step-000000001.pt.tmp-12345"
    partial.write_bytes(b"half a checkpoint")
    make_store(tmp_path)
    assert not partial.exists()
    assert (tmp_path / "ckpt" / "step-000000000.pt").exists()


def test_damaged_file_is_refused_with_its_digest(tmp_path):
    store = make_store(tmp_path)
    path = store.save({"w": torch.arange(100.0)}, step=3)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match=r"step-000000003\.pt has sha256"):
        store.load_latest()


def test_pointer_to_a_missing_file_is_reported(tmp_path):
    store = make_store(tmp_path)
    path = store.save({"w": torch.ones(1)}, step=4)
    path.unlink()
    with pytest.raises(CheckpointCorruptError, match="does not exist"):
        store.load_latest()


def test_keeps_the_newest_checkpoints_only(tmp_path):
    store = make_store(tmp_path, keep=2)
    for step in range(5):
        store.save({"step": torch.tensor(step)}, step=step)
    files = sorted(p.name for p in (tmp_path / "ckpt").glob("step-*.pt"))
    assert files == ["step-000000003.pt", "step-000000004.pt"]
    pointer = json.loads((tmp_path / "ckpt" / "latest.json").read_text())
    assert pointer["step"] == 4 and pointer["file"] == "step-000000004.pt"
    assert (
        len(pointer["sha256"]) == 64
        and pointer["bytes"] == (tmp_path / "ckpt" / files[-1]).stat().st_size
    )


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    store = make_store(tmp_path)
    store.save({"obj": Path("/etc")}, step=0)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|not an allowed"):
        store.load_latest()
    loaded = store.load_latest(weights_only=False)
    assert loaded is not None and loaded.state["obj"] == Path("/etc")


@pytest.mark.parametrize("step", [-1, 1.5, True, "3"])
def test_bad_step_is_refused(tmp_path, step):
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        make_store(tmp_path).save({"w": torch.ones(1)}, step=step)


def test_state_must_be_a_mapping(tmp_path):
    with pytest.raises(TypeError, match="state must be a mapping"):
        make_store(tmp_path).save([torch.ones(1)], step=0)  # type: ignore[arg-type]
