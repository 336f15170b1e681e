"""The model repository API of `aiarch serve`: `POST /v2/repository/index`, `.../load`, `.../unload`.

Every call passes `authorize` first. A client may only send its own model config when the
operator enabled it (`--model-root` or `--allow-repository-load`), and then every call needs
the bearer token; loads and unloads run on a worker thread while the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from .config import ModelConfig, validate_model_name
from .errors import HttpError
from .http import JSON, HttpProtocol, Request, build_response, require_json
from .loader import ClientConfigError, SourceError, confine_client_config

if TYPE_CHECKING:
    from .app import App

__all__ = ["RepositoryApi", "decode_json"]

log = logging.getLogger("aiarch.serving")

_encode = msgspec.json.encode


class RepositoryApi:
    """Handlers of the repository routes; one per `App`, every method runs in the loop thread."""

    def __init__(self, app: App):
        self.app = app
        self.token = app.config.resolved_auth_token()
        """The bearer token repository calls must carry; None when none is configured."""

    def authorize(self, req: Request) -> None:
        """Every repository call passes here. With a token configured (always, when clients may
        load their own configs) the call must carry it, loopback or not. Without one, only a
        loopback-bound server accepts calls, and never from a browser page: a request with an
        `Origin` header is cross-site by construction here (no client of this API sends one)."""
        token = self.token
        if token is None:
            if not self.app.bound_loopback:
                raise HttpError(
                    403,
                    "repository calls need --auth-token when the server is not bound to loopback",
                )
            if b"origin" in req.headers:
                raise HttpError(
                    403, "repository calls from a browser page are refused without --auth-token"
                )
            return
        got = req.headers.get(b"authorization", b"")
        expected = b"Bearer " + token.encode()
        if not hmac.compare_digest(got, expected):
            raise HttpError(401, "missing or wrong bearer token", (("www-authenticate", "Bearer"),))

    def index(self, req: Request, conn: HttpProtocol) -> bytes | list[Any]:
        require_json(req)
        ready_only = False
        if req.body:
            body = decode_json(req.body)
            if isinstance(body, dict):
                ready_only = body.get("ready") is True
        out = []
        for name in sorted(set(self.app.entries) | set(self.app.repository.known())):
            entry = self.app.entries.get(name)
            if entry is not None:
                out.append({"name": name, "version": entry.version, "state": "READY", "reason": ""})
            elif not ready_only:
                out.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
        return build_response(200, _encode(out), JSON, (), req.keep_alive)

    def _params(self, req: Request) -> dict[str, Any]:
        require_json(req)
        if not req.body:
            return {}
        body = decode_json(req.body)
        if not isinstance(body, dict):
            raise HttpError(400, "request body must be a JSON object")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise HttpError(400, "'parameters' must be an object")
        return params

    def load(self, req: Request, conn: HttpProtocol, model: str) -> None:
        self.authorize(req)
        try:
            validate_model_name(model)
        except ValueError as e:
            raise HttpError(400, str(e)) from None
        if model in self.app.routes:
            raise HttpError(
                400, f"model '{model}' is served from the registry: move its alias to change it"
            )
        params = self._params(req)
        if any(k.startswith("file:") for k in params):
            raise HttpError(501, "loading model files through the API is not supported")
        cfg: ModelConfig | None = None
        if "config" in params:
            cfg = self._client_config(model, params["config"])
        self._run_blocking(req, conn, self.app.repository.load, model, cfg)

    def _client_config(self, model: str, raw: Any) -> ModelConfig:
        """The config a client sent with a load, checked against the operator's policy."""
        config = self.app.config
        if not config.repository_load_enabled:
            raise HttpError(
                403,
                "loading a model from a client-given config is disabled; the operator enables "
                "it with --model-root DIR (model files inside DIR) or --allow-repository-load",
            )
        roots = config.model_roots
        try:
            tree = decode_json(raw.encode()) if isinstance(raw, str) else raw
            cfg = self.app.repository.config_from_tree(model, tree, roots[0] if roots else None)
            return confine_client_config(cfg, roots, config.allow_repository_load)
        except ClientConfigError as e:
            raise HttpError(403 if e.forbidden else 400, f"invalid model config: {e}") from None
        except (ValueError, TypeError) as e:
            raise HttpError(400, f"invalid model config: {e}") from None

    def unload(self, req: Request, conn: HttpProtocol, model: str) -> None:
        self.authorize(req)
        self._params(req)
        if model not in self.app.entries:
            raise HttpError(404, f"Request for unknown model: '{model}' is not found")
        self._run_blocking(req, conn, self.app.repository.unload, model)

    def _run_blocking(self, req: Request, conn: HttpProtocol, fn: Any, *args: Any) -> None:
        """Run a load/unload in a worker thread (it may warm up or drain a model) and answer
        when it is done; the loop keeps serving meanwhile."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, fn, *args)
        pending = conn.defer()
        pending.future = fut
        keep = req.keep_alive
        name = args[0]

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            self.app.refresh(name)
            if isinstance(exc, SourceError):
                cause = exc.__cause__
                log.warning("load of model %s failed: %s: %s", name, type(cause).__name__, cause)
                exc = HttpError(400, str(exc))
            if pending.conn is None:
                return
            if exc is not None:
                pending.resolve(self.app.error(exc, keep), keep)
            else:
                pending.resolve(build_response(200, b"", JSON, (), keep), keep)

        fut.add_done_callback(done)


def decode_json(body: bytes) -> Any:
    """A repository request's JSON body; malformed or too deeply nested JSON is a 400."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise HttpError(400, f"failed to parse the request JSON: {e}") from None
    except RecursionError:
        raise HttpError(400, "failed to parse the request JSON: nested too deeply") from None
