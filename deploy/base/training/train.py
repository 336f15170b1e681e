"""Trains the fraud MLP on every rank of the PyTorchJob and registers one version for the job."""

import torch
from torch.nn.functional import binary_cross_entropy_with_logits as bce
from torch.utils.data import TensorDataset

import aiarch.train

ctx = aiarch.train.context()
x = torch.randn(4096, 32, generator=torch.Generator().manual_seed(0))
y = (x[:, 0] > 0).float()
model = ctx.wrap(
    torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loader = ctx.loader(TensorDataset(x, y), batch_size=256)
ckpt = ctx.checkpoint.load_latest(into={"model": model, "optimizer": opt})
for epoch in ctx.epochs(5, start=0 if ckpt is None else ckpt.step + 1):
    for xb, yb in loader:
        opt.zero_grad()
        loss = bce(model(xb).squeeze(1), yb)
        loss.backward()
        opt.step()
        epoch.record(loss, len(xb))
    ctx.checkpoint.save({"model": model, "optimizer": opt}, step=epoch.index)
with torch.no_grad():
    accuracy = ((model(x).squeeze(1) > 0).float() == y).float().mean().item()
ctx.register(
    "fraud", model, example_input=x[:8], metrics={"accuracy": accuracy}, reference_data=x[:1000]
)
