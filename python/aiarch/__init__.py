"""aiarch: a high-performance ML inference runtime with a native core.

The public surface is what ``__all__`` lists; everything else (``aiarch._core``
included) is private.
"""

from __future__ import annotations

from aiarch import errors
from aiarch._core import Histogram, HistogramSnapshot, ManualClock
from aiarch._core import __version__ as _core_version
from aiarch.config import BatchConfig, CacheConfig, TensorSpec
from aiarch.errors import (
    AiarchError,
    AlreadyExistsError,
    DeadlineExceededError,
    ExecutionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    RequestCancelledError,
    ResourceExhaustedError,
    UnavailableError,
)
from aiarch.runtime import ModelInfo, Runtime

__version__ = _core_version

__all__ = [
    "AiarchError",
    "AlreadyExistsError",
    "BatchConfig",
    "CacheConfig",
    "DeadlineExceededError",
    "ExecutionError",
    "Histogram",
    "HistogramSnapshot",
    "InternalError",
    "InvalidArgumentError",
    "ManualClock",
    "ModelInfo",
    "NotFoundError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "Runtime",
    "TensorSpec",
    "UnavailableError",
    "__version__",
    "errors",
]
