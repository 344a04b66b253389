"""Compare-and-set leases in the database: one worker at a time per file, one state poll at a time.

An owner is ``host:pid:task``. A lease ends when released, when it expires, or at once when its owner
was a process on this host that no longer exists (a worker killed with SIGKILL), so a redelivered task
need not wait for the expiry on a single machine.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import and_, bindparam, or_, update
from sqlalchemy.engine import CursorResult
from sqlmodel import Session, col, select

from ingest.store.db import session_scope
from ingest.store.models import Lease, Operation, TrackFile, utcnow

HOST = socket.gethostname()
log = logging.getLogger(__name__)


def owner_id(task_id: str) -> str:
    return f"{HOST}:{os.getpid()}:{task_id}"


def _owner_dead(owner: str | None) -> bool:
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim_file(session: Session, file_id: int, owner: str, seconds: float) -> tuple[bool, float]:
    """Take the file's lease. Returns (taken, seconds until the current holder's lease ends)."""
    row = session.exec(select(TrackFile.lease_owner, TrackFile.lease_until).where(TrackFile.id == file_id)).one()
    current_owner, until = row
    now = utcnow()
    free = current_owner is None or until is None or until <= now or current_owner == owner
    if not free and not _owner_dead(current_owner):
        return False, max((until - now).total_seconds(), 0.0) if until else 0.0
    owner_match = (
        col(TrackFile.lease_owner).is_(None) if current_owner is None else (col(TrackFile.lease_owner) == current_owner)
    )
    # An UPDATE returns a CursorResult (it has rowcount); Session.execute is typed as a plain Result.
    result = cast(
        CursorResult[Any],
        session.execute(
            update(TrackFile)
            .where(and_(col(TrackFile.id) == file_id, owner_match))
            .values(lease_owner=owner, lease_until=now + timedelta(seconds=seconds))
        ),
    )
    session.commit()
    return result.rowcount == 1, 0.0


# Built once (the job's hot path): building and keying the statement per call cost more than running it.
_CLAIM_OF_OPERATION = (
    update(TrackFile)
    .where(
        and_(
            col(TrackFile.id)
            == select(Operation.file_id).where(col(Operation.id) == bindparam("b_op_id")).scalar_subquery(),
            or_(
                col(TrackFile.lease_owner).is_(None),
                col(TrackFile.lease_until) <= bindparam("b_now"),
                col(TrackFile.lease_owner) == bindparam("b_owner"),
            ),
        )
    )
    .values(lease_owner=bindparam("b_owner"), lease_until=bindparam("b_until"))
)


def claim_file_of_operation(session: Session, op_id: int, owner: str, seconds: float) -> bool:
    """Take the lease of the operation's file in one statement when it is free (the common case), not
    committed: the caller commits it with its own first write. False: no file yet, or someone holds it
    (``claim_file`` then tells a dead holder from a live one)."""
    now = utcnow()
    # On the session's connection: a plain UPDATE, without the ORM's bulk-update bookkeeping (no object of
    # this row is loaded yet), in the session's transaction all the same.
    result = session.connection().execute(
        _CLAIM_OF_OPERATION,
        {"b_op_id": op_id, "b_now": now, "b_owner": owner, "b_until": now + timedelta(seconds=seconds)},
    )
    return result.rowcount == 1


class _KeepAlive:
    """One daemon thread per process renews every lease held under ``kept_alive``.

    The registry maps a token per ``kept_alive`` body to (file_id, owner, seconds). While anything is
    held the thread runs a round every (shortest held lease)/3: one transaction, one UPDATE per (owner,
    seconds), its session closed before it sleeps again. Entering and leaving a body only touch the
    registry under a lock (no thread start, no join, no statement), so a job shorter than a third of its
    lease costs nothing here. A round that finds nothing held makes the thread idle (no timeout); the
    next ``hold`` wakes it, and so does one whose lease is shorter than the next round allows. The rounds
    of a busy worker rarely find the registry empty, so a ``hold`` seldom wakes the thread.

    A round that fails (database away) is logged at most once per ``ERROR_LOG_EVERY`` seconds and the
    next round comes as usual. The thread starts on first use; a forked child (a prefork pool process)
    has none of its parent's threads: ``os.register_at_fork`` empties its registry (the bodies that
    registered run in the parent) and its next ``kept_alive`` starts its own.
    """

    ERROR_LOG_EVERY = 60.0

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held: dict[int, tuple[int, str, float]] = {}
        self._tokens = itertools.count()
        self._next_round: float | None = None  # time.monotonic() of the next round; None: idle
        self._thread: threading.Thread | None = None
        self._last_error_log = -math.inf
        self.rounds = 0  # rounds run, failed and empty ones included (tests wait on it)
        self.failures = 0

    def hold(self, file_id: int, owner: str, seconds: float) -> int:
        with self._cond:
            token = next(self._tokens)
            self._held[token] = (file_id, owner, seconds)
            due = time.monotonic() + seconds / 3
            if self._next_round is None or due < self._next_round:
                self._next_round = due
                self._cond.notify_all()  # (all: tests may wait on the same condition)
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="lease-keepalive", daemon=True)
                try:
                    thread.start()
                except BaseException:
                    self._held.pop(token)
                    raise
                self._thread = thread
            return token

    def drop(self, token: int) -> None:
        """Nothing renews this body's lease from now on, except a round already in flight; waiting for that
        round could deadlock (its UPDATE may wait for a row lock the caller's open transaction holds), and
        what it writes is harmless: it only matches while the owner still holds the lease, and every caller
        releases the lease after the body."""
        with self._cond:
            self._held.pop(token, None)

    @property
    def idle(self) -> bool:
        """The thread runs and waits for a ``hold`` (its last round found nothing held)."""
        with self._cond:
            return self._thread is not None and self._next_round is None

    def wait_rounds(self, count: int, timeout: float) -> bool:
        """For tests: wait until ``count`` more rounds have run; False at the deadline."""
        with self._cond:
            target = self.rounds + count
            return self._cond.wait_for(lambda: self.rounds >= target, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._next_round is None or time.monotonic() < self._next_round:
                    self._cond.wait(None if self._next_round is None else self._next_round - time.monotonic())
                groups: dict[tuple[str, float], set[int]] = {}
                for file_id, owner, seconds in self._held.values():
                    groups.setdefault((owner, seconds), set()).add(file_id)
                self._next_round = time.monotonic() + min(s for _, s in groups) / 3 if groups else None
            try:
                if groups:
                    self._renew(groups)
            except Exception as exc:
                self.failures += 1
                now = time.monotonic()
                if now - self._last_error_log >= self.ERROR_LOG_EVERY:
                    self._last_error_log = now
                    log.warning(  # the first line: SQLAlchemy's message goes on with the statement
                        "could not renew %d file lease(s) (%s: %s); trying again every round",
                        sum(len(ids) for ids in groups.values()),
                        type(exc).__name__,
                        str(exc).partition("\n")[0][:300],
                    )
            with self._cond:
                self.rounds += 1
                self._cond.notify_all()

    @staticmethod
    def _renew(groups: dict[tuple[str, float], set[int]]) -> None:
        with session_scope() as s:
            for (owner, seconds), file_ids in groups.items():
                s.execute(
                    update(TrackFile)
                    .where(and_(col(TrackFile.id).in_(sorted(file_ids)), col(TrackFile.lease_owner) == owner))
                    .values(lease_until=utcnow() + timedelta(seconds=seconds))
                )


KEEPER = _KeepAlive()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=KEEPER._reset)


@contextmanager
def kept_alive(file_id: int, owner: str, seconds: float) -> Iterator[None]:
    """Renew the file's lease while the body runs: an upload of a large file may take longer than
    ``lease_seconds``, and a redelivered copy must not take the file over while this one is alive.
    The renewals come from the process's one keep-alive thread (``_KeepAlive``), every ``seconds``/3 or
    sooner."""
    token = KEEPER.hold(file_id, owner, seconds)
    try:
        yield
    finally:
        KEEPER.drop(token)


def release_file(session: Session, file_id: int, owner: str) -> None:
    session.execute(
        update(TrackFile)
        .where(and_(col(TrackFile.id) == file_id, col(TrackFile.lease_owner) == owner))
        .values(lease_owner=None, lease_until=None)
    )
    session.commit()


# Built once (the poll takes and releases its lease every cycle): the common case in one statement each.
_TAKE_FREE = (
    update(Lease)
    .where(
        col(Lease.name) == bindparam("b_name"),
        or_(col(Lease.until) <= bindparam("b_now"), col(Lease.owner) == bindparam("b_owner")),
    )
    .values(owner=bindparam("b_owner"), until=bindparam("b_until"))
)
_RELEASE = (
    update(Lease)
    .where(col(Lease.name) == bindparam("b_name"), col(Lease.owner) == bindparam("b_owner"))
    .values(until=datetime(1970, 1, 1, tzinfo=UTC))
)


def acquire(session: Session, name: str, owner: str, seconds: float) -> bool:
    """A named lease (e.g. ``poll_states``); True when this owner holds it now."""
    now = utcnow()
    until = now + timedelta(seconds=seconds)
    # The usual case: the row exists and is free (or ours). Otherwise: no row yet, or a holder that may be dead.
    params = {"b_name": name, "b_now": now, "b_owner": owner, "b_until": until}
    if session.connection().execute(_TAKE_FREE, params).rowcount == 1:
        session.commit()
        return True
    lease = session.get(Lease, name)
    if lease is None:
        session.add(Lease(name=name, owner=owner, until=until))
        try:
            session.commit()
            return True
        except Exception:  # another worker inserted it first
            session.rollback()
            return False
    free = or_(col(Lease.until) <= now, col(Lease.owner) == owner)
    if _owner_dead(lease.owner):  # its worker was killed: no need to wait for the expiry
        free = or_(free, col(Lease.owner) == lease.owner)
    # An UPDATE returns a CursorResult (it has rowcount); Session.execute is typed as a plain Result.
    result = cast(
        CursorResult[Any],
        session.execute(update(Lease).where(and_(col(Lease.name) == name, free)).values(owner=owner, until=until)),
    )
    session.commit()
    return result.rowcount == 1


def release(session: Session, name: str, owner: str) -> None:
    session.connection().execute(_RELEASE, {"b_name": name, "b_owner": owner})
    session.commit()
