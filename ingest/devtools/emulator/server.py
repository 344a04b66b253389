"""Serve the emulator: a Werkzeug threaded server in a background thread, or blocking in ``serve()``."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from ingest.devtools.emulator.app import API_PREFIX, EmulatorApp
from ingest.devtools.emulator.faults import Faults
from ingest.devtools.emulator.profiles import get_profile

DEFAULT_TOKENS = frozenset({"test-token"})
# Many workers open a fresh connection per request (Werkzeug answers "Connection: close"):
# a deep accept queue keeps bursts from being refused before a handler thread picks them up.
LISTEN_BACKLOG = 1024


class _Handler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Quiet by default. When on, Werkzeug logs the request line only (never headers, so
        # never the Authorization token).
        if getattr(self.server, "access_log", False):
            super().log_request(code, size)


class _Server(ThreadedWSGIServer):
    access_log = False


def _listen(host: str, port: int) -> socket.socket:
    # Bound here rather than by Werkzeug, which prints and calls sys.exit() when the port is taken;
    # a library caller gets the OSError instead.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)


class Emulator:
    """An in-process ACRCloud Console API v2 (bucket files) over real HTTP on loopback.

    >>> with Emulator(tokens={"t"}).start() as emu:
    ...     emu.url  # 'http://127.0.0.1:<port>/api'
    """

    def __init__(
        self,
        tokens: Iterable[str] = DEFAULT_TOKENS,
        processing_delay: float = 0.2,
        buckets: Iterable[int] | None = None,
        rate_limit: float | None = None,
        seed: int | None = None,
        *,
        access_log: bool = False,
        profile: str = "lenient",
        rate_window: float = 1.0,
    ) -> None:
        """``rate_limit`` requests per second on average over ``rate_window`` seconds (see ``RateLimiter``)."""
        if isinstance(tokens, str):
            raise TypeError("tokens is a set of strings, not one string")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be > 0 requests per second, or None for unlimited")
        self._app = EmulatorApp(
            tokens=tokens,
            processing_delay=processing_delay,
            buckets=buckets,
            rate_limit=rate_limit,
            seed=seed,
            profile=get_profile(profile),
            rate_window=rate_window,
        )
        self._app.on_reset = self.reset
        self.access_log = access_log
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------------

    def _make_server(self, host: str, port: int) -> _Server:
        sock = _listen(host, port)
        try:
            # Werkzeug dups the descriptor (fd=...): ours is closed right after.
            server = _Server(host, port, self._app, handler=_Handler, fd=sock.fileno())
        finally:
            sock.close()
        server.access_log = self.access_log
        return server

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Emulator:
        """Serve in a daemon thread; returns self. ``port=0`` picks a free port (see ``url``)."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("emulator already started")
            server = self._make_server(host, port)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"acr-emulator:{server.port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving (idempotent). Requests in flight finish in their own daemon threads."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        if thread is not None:
            thread.join(timeout=5)
        server.server_close()

    def serve_forever(self, host: str = "127.0.0.1", port: int = 8080, *, announce: bool = False) -> None:
        """Serve in the calling thread until Ctrl-C."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("emulator already started")
            self._server = server = self._make_server(host, port)
        if announce:
            print(f"ACRCloud emulator on {self.url} (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            server.serve_forever(poll_interval=0.5)  # returns on KeyboardInterrupt
        finally:
            with self._lock:
                self._server = None
            server.server_close()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return int(self._server.port)

    @property
    def profile(self) -> str:
        """The name of the profile this emulator answers in (fixed at construction)."""
        return self._app.profile.name

    @property
    def url(self) -> str:
        """The API base URL, e.g. ``http://127.0.0.1:54321/api``."""
        if self._server is None:
            raise RuntimeError("emulator not started")
        host = self._server.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._server.port}{API_PREFIX}"

    def __enter__(self) -> Emulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- knobs and inspection -------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._app.faults

    def set_faults(self, **kw: Any) -> None:
        self._app.faults.update(**kw)

    def set_tokens(self, tokens: Iterable[str]) -> None:
        if isinstance(tokens, str):
            raise TypeError("tokens is a set of strings, not one string")
        # One assignment: a request sees the old set or the new one, never a mix.
        self._app.tokens = frozenset(tokens)

    @property
    def tokens(self) -> frozenset[str]:
        return self._app.tokens

    @property
    def processing_delay(self) -> float:
        return self._app.processing_delay

    @processing_delay.setter
    def processing_delay(self, seconds: float) -> None:
        # Applies to files created from now on.
        self._app.processing_delay = seconds

    @property
    def rate_limit(self) -> float | None:
        return self._app.limiter.limit

    @rate_limit.setter
    def rate_limit(self, value: float | None) -> None:
        if value is not None and value <= 0:
            raise ValueError("rate_limit must be > 0 requests per second, or None for unlimited")
        self._app.limiter.limit = value

    def stats(self) -> dict[str, Any]:
        return self._app.stats.snapshot()

    def files(self, bucket_id: int | None = None) -> list[dict[str, Any]]:
        """Snapshot of the stored files (list shape, current state), by id."""
        return self._app.store.snapshot(bucket_id)

    def received_bytes(self, bucket_id: int | None = None) -> dict[int, int]:
        """Bytes of the file part each stored file was uploaded with, by id (not part of the API's answers)."""
        return self._app.store.received_bytes(bucket_id)

    def data_types(self, bucket_id: int | None = None) -> dict[int, str]:
        """The data_type each stored file was uploaded as, by id (not part of the API's answers)."""
        return self._app.store.data_types(bucket_id)

    def reset(self) -> None:
        """Drop all files, counters, rate-limit windows and faults; re-seed the dice."""
        self._app.reset()


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    tokens: Iterable[str] = DEFAULT_TOKENS,
    processing_delay: float = 0.2,
    rate_limit: float | None = None,
    buckets: Iterable[int] | None = None,
    seed: int | None = None,
    faults: Mapping[str, Any] | None = None,
    access_log: bool = False,
    announce: bool = False,
    profile: str = "lenient",
) -> None:
    """Serve the emulator on ``host:port`` until Ctrl-C (base URL ``http://host:port/api``)."""
    emu = Emulator(
        tokens=tokens,
        processing_delay=processing_delay,
        buckets=buckets,
        rate_limit=rate_limit,
        seed=seed,
        access_log=access_log,
        profile=profile,
    )
    if faults:
        emu.set_faults(**faults)
    emu.serve_forever(host, port, announce=announce)
