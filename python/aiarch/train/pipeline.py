"""`Pipeline`: prepare_data → train → evaluate, built on the training context.

Subclass it and supply the data, the model and the loss; the base class does the
distributed parts (DDP, sharded loaders, checkpoint/resume per epoch, progress lines,
metrics reduced over ranks)::

    class Fraud(aiarch.train.Pipeline):
        epochs = 5
        def prepare_data(self):
            return TensorDataset(x_train, y_train), TensorDataset(x_test, y_test)
        def build_model(self):
            return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
        def loss(self, model, batch):
            x, y = batch
            return F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)

    result = Fraud().run()   # under `aiarch train script.py --nproc 2`
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .worker import TrainContext, context

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

__all__ = ["Pipeline", "PipelineResult"]


@dataclass
class PipelineResult:
    """The trained model (unwrapped from DDP) and its evaluation metrics."""

    model: Any
    metrics: dict[str, float] = field(default_factory=dict)
    start_epoch: int = 0
    """The epoch training started at (> 0 when it resumed from a checkpoint)."""


def _to_device(batch: Any, device: torch.device) -> Any:
    if hasattr(batch, "to"):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class Pipeline:
    """Base class of a training pipeline. Override `prepare_data`, `build_model`, `loss`."""

    epochs: int = 5
    """Epochs to train."""
    batch_size: int = 256
    """Per-rank batch size."""
    lr: float = 1e-3
    """Learning rate of the default optimizer (Adam)."""
    seed: int = 0
    """Seeds model initialisation and the samplers' shuffles (same on every rank)."""

    def __init__(self, ctx: TrainContext | None = None) -> None:
        self.ctx = ctx if ctx is not None else context()

    # -- to override -----------------------------------------------------------------------

    def prepare_data(self) -> tuple[Dataset[Any], Dataset[Any] | None]:
        """Returns (training set, evaluation set or None). Called once, on every rank."""
        raise NotImplementedError("override prepare_data() to return (train, eval) datasets")

    def build_model(self) -> torch.nn.Module:
        """Returns a fresh model. Called once, on every rank, after seeding."""
        raise NotImplementedError("override build_model() to return a torch.nn.Module")

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Mean loss of `model` on one batch (already on the context's device)."""
        raise NotImplementedError("override loss(model, batch) to return a scalar tensor")

    def configure_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The optimizer; Adam at `lr` unless overridden."""
        import torch

        return torch.optim.Adam(model.parameters(), lr=self.lr)

    # -- provided --------------------------------------------------------------------------

    def train(self, model: torch.nn.Module, data: Dataset[Any]) -> tuple[torch.nn.Module, int]:
        """Trains `model` for `epochs`, resuming from the run's last checkpoint.

        Saves a checkpoint after every epoch. Returns (the DDP-wrapped model, start epoch).
        """
        ctx = self.ctx
        wrapped = ctx.wrap(model)
        optimizer = self.configure_optimizer(wrapped)
        loader = ctx.loader(data, self.batch_size, shuffle=True, seed=self.seed)
        start = 0
        resumed = ctx.checkpoint.load_latest(into={"model": wrapped, "optimizer": optimizer})
        if resumed is not None:
            start = int(resumed.state.get("epoch", resumed.step)) + 1
        wrapped.train()
        for epoch in ctx.epochs(self.epochs, start=start):
            for batch in loader:
                batch = _to_device(batch, ctx.device)
                optimizer.zero_grad(set_to_none=True)
                loss = self.loss(wrapped, batch)
                loss.backward()
                optimizer.step()
                first = batch[0] if isinstance(batch, (list, tuple)) else batch
                epoch.record(loss, len(first))
            ctx.checkpoint.save(
                {"model": wrapped, "optimizer": optimizer, "epoch": epoch.index}, epoch.index
            )
        return wrapped, start

    def evaluate(self, model: torch.nn.Module, data: Dataset[Any] | None) -> dict[str, float]:
        """Mean `loss` over the evaluation set, combined over all ranks: ``{"eval_loss"}``."""
        if data is None:
            return {}
        import torch

        ctx = self.ctx
        loader = ctx.loader(data, self.batch_size, shuffle=False)
        total, count = 0.0, 0
        model.eval()
        with torch.no_grad():
            for batch in loader:
                batch = _to_device(batch, ctx.device)
                first = batch[0] if isinstance(batch, (list, tuple)) else batch
                total += float(self.loss(model, batch)) * len(first)
                count += len(first)
        total, count_all = ctx.all_reduce([total, count])
        return {"eval_loss": total / count_all if count_all else float("nan")}

    def run(self) -> PipelineResult:
        """prepare_data → build_model → train → evaluate; returns the model and metrics."""
        import torch

        torch.manual_seed(self.seed)
        train_data, eval_data = self.prepare_data()
        model = self.build_model()
        wrapped, start = self.train(model, train_data)
        metrics = self.evaluate(wrapped, eval_data)
        if self.ctx.is_main and metrics:
            print("  ".join(f"{k} {v:.6f}" for k, v in metrics.items()), flush=True)
        inner = getattr(wrapped, "module", wrapped)
        return PipelineResult(model=inner, metrics=metrics, start_epoch=start)
