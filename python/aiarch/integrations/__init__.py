"""aiarch inside the services users already run: FastAPI/Starlette, Flask/Django, gRPC.

`ServiceRuntime` (framework-free) owns one `aiarch.Runtime` per process for the life of the
host service: models added at start, registry aliases followed with hot swap, Prometheus
metrics and health, a drain at shutdown. The framework helpers are separate modules, each
importing only its framework (an optional extra: ``pip install "aiarch[embed]"``):

- `aiarch.integrations.asgi` — FastAPI / Starlette: lifespan, dependency, /metrics, health,
  error handler, cancellation when the client disconnects;
- `aiarch.integrations.wsgi` — Flask / Django threads: one Runtime per (forked) worker
  process, shared through ``infer_sync``;
- `aiarch.integrations.grpc` — grpcio servicers, sync and asyncio: deadline and cancellation
  passed through to the queued request.
"""

from __future__ import annotations

from .service import ServiceRuntime

__all__ = ["ServiceRuntime"]
