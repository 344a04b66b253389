"""Child processes for the demo, the tests and the benchmarks: a Celery worker or beat (or any command)
in a session of its own, so one signal to its group stops it and everything it forked, and a private
``redis-server`` on a free port (plain, or TLS only with a self-signed certificate made by ``openssl``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ChildProcess", "RedisServer", "celery_command", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def celery_command(*args: str, app: str = "ingest.worker") -> list[str]:
    """``python -m celery -A <app> ...`` with this interpreter (works from a venv without activating it)."""
    return [sys.executable, "-m", "celery", "-A", app, *args]


class ChildProcess:
    """A command in its own session, its output in ``log`` (its stdout in ``stdout_log``, if given)."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdout_log: Path | None = None,
    ) -> None:
        self.name = name
        self.log = log
        self.stdout_log = stdout_log  # stdout apart from stderr (in ``log``) when given
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out, (stdout_log or log).open("ab") as stdout:
            self.proc = subprocess.Popen(
                list(command),
                env=dict(env) if env is not None else None,
                cwd=cwd,
                stdout=stdout if stdout_log is not None else out,
                stderr=subprocess.STDOUT if stdout_log is None else out,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def check(self) -> None:
        """Raise with the end of its log if the process has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")

    def signal(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole group (a prefork worker's children included)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it exited in between
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (Celery's warm shutdown: running tasks finish, reserved ones go back), then SIGKILL."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.proc.wait()


class RedisServer:
    """A ``redis-server`` of our own on a loopback port. ``durable`` keeps an append-only file, so a stop
    and a start (a broker restart) keep the queues, as a production broker with persistence does."""

    def __init__(self, workdir: Path, *, port: int | None = None, durable: bool = False, tls: bool = False) -> None:
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port = port or free_port()
        self.workdir = workdir
        self.durable = durable
        self.child: ChildProcess | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_file: Path | None = self._certificate() if tls else None

    def _certificate(self) -> Path:
        """A self-signed certificate for 127.0.0.1 (it is its own CA: clients trust it by ``ssl_ca_certs``)."""
        if shutil.which("openssl") is None:
            raise RuntimeError("a TLS redis-server needs openssl for its certificate (Debian: apt-get install openssl)")
        cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return cert

    def start(self, timeout: float = 10) -> RedisServer:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        listen = ["--port", str(self.port)]
        if self.ca_file is not None:  # TLS only: a plain client cannot talk to it by mistake
            key = self.ca_file.with_name("key.pem")
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.ca_file),
                      "--tls-key-file", str(key), "--tls-ca-cert-file", str(self.ca_file),
                      "--tls-auth-clients", "no"]  # fmt: skip
        assert self.exe is not None
        self.child = ChildProcess(
            f"redis-{self.port}",
            [
                self.exe,
                *listen,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persistence,
                "--maxmemory-policy",
                "noeviction",
                "--dir",
                str(self.workdir),
                "--databases",
                "32",
            ],
            log=self.workdir / f"redis-{self.port}.log",
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            self.child.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout} s")
            time.sleep(0.02)
        return self

    def url(self, db: int = 0) -> str:
        if self.ca_file is not None:
            return f"rediss://127.0.0.1:{self.port}/{db}?ssl_ca_certs={self.ca_file}"
        return f"redis://127.0.0.1:{self.port}/{db}"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                s = raw
                if self.ca_file is not None:
                    s = ssl.create_default_context(cafile=str(self.ca_file)).wrap_socket(
                        raw, server_hostname="127.0.0.1"
                    )
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.child is not None:
            self.child.stop(timeout=10)
            self.child = None
