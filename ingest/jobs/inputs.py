"""Validation of job arguments, shared by the producer (at enqueue time) and the worker (again, since a
message sent by another system may be wrong). Every error names the field and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from ingest.api.client import FILE_DATA_TYPES
from ingest.jobs.errors import InputError
from ingest.jobs.identity import REF_KEY
from ingest.redact import mask_url_credentials
from ingest.settings import Settings

ACR_ID_RE = re.compile(r"^[0-9a-f]{32}$")
REF_MAX = 255
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class UploadUrlJob(BaseModel):
    model_config = ConfigDict(frozen=True)
    url: str
    bucket_id: int
    title: str
    user_defined: dict[str, Any]
    ref: str


class UploadFileJob(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str  # relative to the media root
    bucket_id: int
    title: str
    user_defined: dict[str, Any]
    ref: str
    data_type: str = "audio"


class UpdateMetaJob(BaseModel):
    model_config = ConfigDict(frozen=True)
    bucket_id: int
    ref: str | None = None
    file_id: int | None = None
    acr_id: str | None = None
    title: str | None = None
    user_defined: dict[str, Any] | None = None


class Targets(BaseModel):
    """Files named by upstream ref, API id or acr_id (deduplicated, order kept)."""

    model_config = ConfigDict(frozen=True)
    refs: list[str] = []
    ids: list[int] = []
    acr_ids: list[str] = []

    @property
    def count(self) -> int:
        return len(self.refs) + len(self.ids) + len(self.acr_ids)


class DeleteBatchJob(BaseModel):
    model_config = ConfigDict(frozen=True)
    bucket_id: int
    targets: Targets


class MoveBatchJob(BaseModel):
    model_config = ConfigDict(frozen=True)
    bucket_id: int
    target_bucket_id: int
    targets: Targets


# --- field checks ------------------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def add(self, field: str, message: str) -> None:
        self.errors.setdefault(field, message)

    def raise_if_any(self) -> None:
        if self.errors:
            raise InputError(self.errors)


def _bucket(c: _Collector, field: str, value: Any, settings: Settings, *, default: bool = True) -> int:
    if value is None and default and settings.default_bucket is not None:
        return settings.default_bucket
    if value is None:
        c.add(field, "required: give the numeric bucket id (or set ACR_INGEST_DEFAULT_BUCKET)")
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        c.add(field, f"must be a positive integer bucket id, got {type(value).__name__}")
        return 0
    text = str(value).strip()
    if not text.isdigit() or int(text) <= 0:
        c.add(field, f"must be a positive integer bucket id, got {value!r}")
        return 0
    return int(text)


def _title(c: _Collector, value: Any, settings: Settings, *, required: bool = True) -> str | None:
    if value is None:
        if required:
            c.add("title", "required: give the track title")
        return None
    if not isinstance(value, str):
        c.add("title", f"must be a string, got {type(value).__name__}")
        return None
    title = value.strip()
    if not title:
        c.add("title", "must not be empty: give the track title")
    elif len(title) > settings.max_title_length:
        c.add("title", f"is {len(title)} characters; shorten it to {settings.max_title_length} or fewer")
    elif _CONTROL_RE.search(title):
        c.add("title", "contains control characters (newline, tab, NUL...); remove them")
    return title


def _user_defined(c: _Collector, value: Any, settings: Settings) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            c.add("user_defined", 'must be a JSON object such as {"artist": "..."}; the text is not JSON')
            return None
    if not isinstance(value, dict):
        c.add("user_defined", f'must be a JSON object such as {{"artist": "..."}}, got {type(value).__name__}')
        return None
    if REF_KEY in value:
        c.add("user_defined", f"{REF_KEY!r} is reserved (acr-ingest keeps the ref there); rename that key")
        return None
    try:
        size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError):
        c.add("user_defined", "must hold only JSON values (strings, numbers, booleans, lists, objects)")
        return None
    if size > settings.max_user_defined_bytes:
        c.add(
            "user_defined",
            f"is {size} bytes as JSON; keep it under {settings.max_user_defined_bytes} "
            "(ACR_INGEST_MAX_USER_DEFINED_BYTES)",
        )
        return None
    return value


def _ref(c: _Collector, value: Any, *, field: str = "ref") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        c.add(field, f"must be a string, got {type(value).__name__}")
        return None
    ref = str(value).strip()
    if not ref:
        c.add(field, "must not be empty: give the upstream catalog id, or omit it to have one generated")
    elif len(ref) > REF_MAX:
        c.add(field, f"is {len(ref)} characters; keep it to {REF_MAX}")
    elif _CONTROL_RE.search(ref) or "," in ref:
        c.add(field, "must not contain commas or control characters")
    else:
        return ref
    return None


def generated_ref(kind: str, source: str) -> str:
    """A ref derived from the source, so re-sending the same job without a ref never duplicates."""
    return f"auto-{hashlib.sha256(f'{kind}:{source}'.encode()).hexdigest()[:24]}"


def _http_url(c: _Collector, value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        c.add("url", "required: give the http(s) URL the API should download the audio from")
        return None
    if not isinstance(value, str):
        c.add("url", f"must be a string, got {type(value).__name__}")
        return None
    url = value.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        c.add("url", f"must be an absolute http:// or https:// URL, got {mask_url_credentials(url)[:100]!r}")
        return None
    if parts.username is not None or parts.password is not None:
        # It would be stored in the operation's row, in the broker message and in Flower's task arguments.
        c.add("url", "must not carry credentials (user:password@host): use a signed URL or a source that needs none")
        return None
    if len(url) > 2048 or any(ch.isspace() for ch in url):
        c.add("url", "must be at most 2048 characters with no spaces (percent-encode them)")
        return None
    return url


def resolve_media_path(value: Any, settings: Settings, c: _Collector | None = None) -> tuple[Path, str] | None:
    """The real path of a file under the media root, and its path relative to it.

    Refuses ``..`` and symlinks that lead outside the root, missing, unreadable and empty files.
    """
    own = c or _Collector()
    field = "path"
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        own.add(field, "required: give the audio file's path under the media root (ACR_INGEST_MEDIA_ROOT)")
        return _finish(own, c, None)
    root = Path(settings.media_root).resolve()
    candidate = Path(value)
    if not candidate.is_absolute():
        candidate = root / candidate
    real = candidate.resolve()
    if not real.is_relative_to(root):
        own.add(field, f"{str(value)!r} is outside the media root {str(root)!r}; copy the file under it")
        return _finish(own, c, None)
    if not real.exists():
        own.add(field, f"{str(value)!r} does not exist under the media root {str(root)!r}")
    elif not real.is_file():
        own.add(field, f"{str(value)!r} is not a regular file")
    elif not os.access(real, os.R_OK):
        own.add(field, f"{str(value)!r} is not readable by this process; fix its permissions")
    elif real.stat().st_size == 0:
        own.add(field, f"{str(value)!r} is empty (0 bytes); give a real audio file")
    else:
        return _finish(own, c, (real, real.relative_to(root).as_posix()))
    return _finish(own, c, None)


def _finish(own: _Collector, outer: _Collector | None, result: tuple[Path, str] | None) -> tuple[Path, str] | None:
    if outer is None:
        own.raise_if_any()
    return result


def _unknown_keys(c: _Collector, args: dict[str, Any], allowed: set[str]) -> None:
    for key in args:
        if key not in allowed:
            c.add(key, f"unknown argument; allowed: {', '.join(sorted(allowed))}")


# --- the jobs ----------------------------------------------------------------------------------

UPLOAD_URL_ARGS = {"url", "bucket_id", "title", "user_defined", "ref"}
UPLOAD_FILE_ARGS = {"path", "bucket_id", "title", "user_defined", "ref", "data_type"}
UPDATE_META_ARGS = {"bucket_id", "ref", "file_id", "acr_id", "title", "user_defined"}
DELETE_ARGS = {"bucket_id", "refs", "ids", "acr_ids"}
MOVE_ARGS = {"bucket_id", "target_bucket_id", "refs", "ids", "acr_ids"}


def validate_upload_url(args: dict[str, Any], settings: Settings) -> UploadUrlJob:
    c = _Collector()
    _unknown_keys(c, args, UPLOAD_URL_ARGS)
    url = _http_url(c, args.get("url"))
    bucket = _bucket(c, "bucket_id", args.get("bucket_id"), settings)
    title = _title(c, args.get("title"), settings)
    ud = _user_defined(c, args.get("user_defined"), settings)
    ref = _ref(c, args.get("ref"))
    c.raise_if_any()
    assert url is not None and title is not None
    return UploadUrlJob(
        url=url,
        bucket_id=bucket,
        title=title,
        user_defined=ud or {},
        ref=ref or generated_ref("audio_url", url),
    )


def validate_upload_file(args: dict[str, Any], settings: Settings) -> UploadFileJob:
    c = _Collector()
    _unknown_keys(c, args, UPLOAD_FILE_ARGS)
    resolved = resolve_media_path(args.get("path"), settings, c)
    bucket = _bucket(c, "bucket_id", args.get("bucket_id"), settings)
    title = _title(c, args.get("title"), settings)
    ud = _user_defined(c, args.get("user_defined"), settings)
    ref = _ref(c, args.get("ref"))
    data_type = args.get("data_type") or "audio"
    if data_type not in FILE_DATA_TYPES:
        c.add("data_type", f"must be one of {', '.join(FILE_DATA_TYPES)}, got {data_type!r}")
    c.raise_if_any()
    assert resolved is not None and title is not None
    rel = resolved[1]
    return UploadFileJob(
        path=rel,
        bucket_id=bucket,
        title=title,
        user_defined=ud or {},
        ref=ref or generated_ref(data_type, rel),
        data_type=data_type,
    )


def _file_id(c: _Collector, field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        c.add(field, f"must be a positive integer file id from the API, got {value!r}")
        return None
    return int(str(value).strip())


def _acr_id(c: _Collector, field: str, value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower() if isinstance(value, str) else ""
    if not ACR_ID_RE.match(text):
        c.add(field, f"must be a 32-character hex acr_id, got {value!r}")
        return None
    return text


def validate_update_meta(args: dict[str, Any], settings: Settings) -> UpdateMetaJob:
    c = _Collector()
    _unknown_keys(c, args, UPDATE_META_ARGS)
    bucket = _bucket(c, "bucket_id", args.get("bucket_id"), settings)
    ref = _ref(c, args.get("ref"))
    file_id = _file_id(c, "file_id", args.get("file_id"))
    acr_id = _acr_id(c, "acr_id", args.get("acr_id"))
    named = [k for k in ("ref", "file_id", "acr_id") if args.get(k) is not None]
    if len(named) != 1:
        c.add(
            "ref",
            "name the file by exactly one of ref, file_id or acr_id" + (f" (got {', '.join(named)})" if named else ""),
        )
    title = _title(c, args.get("title"), settings, required=False)
    ud = _user_defined(c, args.get("user_defined"), settings)
    if args.get("title") is None and args.get("user_defined") is None:
        c.add("title", "nothing to update: give title and/or user_defined")
    c.raise_if_any()
    return UpdateMetaJob(bucket_id=bucket, ref=ref, file_id=file_id, acr_id=acr_id, title=title, user_defined=ud)


def _targets(c: _Collector, args: dict[str, Any], settings: Settings) -> Targets:
    def as_list(field: str) -> list[Any]:
        value = args.get(field)
        if value is None:
            return []
        if isinstance(value, str):  # "a,b , c" from a CLI or another system
            value = [part for part in value.split(",")]
        if not isinstance(value, list | tuple):
            c.add(field, f"must be a list, got {type(value).__name__}")
            return []
        return list(value)

    refs: dict[str, None] = {}
    ids: dict[int, None] = {}
    acr_ids: dict[str, None] = {}
    for i, v in enumerate(as_list("refs")):
        if (r := _ref(c, v, field=f"refs[{i}]")) is not None:
            refs[r] = None
    for i, v in enumerate(as_list("ids")):
        if (n := _file_id(c, f"ids[{i}]", v)) is not None:
            ids[n] = None
    for i, v in enumerate(as_list("acr_ids")):
        if (a := _acr_id(c, f"acr_ids[{i}]", v)) is not None:
            acr_ids[a] = None
    total = len(refs) + len(ids) + len(acr_ids)
    if total == 0 and not c.errors:
        c.add("refs", "no files named: give refs, ids and/or acr_ids")
    elif total > settings.max_ids_per_job:
        c.add("refs", f"{total} files in one job; split it into jobs of at most {settings.max_ids_per_job}")
    return Targets(refs=list(refs), ids=list(ids), acr_ids=list(acr_ids))


def validate_delete_batch(args: dict[str, Any], settings: Settings) -> DeleteBatchJob:
    c = _Collector()
    _unknown_keys(c, args, DELETE_ARGS)
    bucket = _bucket(c, "bucket_id", args.get("bucket_id"), settings)
    targets = _targets(c, args, settings)
    c.raise_if_any()
    return DeleteBatchJob(bucket_id=bucket, targets=targets)


def validate_move_batch(args: dict[str, Any], settings: Settings) -> MoveBatchJob:
    c = _Collector()
    _unknown_keys(c, args, MOVE_ARGS)
    bucket = _bucket(c, "bucket_id", args.get("bucket_id"), settings)
    target = _bucket(c, "target_bucket_id", args.get("target_bucket_id"), settings, default=False)
    targets = _targets(c, args, settings)
    if not c.errors and bucket == target:
        c.add("target_bucket_id", "is the same as bucket_id; give a different target bucket")
    c.raise_if_any()
    return MoveBatchJob(bucket_id=bucket, target_bucket_id=target, targets=targets)


VALIDATORS = {
    "upload_url": validate_upload_url,
    "upload_file": validate_upload_file,
    "update_meta": validate_update_meta,
    "delete_batch": validate_delete_batch,
    "move_batch": validate_move_batch,
}
