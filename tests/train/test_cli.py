"""`aiarch train` argument handling: clear errors, exit code 2, no traceback, no job started."""

from __future__ import annotations

import pytest

from aiarch.cli import main
from aiarch.errors import InvalidArgumentError
from aiarch.train import launch
from aiarch.train.launcher import parse_endpoint, parse_nnodes

from .conftest import JOB


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.py"], "training script 'missing.py' does not exist"),
        ([str(JOB), "--nproc", "0"], "--nproc must be an integer >= 1, got 0"),
        ([str(JOB), "--nnodes", "2"], "more than one host needs --rdzv-endpoint"),
        ([str(JOB), "--nnodes", "3:1"], "expected 1 <= MIN <= MAX, got MIN=3, MAX=1"),
        ([str(JOB), "--nnodes", "two"], "expected a number of hosts (e.g. 2) or MIN:MAX"),
        (
            [str(JOB), "--nnodes", "1:2", "--rdzv-endpoint", "node0"],
            "--rdzv-endpoint 'node0': expected HOST:PORT",
        ),
        ([str(JOB), "--rdzv-endpoint", "node0:70000"], "port in 1-65535"),
        ([str(JOB), "--max-restarts", "-1"], "--max-restarts must be an integer >= 0, got -1"),
        ([str(JOB), "--run-id", "../etc"], "run id '../etc' is not valid"),
        ([str(JOB), "--collective-timeout", "0"], "--collective-timeout must be > 0"),
        ([str(JOB), "--nproc", "2", "--epochs", "3"], "unrecognized arguments: --epochs 3"),
        ([], "no training script given"),
        (["--", "--nproc"], "unknown option '--nproc'"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("aiarch train: ") and "Traceback" not in err
    assert not (tmp_path / ".aiarch").exists(), "nothing is created for a refused job"


def test_options_after_the_script_are_parsed_and_script_args_follow_dashes(capsys, tmp_path):
    # --nproc after the script is the launcher's; --nproc after -- would be the script's.
    argv = ["train", str(JOB), "--nproc", "0", "--", "--nproc", "5"]
    assert main(argv) == 2
    assert "got 0" in capsys.readouterr().err


def test_unrecognized_argument_hint_shows_the_dashes(capsys):
    assert main(["train", str(JOB), "--epochs", "3"]) == 2
    assert f"aiarch train {JOB} --nproc 2 -- --epochs 3" in capsys.readouterr().err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--rdzv-endpoint" in out and "aiarch.train.context()" in out


def test_cuda_without_a_gpu_is_refused(capsys):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU; the refusal is for hosts without one")
    assert main(["train", str(JOB), "--device", "cuda"]) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err


def test_python_api_raises_invalid_argument():
    with pytest.raises(InvalidArgumentError, match=r"--nproc must be an integer >= 1, got 1\.5"):
        launch(JOB, nproc=1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="--nnodes 2"):
        launch(JOB, nnodes=2)


def test_nnodes_and_endpoint_parsing():
    assert parse_nnodes("1") == (1, 1)
    assert parse_nnodes(3) == (3, 3)
    assert parse_nnodes("1:4") == (1, 4)
    assert parse_endpoint("node0.example:29400") == ("node0.example", 29400)
    assert parse_endpoint("[::1]:29400") == ("::1", 29400)
