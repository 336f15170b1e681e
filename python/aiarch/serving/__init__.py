"""`aiarch serve`: an HTTP/1.1 server speaking KServe v2 over the aiarch Runtime.

Modules: `http` (connection protocol), `v2` (codec), `app` (routes), `metrics` (Prometheus),
`loader` (model sources), `config` (dataclasses), `server` (lifecycle and workers).
"""

from .config import HttpLimits, ModelConfig, ServeConfig
from .server import Server, run

__all__ = ["HttpLimits", "ModelConfig", "ServeConfig", "Server", "run"]
