"""Compare-and-set leases in the database: one worker at a time per file, one state poll at a time.

An owner is ``host:pid:task``. A lease ends when released, when it expires, or at once when its owner
was a process on this host that no longer exists (a worker killed with SIGKILL), so a redelivered task
need not wait for the expiry on a single machine.
"""

from __future__ import annotations

import os
import socket
import threading
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


@contextmanager
def kept_alive(file_id: int, owner: str, seconds: float) -> Iterator[None]:
    """Renew the file's lease while the body runs: an upload of a large file may take longer than
    ``lease_seconds``, and a redelivered copy must not take the file over while this one is alive."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 3):
            with session_scope() as s:
                s.execute(
                    update(TrackFile)
                    .where(and_(col(TrackFile.id) == file_id, col(TrackFile.lease_owner) == owner))
                    .values(lease_until=utcnow() + timedelta(seconds=seconds))
                )

    thread = threading.Thread(target=renew, name=f"lease-{file_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def release_file(session: Session, file_id: int, owner: str) -> None:
    session.execute(
        update(TrackFile)
        .where(and_(col(TrackFile.id) == file_id, col(TrackFile.lease_owner) == owner))
        .values(lease_owner=None, lease_until=None)
    )
    session.commit()


def acquire(session: Session, name: str, owner: str, seconds: float) -> bool:
    """A named lease (e.g. ``poll_states``); True when this owner holds it now."""
    now = utcnow()
    until = now + timedelta(seconds=seconds)
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
    session.execute(
        update(Lease)
        .where(and_(col(Lease.name) == name, col(Lease.owner) == owner))
        .values(until=datetime(1970, 1, 1, tzinfo=UTC))
    )
    session.commit()
