"""One file's history for `acr-ingest show`: its rows (a ref may live in several buckets) and every operation
that touched each, oldest first, with the per-name outcome a batch recorded for it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, cast, or_
from sqlmodel import Session, col, select

from ingest.store.models import Operation, OpKind, OpStatus, TrackFile
from ingest.store.values import BIGINT_MAX

BATCH_KINDS = (OpKind.DELETE_BATCH, OpKind.MOVE_BATCH)


@dataclass
class FileHistory:
    file: TrackFile
    # (operation, the outcomes a batch recorded for the names that mean this file, e.g. {"ref:CAT-1": "deleted"})
    operations: list[tuple[Operation, dict[str, str]]] = field(default_factory=list)


def named(args: Any, key: str) -> list[Any]:
    """The names a batch's ``args[key]`` holds (``refs``/``acr_ids``: text, ``ids``: integers a BIGINT holds),
    whatever shape the row has: a message sent by name that failed validation keeps its arguments as sent (a
    string, a number, an object, ids past BIGINT...), and a read path must neither crash nor send them to SQL."""
    value = args.get(key) if isinstance(args, dict) else None
    if not isinstance(value, list):
        return []
    if key == "ids":
        return [v for v in value if type(v) is int and 0 < v <= BIGINT_MAX]
    return [v for v in value if isinstance(v, str)]


def arg_ref(args: Any) -> str | None:
    """An operation's ``ref`` argument as text, or None when the row holds none (or something that is no ref)."""
    value = args.get("ref") if isinstance(args, dict) else None
    if isinstance(value, str):
        return value
    return str(value) if type(value) is int else None


def find_files(
    session: Session,
    *,
    ref: str | None = None,
    remote_id: int | None = None,
    acr_id: str | None = None,
    op_id: int | None = None,
    bucket_id: int | None = None,
) -> list[TrackFile]:
    """The rows named by one of: a ref, the API's id, an acr_id, or an operation (its file, or a batch's files)."""
    query = select(TrackFile)
    if ref is not None:
        query = query.where(TrackFile.ref == ref)
    elif remote_id is not None:
        query = query.where(TrackFile.remote_id == remote_id)
    elif acr_id is not None:
        query = query.where(TrackFile.acr_id == acr_id)
    elif op_id is not None:
        op = session.get(Operation, op_id)
        if op is None:
            return []
        if op.file_id is not None:
            query = query.where(TrackFile.id == op.file_id)
        else:
            args = op.args
            names = [col(TrackFile.ref).in_(named(args, "refs"))]
            names.append(col(TrackFile.remote_id).in_(named(args, "ids")))
            names.append(col(TrackFile.acr_id).in_(named(args, "acr_ids")))
            # The batch's files are in its bucket (a move's: or now in its target), as ``history`` reads it.
            buckets = [b for b in (op.bucket_id, _move_target(op)) if b is not None]
            in_bucket = or_(col(TrackFile.bucket_id).in_(buckets), col(TrackFile.posted_bucket_id).in_(buckets))
            query = query.where(or_(*names), in_bucket)
    else:
        raise ValueError("name the file by ref, remote_id, acr_id or op_id")
    if bucket_id is not None:
        query = query.where(TrackFile.bucket_id == bucket_id)
    return list(session.exec(query.order_by(col(TrackFile.id))).all())


def _names(row: TrackFile) -> set[str]:
    """How a batch job may have named this file (the keys of its ``result["outcomes"]``)."""
    names = {f"ref:{row.ref}"}
    if row.remote_id is not None:
        names.add(f"id:{row.remote_id}")
    if row.acr_id:
        names.add(f"acr_id:{row.acr_id}")
    return names


def _move_target(op: Operation) -> int | None:
    target = op.args.get("target_bucket_id") if isinstance(op.args, dict) and op.kind == OpKind.MOVE_BATCH else None
    return target if type(target) is int else None


def _batch_names_this_file(op: Operation, row: TrackFile, buckets: set[int]) -> set[str]:
    args = op.args
    found: set[str] = set()
    # A batch acts on its own bucket (a move: from it into its target), so it touched this file only if that is
    # a bucket the file was in: a ref means a file of the batch's own bucket, and an id or acr_id named by a batch
    # of an unrelated bucket meant another file (another account's API, or the emulators of a test run).
    if op.bucket_id not in buckets and _move_target(op) not in buckets:
        return found
    if row.ref in named(args, "refs") and op.bucket_id in buckets:
        found.add(f"ref:{row.ref}")
    if row.remote_id is not None and row.remote_id in named(args, "ids"):
        found.add(f"id:{row.remote_id}")
    if row.acr_id and row.acr_id in named(args, "acr_ids"):
        found.add(f"acr_id:{row.acr_id}")
    return found


def _no_outcome(op: Operation) -> str:
    """What a name without a recorded outcome means: still to come while the batch runs; once it has ended
    (a batch refused as bad input never ran), nothing was done for it."""
    if op.status in OpStatus.final():
        return f"(not done: the batch {op.status})"
    return "(pending)"


def history(session: Session, row: TrackFile) -> FileHistory:
    own = list(session.exec(select(Operation).where(Operation.file_id == row.id)).all())
    buckets = {b for b in (row.bucket_id, row.posted_bucket_id, *(op.bucket_id for op in own)) if b is not None}
    # Batches name files inside their JSON args: narrow by the names' text (as the JSON column stores it), then
    # decide exactly in Python.
    needles = [json.dumps(n.split(":", 1)[1])[1:-1] for n in _names(row)]
    candidates = session.exec(
        select(Operation).where(
            col(Operation.kind).in_(BATCH_KINDS),
            col(Operation.file_id).is_(None),
            or_(*(cast(Operation.args, String).contains(n) for n in needles)),
        )
    ).all()
    entries: list[tuple[Operation, dict[str, str]]] = [(op, {}) for op in own]
    for op in candidates:
        names = _batch_names_this_file(op, row, buckets)
        if names:
            outcomes = op.result.get("outcomes") if isinstance(op.result, dict) else None
            outcomes = outcomes if isinstance(outcomes, dict) else {}
            missing = _no_outcome(op)
            entries.append((op, {n: str(outcomes.get(n, missing)) for n in sorted(names)}))
    entries.sort(key=lambda e: e[0].id or 0)
    return FileHistory(row, entries)
