"""What a training script sees: ``ctx = aiarch.train.context()``.

The first call joins the job's process group (gloo on CPU, NCCL plus gloo on GPU), with
two timeouts: a short one for training collectives, so that a peer that died or hangs
fails the job in seconds instead of the 30 minutes torch waits by default, and a long
one for the moments where one rank legitimately works while the others wait (start-up,
checkpoint writes, model export). The same script runs under ``aiarch train``, under
plain ``torchrun``, or as a single process with ``python script.py``.

Settings come from the environment the launcher sets (``AIARCH_*``) and the variables
torch.distributed's elastic agent sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT``, ``TORCHELASTIC_RESTART_COUNT``, ``TORCHELASTIC_RUN_ID``).
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiarch.backends.base import file_sha256

from .checkpoint import CheckpointStore
from .rundir import RunDir, new_run_id

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "DEFAULT_COLLECTIVE_TIMEOUT_S",
    "DEFAULT_IO_TIMEOUT_S",
    "Epoch",
    "EpochLoader",
    "TrainContext",
    "context",
]

DEFAULT_COLLECTIVE_TIMEOUT_S = 30.0
"""A training collective waits this long for a silent peer before the job fails."""
DEFAULT_IO_TIMEOUT_S = 600.0
"""Start-up, checkpoint and export waits (one rank works, the others wait) fail after this."""

_lock = threading.Lock()
_current: TrainContext | None = None


def context() -> TrainContext:
    """The training context of this process, created (and the process group joined) once.

    Thread-safe; every later call returns the same object.
    """
    global _current
    with _lock:
        if _current is None:
            _current = TrainContext._from_environment()
        return _current


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{name}={text!r}: expected a number of seconds > 0")
    return value


def _script_path() -> Path | None:
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else None)
    if not file or file == "-c":
        return None
    path = Path(file)
    return path.resolve() if path.is_file() else None


class Epoch:
    """One epoch of `TrainContext.epochs`: record each step's loss and sample count."""

    def __init__(self, index: int, total: int) -> None:
        self.index = index
        """0-based epoch number."""
        self.total = total
        """Number of epochs in the whole run."""
        self.samples = 0
        """Samples this rank recorded so far in this epoch."""
        self._loss_sum: Any = 0.0

    def record(self, loss: Any, samples: int) -> None:
        """Adds one step: its mean `loss` (float or tensor) over `samples` samples.

        Called once per step on every rank. A tensor is accumulated on its device, so this
        adds no host synchronisation per step.
        """
        if hasattr(loss, "detach"):
            loss = loss.detach().float()
        self._loss_sum = self._loss_sum + loss * samples
        self.samples += int(samples)

    @property
    def loss_sum(self) -> float:
        """Sum of loss x samples recorded on this rank."""
        value = self._loss_sum
        return float(value.item()) if hasattr(value, "item") else float(value)


class EpochLoader:
    """A DataLoader over this rank's shard (DistributedSampler) that calls ``set_epoch``.

    Each full pass uses the sampler's shuffle for `epoch` and then advances it; set
    ``loader.epoch`` to resume at a given epoch (`TrainContext.epochs` does it for you).
    """

    def __init__(self, loader: DataLoader[Any], sampler: DistributedSampler[Any]) -> None:
        self.loader = loader
        self.sampler = sampler
        self.epoch = 0
        """The epoch whose shuffle the next pass uses."""

    def __iter__(self) -> Iterator[Any]:
        self.sampler.set_epoch(self.epoch)
        yield from self.loader
        self.epoch += 1

    def __len__(self) -> int:
        return len(self.loader)


