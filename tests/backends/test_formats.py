"""Format detection and the refusals: pickles, corrupt and truncated files, missing files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from aiarch import backends
from aiarch.errors import InvalidArgumentError, NotFoundError


def test_formats_are_detected_from_suffix_and_contents(mlp_files) -> None:
    assert backends.detect_format(mlp_files.pt2) == "torch_export"
    assert backends.detect_format(mlp_files.torchscript) == "torchscript"
    assert backends.detect_format(mlp_files.onnx) == "onnx"
    # A folder loads the first model file it holds (the registry's layout).
    assert backends.detect_format(mlp_files.folder) == "torch_export"


def test_torch_save_pickle_disguised_as_pt_is_refused(tmp_path: Path, mlp_files) -> None:
    import torch

    bad = tmp_path / "model.pt"
    torch.save(mlp_files.model, bad)
    with pytest.raises(InvalidArgumentError, match="never unpickles"):
        backends.load(bad)


def test_raw_pickle_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "was_unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "model.pt2"
    bad.write_bytes(pickle.dumps(Payload(), protocol=4))
    with pytest.raises(InvalidArgumentError, match="plain pickle"):
        backends.load(bad)
    assert not marker.exists()


def test_truncated_pt2_is_a_clear_error(tmp_path: Path, mlp_files) -> None:
    data = mlp_files.pt2.read_bytes()
    bad = tmp_path / "model.pt2"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidArgumentError, match=r"truncated or corrupt|cannot load"):
        backends.load(bad)


def test_corrupt_onnx_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InvalidArgumentError, match="cannot load ONNX model"):
        backends.load(bad)


def test_empty_unknown_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "model.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InvalidArgumentError, match="empty"):
        backends.load(empty)
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"1234")
    with pytest.raises(InvalidArgumentError, match="cannot tell the format"):
        backends.load(odd)
    with pytest.raises(NotFoundError, match="no such model file"):
        backends.load(tmp_path / "absent.onnx")
    folder = tmp_path / "empty_folder"
    folder.mkdir()
    with pytest.raises(NotFoundError, match="holds none of"):
        backends.load(folder)


def test_unknown_options_name_the_known_ones(mlp_files) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown backend options"):
        backends.load(mlp_files.onnx, warp_speed=True)
    with pytest.raises(InvalidArgumentError, match="unknown backend"):
        backends.load(mlp_files.onnx, backend="tvm")


def test_bucketing_plans_cover_every_row() -> None:
    b = backends.Bucketing((8, 2, 32))
    assert b.sizes == (2, 8, 32)
    assert b.bucket_for(1) == 2 and b.bucket_for(9) == 32
    plan = b.plan(70)
    assert [(s, e) for s, e, _ in plan] == [(0, 32), (32, 64), (64, 70)]
    assert [k for _, _, k in plan] == [32, 32, 8]
    assert backends.Bucketing(()).plan(5) == [(0, 5, 5)]
    assert backends.default_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert backends.default_buckets(64, (16, 48)) == (16, 48, 64)
