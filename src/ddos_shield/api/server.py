"""Serving the API in a thread of the running shield (uvicorn, HTTPS when configured).

The service lives in the shield's own process, beside the engine's loop, so it reads
the same state without a second copy and stops with it.  Uvicorn installs no signal
handlers outside the main thread: the shield's own SIGTERM handling stays in charge.

Example::

    server = ApiServer(create_app(view, tokens), config.api)
    server.start()          # returns once the socket listens (or raises ShieldError)
    ...
    server.stop()
"""

from __future__ import annotations

import logging
import threading

import uvicorn
from fastapi import FastAPI

from ddos_shield.alerts import AlertDispatcher
from ddos_shield.api.app import create_app
from ddos_shield.api.metrics import shield_registry
from ddos_shield.api.tokens import TokenStore, loopback_if_any
from ddos_shield.api.view import EngineLike, ShieldView
from ddos_shield.config import Api, Config
from ddos_shield.errors import ShieldError
from ddos_shield.events import EventSink
from ddos_shield.store import StoreWriter

log = logging.getLogger(__name__)


class ApiServer:
    """See the module docstring."""

    def __init__(self, app: FastAPI, api: Api, *, port: int | None = None) -> None:
        """``port`` overrides the configured one (0 picks a free port; tests use it)."""
        host, cfg_port = api.address()
        self.app = app
        self.tls = bool(api.tls_cert)
        self._config = uvicorn.Config(
            app,
            host=host,
            port=cfg_port if port is None else port,
            ssl_certfile=api.tls_cert or None,
            ssl_keyfile=api.tls_key or None,
            log_level="warning",
            access_log=False,
            # open live streams must not hold the shield's exit for long
            timeout_graceful_shutdown=2,
            lifespan="off",
        )
        self._server = uvicorn.Server(self._config)
        self._thread = threading.Thread(target=self._run, name="api", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The base URL the server answers on (the actual port once started)."""
        host = self._config.host
        port = self._config.port
        servers = getattr(self._server, "servers", None)
        if servers:
            port = servers[0].sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}"

    def _run(self) -> None:
        try:
            self._server.run()
        except BaseException as e:  # reported to start(); uvicorn exits with SystemExit on bind errors
            self._error = e

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        for _ in range(int(timeout * 50)):
            if self._server.started:
                log.info("API listening on %s", self.url)
                return
            if not self._thread.is_alive():
                break
            self._thread.join(0.02)
        raise ShieldError(
            f"api.listen {self._config.host}:{self._config.port}: the API did not start"
            + (f" ({self._error!r})" if self._error else " (address in use or not available? see the log)")
        )

    def stop(self) -> None:
        closing = getattr(self.app.state, "closing", None)
        if isinstance(closing, threading.Event):
            closing.set()
        self._server.should_exit = True
        self._thread.join(timeout=5)


class ApiService:
    """The whole service of a running shield: the view, the tokens (with the local admin
    token for root's command line), the application and its server, started at once."""

    def __init__(
        self,
        engine: EngineLike,
        events: EventSink,
        config: Config,
        *,
        config_path: str | None = None,
        store: StoreWriter | None = None,
        alerts: AlertDispatcher | None = None,
        port: int | None = None,
    ) -> None:
        history = store.history if store is not None else None
        self.view = ShieldView(engine, events, config_path=config_path, history=history)
        self.tokens = TokenStore(config.shield.state_dir)
        registry = shield_registry(engine.snapshot, store=store, alerts=alerts)
        self.server = ApiServer(create_app(self.view, self.tokens, metrics=registry), config.api, port=port)
        try:
            self.server.start()
        except BaseException:
            self.view.close()
            raise
        host, _ = config.api.address()
        local_url = self.server.url.replace(f"//{host}:", f"//{loopback_if_any(host)}:", 1)
        self.tokens.start_local(local_url, config.api.tls_cert)

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.tokens.stop_local()
        self.server.stop()
        self.view.close()