class TrainContext:
    """Rank, device, process group and helpers of one training process. Not thread-safe.

    Collective methods (`barrier`, `checkpoint.*`, `log_epoch`, `epochs`, `register`) must
    be called by every rank in the same order.
    """

    def __init__(
        self,
        *,
        rank: int,
        local_rank: int,
        world_size: int,
        local_world_size: int,
        restart_count: int,
        run_id: str,
        run_dir: RunDir,
        device: torch.device,
        collective_timeout_s: float,
        io_timeout_s: float,
    ) -> None:
        self.rank = rank
        """Global rank, 0 ≤ rank < world_size."""
        self.local_rank = local_rank
        """Rank on this host (the GPU index on CUDA)."""
        self.world_size = world_size
        """Processes in the job, over all hosts."""
        self.local_world_size = local_world_size
        """Processes on this host."""
        self.restart_count = restart_count
        """How many times the worker group was restarted before this attempt (0 = first)."""
        self.run_id = run_id
        """The job's id, shared by all ranks and restarts."""
        self.run_dir = run_dir
        """Where this run keeps checkpoints, exports and records."""
        self.device = device
        """``cuda:<local_rank>`` when training on GPU, else ``cpu``."""
        self.collective_timeout_s = collective_timeout_s
        self.io_timeout_s = io_timeout_s
        self.distributed = False
        """True when a process group is joined (launched by aiarch train or torchrun)."""
        self.backend = "none"
        self._slow_group: Any = None
        # Tensors handed to gloo by `all_reduce`, kept for the life of the context: see
        # `all_reduce` for why they must never be freed by Python first.
        self._collective_buffers: dict[int, Any] = {}
        self._loaders: list[EpochLoader] = []
        self.epoch: int | None = None
        """The epoch `epochs()` is in (0-based), None outside it."""
        self.script_path: Path | None = None
        """The running script's file (None for ``python -c``)."""
        self.checkpoint: CheckpointStore
        """Atomic checkpoints of this run (see `CheckpointStore`)."""

    @property
    def is_main(self) -> bool:
        """True on global rank 0: the rank that prints, writes checkpoints and registers."""
        return self.rank == 0

    # -- set-up ----------------------------------------------------------------------------

    @classmethod
    def _from_environment(cls) -> TrainContext:
        import torch

        env = os.environ
        launched = "WORLD_SIZE" in env and "RANK" in env
        rank = int(env.get("RANK", "0"))
        world_size = int(env.get("WORLD_SIZE", "1"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", str(world_size)))
        restart_count = int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
        script = _script_path()
        # torchrun without --rdzv-id names every job "none": such jobs must not share (and
        # resume from) one run directory, so they get a fresh id, agreed on through the store.
        given_id = env.get("AIARCH_RUN_ID") or env.get("TORCHELASTIC_RUN_ID")
        run_id = given_id if given_id and given_id != "none" else new_run_id(script or "run")
        device = cls._pick_device(env.get("AIARCH_DEVICE", "auto"), local_rank)
        ctx = cls(
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
            local_world_size=local_world_size,
            restart_count=restart_count,
            run_id=run_id,
            run_dir=RunDir(""),  # set below, once the run id is agreed
            device=device,
            collective_timeout_s=_env_float(
                "AIARCH_COLLECTIVE_TIMEOUT_S", DEFAULT_COLLECTIVE_TIMEOUT_S
            ),
            io_timeout_s=_env_float("AIARCH_IO_TIMEOUT_S", DEFAULT_IO_TIMEOUT_S),
        )
        ctx.script_path = script
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if launched:
            ctx._join_process_group(agree_on_run_id=not given_id or given_id == "none")
        if env.get("AIARCH_RUN_DIR"):
            ctx.run_dir = RunDir(env["AIARCH_RUN_DIR"])
        else:
            ctx.run_dir = RunDir.for_run(ctx.run_id)
        run_dir = ctx.run_dir
        _install_error_recorder()
        if ctx.is_main:
            run_dir.create()
            run_dir.append(
                "attempts",
                {
                    "restart_count": restart_count,
                    "world_size": world_size,
                    "backend": ctx.backend,
                    "device": str(device),
                    "time": time.time(),
                },
            )
        ctx.checkpoint = CheckpointStore(run_dir.checkpoints, ctx)
        ctx.barrier(slow=True)  # the run dir exists before any rank uses it
        return ctx

    @staticmethod
    def _pick_device(kind: str, local_rank: int) -> torch.device:
        import torch

        if kind not in ("auto", "cpu", "cuda"):
            raise ValueError(f"AIARCH_DEVICE={kind!r}: expected auto, cpu or cuda")
        if kind == "auto":
            kind = "cuda" if torch.cuda.is_available() else "cpu"
        if kind == "cpu":
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if count == 0:
            raise RuntimeError("AIARCH_DEVICE=cuda but torch sees no CUDA device")
        if local_rank >= count:
            raise RuntimeError(
                f"local rank {local_rank} has no GPU: this host has {count} CUDA device(s); "
                f"run at most {count} processes per host on CUDA"
            )
        return torch.device("cuda", local_rank)

    def _join_process_group(self, *, agree_on_run_id: bool) -> None:
        import torch.distributed as dist

        env = os.environ
        # The elastic agent hosts the store; outside it (a bare MASTER_ADDR/PORT launch)
        # rank 0 hosts it, as torch's own env:// initialisation does.
        agent_store = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(
            host_name=env.get("MASTER_ADDR", "127.0.0.1"),
            port=int(env.get("MASTER_PORT", "29500")),
            world_size=self.world_size,
            is_master=not agent_store and self.rank == 0,
            timeout=timedelta(seconds=self.io_timeout_s),
            wait_for_workers=False,
            multi_tenant=True,
        )
        if agree_on_run_id:
            # The first rank to get here proposes; the key outlives restarts of the worker
            # group (the agent keeps its store), so a restarted group finds its run again.
            agreed = store.compare_set("/aiarch/run_id", "", self.run_id)
            self.run_id = agreed.decode() if isinstance(agreed, bytes) else str(agreed)
        attempt = f"/aiarch/attempt_{self.restart_count}"
        # Wait (with the long timeout) until every rank has started: importing torch on a
        # busy host can take many seconds, and that must not count against the short
        # collective timeout the process group is created with.
        ready = dist.PrefixStore(f"{attempt}/ready", store)
        if ready.add("arrived", 1) == self.world_size:
            ready.set("all", "1")
        ready.wait(["all"], timedelta(seconds=self.io_timeout_s))
        cuda = self.device.type == "cuda"
        self.backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
        dist.init_process_group(
            backend=self.backend,
            store=dist.PrefixStore(f"{attempt}/pg", store),
            rank=self.rank,
            world_size=self.world_size,
            timeout=timedelta(seconds=self.collective_timeout_s),
            device_id=self.device if cuda else None,
        )
        self._slow_group = dist.new_group(
            backend="gloo", timeout=timedelta(seconds=self.io_timeout_s)
        )
        self.distributed = True
        atexit.register(self._close_at_exit)

    # -- collectives -----------------------------------------------------------------------

    def barrier(self, *, slow: bool = False) -> None:
        """Waits until every rank arrives. `slow=True` waits up to the long (I/O) timeout."""
        if not self.distributed or self.world_size == 1:
            return
        import torch.distributed as dist

        if slow:
            dist.barrier(group=self._slow_group)
        else:
            dist.barrier()

    def broadcast_object(self, obj: Any, *, slow: bool = True) -> Any:
        """The main rank's `obj` on every rank (pickled; for small, rare messages)."""
        if not self.distributed or self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._slow_group)
        return box[0]

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        """Element-wise sum or max of `values` over all ranks (float64, on CPU)."""
        if op not in ("sum", "max"):
            raise ValueError(f"op must be 'sum' or 'max', got {op!r}")
        if not self.distributed or self.world_size == 1:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        # gloo's worker thread releases its reference to the tensor only after wait()
        # has returned here. Were Python's reference gone by then, torch would hand the
        # Python object to the tensor and the worker would need the GIL to free it; if
        # that moment falls in interpreter shutdown the worker thread is unwound by
        # Python and the process aborts ("terminate called without an active
        # exception"). One buffer per length, held by the context, keeps every free on
        # the worker a plain reference-count decrement.
        t = self._collective_buffers.get(len(values))
        if t is None:
            t = self._collective_buffers[len(values)] = torch.zeros(
                len(values), dtype=torch.float64
            )
        t.copy_(torch.tensor([float(v) for v in values], dtype=torch.float64))
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return [float(v) for v in t.tolist()]

    # -- model and data --------------------------------------------------------------------

    def wrap(self, model: torch.nn.Module, **ddp_options: Any) -> torch.nn.Module:
        """Moves `model` to this rank's device and wraps it in DistributedDataParallel.

        Returns the model itself (on the device) when the process is not distributed.
        `ddp_options` go to DistributedDataParallel unchanged.
        """
        model = model.to(self.device)
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, **ddp_options)

    def loader(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        **loader_options: Any,
    ) -> EpochLoader:
        """A loader over this rank's shard of `dataset` (DistributedSampler + DataLoader).

        Every pass reshuffles with ``set_epoch`` (the epoch is tracked for you); all ranks
        must use the same `seed`. `loader_options` go to DataLoader (num_workers, ...).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        loader_options.setdefault("pin_memory", self.device.type == "cuda")
        dl = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **loader_options
        )
        wrapped = EpochLoader(dl, sampler)
        self._loaders.append(wrapped)
        return wrapped

    # -- progress --------------------------------------------------------------------------

    def epochs(self, total: int, *, start: int = 0) -> Iterator[Epoch]:
        """Iterates epochs `start` … `total - 1`; prints and records one line after each.

        Sets the shuffle epoch of every loader made by `loader()`. Record the loss of each
        step with ``epoch.record(loss, batch_size)``. Call on every rank.
        """
        if total < 0 or start < 0:
            raise ValueError(f"epochs need total >= 0 and start >= 0, got {total}, {start}")
        for index in range(start, total):
            self.epoch = index
            for loader in self._loaders:
                loader.epoch = index
            epoch = Epoch(index, total)
            started = time.perf_counter()
            yield epoch
            samples = epoch.samples
            loss = epoch.loss_sum / samples if samples else math.nan
            self.log_epoch(
                index,
                loss=loss,
                samples=samples,
                seconds=time.perf_counter() - started,
                total=total,
            )
        self.epoch = None

    def log_epoch(
        self,
        epoch: int,
        *,
        loss: float,
        samples: int,
        seconds: float,
        total: int | None = None,
        **metrics: float,
    ) -> dict[str, Any]:
        """Combines one epoch's figures over all ranks; the main rank prints and records them.

        `loss` is this rank's mean loss over its `samples`; the line shows the mean over
        all samples, the total sample count and samples/s over the slowest rank's
        `seconds`. Extra `metrics` are averaged over ranks. Called once per epoch on every
        rank; returns the combined row (the same on every rank).
        """
        loss_sum = loss * samples if samples else 0.0
        names = sorted(metrics)
        sums = self.all_reduce([loss_sum, samples, *(metrics[k] for k in names)], "sum")
        (slowest,) = self.all_reduce([seconds], "max")
        total_samples = int(sums[1])
        row: dict[str, Any] = {
            "epoch": epoch,
            "epochs": total,
            "loss": sums[0] / total_samples if total_samples else math.nan,
            "samples": total_samples,
            "seconds": slowest,
            "samples_per_s": total_samples / slowest if slowest > 0 else 0.0,
            "world_size": self.world_size,
            "restart_count": self.restart_count,
        }
        for i, k in enumerate(names):
            row[k] = sums[2 + i] / self.world_size
        if self.is_main:
            of = f"/{total}" if total is not None else ""
            width = len(str(total)) if total is not None else 1
            extra = "".join(f"  {k} {row[k]:.4g}" for k in names)
            print(
                f"epoch {epoch + 1:>{width}}{of}  loss {row['loss']:.6f}  "
                f"{row['samples_per_s']:,.0f} samples/s  {slowest:.2f}s{extra}",
                flush=True,
            )
            self.run_dir.append("progress", {**row, "time": time.time()})
        return row

    # -- results ---------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model: torch.nn.Module,
        *,
        example_input: Any,
        metrics: Mapping[str, float] | None = None,
        reference_data: Any = None,
        feature_names: Sequence[str] | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        data_hash: Any = None,
        registry: str | None = None,
        onnx: bool = True,
    ) -> Any:
        """Exports `model` and registers ONE version of `name` for the whole job.

        On the main rank: exports to ``.pt2`` (torch.export; the served artifact) and, when
        `onnx`, to ONNX next to it; builds a drift reference profile from
        `reference_data` (2-D, columns = `feature_names`); registers the ``.pt2`` with
        metrics, params, tags and lineage (run id, world size, script sha256, data hash).
        `data_hash` is a string, or an array/tensor whose bytes are hashed. `registry` is
        a registry URL (default ``$AIARCH_REGISTRY_URL``, else the registry's own default).
        A restarted job that already registered `name` returns that version again.

        Call on every rank: the others wait, then get None; the main rank gets the
        ModelVersion. A failure on the main rank raises on every rank.
        """
        from .export import register_model

        result: Any = None
        error: str | None = None
        if self.is_main:
            try:
                result = register_model(
                    self,
                    name,
                    model,
                    example_input=example_input,
                    metrics=metrics,
                    reference_data=reference_data,
                    feature_names=feature_names,
                    params=params,
                    tags=tags,
                    data_hash=data_hash,
                    registry=registry or os.environ.get("AIARCH_REGISTRY_URL") or None,
                    onnx=onnx,
                )
            except BaseException as e:
                error = f"{type(e).__name__}: {e}"
                self.broadcast_object(error)
                raise
        error = self.broadcast_object(error)
        if error is not None:
            raise RuntimeError(f"registering {name!r} failed on the main rank: {error}")
        return result

    def script_sha256(self) -> str | None:
        """sha256 of the running script's file, or None when it has none (``python -c``)."""
        return file_sha256(self.script_path) if self.script_path else None

    def close(self, *, wait_for_peers: bool = True) -> None:
        """Leaves the process group and stops its threads. Done at exit if not called.

        Collective: with `wait_for_peers`, every rank first meets in one last barrier (on
        the long timeout), so that no rank tears down while a peer still talks to it.
        This must happen while the interpreter is whole. A gloo worker thread frees each
        collective's work after the caller has moved on; if that free needs the GIL and
        falls in interpreter shutdown, Python unwinds the thread mid-free and the process
        aborts ("terminate called without an active exception"). So the tensors of this
        context's collectives are held until the workers have let them go, and the groups
        are destroyed here, where gloo joins their threads with the GIL released. The
        default group can outlive this call while a DistributedDataParallel reducer still
        holds it; its threads are idle by then.
        """
        if not self.distributed:
            return
        import gc

        import torch.distributed as dist

        if wait_for_peers and self.world_size > 1:
            try:
                dist.barrier(group=self._slow_group)
            except Exception as e:  # a peer already failed: leave without it
                print(f"aiarch.train: rank {self.rank}: final barrier failed: {e}", file=sys.stderr)
        # Our own collective tensors: wait (briefly) until gloo's workers have dropped
        # their references, so that those frees happened while Python still held them.
        deadline = time.monotonic() + 5.0
        for buffer in self._collective_buffers.values():
            while buffer._use_count() > 1 and time.monotonic() < deadline:
                time.sleep(0.001)
        if dist.is_initialized():
            dist.destroy_process_group()
        self._slow_group = None
        self.distributed = False
        # Groups held only by reference cycles (a DDP module the script dropped) go now,
        # not in the collection at interpreter shutdown.
        gc.collect()

    def _close_at_exit(self) -> None:
        # An uncaught exception means this rank is failing: waiting for peers in a barrier
        # would only delay the failure the launcher is about to see.
        self.close(wait_for_peers=_exit_is_clean())


_uncaught_exception = False


def _exit_is_clean() -> bool:
    return not _uncaught_exception


def _install_error_recorder() -> None:
    """Writes an uncaught exception to torch.distributed.elastic's error file for this rank.

    The launcher then reports the root cause (exception type, message, rank) instead of
    only an exit code — what torch's ``@record`` decorator does, without decorating main.
    The file is written under a temporary name and renamed into place: the launcher reads
    the error files of failed ranks while a peer may still be writing its own, and torch's
    own writer truncates the file first, so a read at that moment fails the whole job with
    a JSONDecodeError instead of reporting the failure. Also notes that this rank is
    failing, so that its exit skips the final barrier.
    """
    previous = sys.excepthook
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE", "")

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        global _uncaught_exception
        _uncaught_exception = True
        if error_file:
            try:
                _write_error_file(Path(error_file), exc_type, exc, tb)
            except Exception:
                pass
        previous(exc_type, exc, tb)

    sys.excepthook = hook


def _write_error_file(
    path: Path, exc_type: type[BaseException], exc: BaseException, tb: Any
) -> None:
    """The error file in the layout torch.distributed.elastic reads, replaced atomically."""
    import traceback

    from .rundir import write_json_atomic

    write_json_atomic(
        path,
        {
            "message": {
                "message": f"{exc_type.__name__}: {exc}",
                "extraInfo": {
                    "py_callstack": "".join(traceback.format_exception(exc_type, exc, tb)),
                    "timestamp": str(int(time.time())),
                },
            }
        },
    )
