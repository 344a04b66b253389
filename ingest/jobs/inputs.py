"""Validation of job arguments, shared by the producer (at enqueue time) and the worker (again, since a
message sent by another system may be wrong). Every error names the field and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from ingest.api.client import FILE_DATA_TYPES
from ingest.fingerprints import unavailable_reason
from ingest.jobs.errors import InputError
from ingest.jobs.identity import REF_KEY
from ingest.redact import mask_url_credentials
from ingest.settings import Settings
from ingest.store.values import BIGINT_MAX

ACR_ID_RE = re.compile(r"^[0-9a-f]{32}$")
REF_MAX = 255
# Exactly str.isspace (checked over every code point), without a Python-level loop over the characters.
_SPACE_RE = re.compile(r"\s")
_DIGITS_RE = re.compile(r"^[0-9]{1,19}$")  # ASCII digits only: str.isdigit also takes "²", which int() refuses
# Characters a reader cannot see or that change how the text around them reads: control (Cc), format (Cf:
# bidi overrides, zero-width spaces, BOM...), line and paragraph separators. Zs spaces are text (no-break).
_HIDDEN_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}
# Format characters a title may hold after a visible one: joiners of emoji sequences and of Indic and
# Persian scripts (ZWJ, ZWNJ) and the tags of subdivision flags. Never in a ref, URL or path (identifiers).
_TITLE_JOINERS = {"\u200c", "\u200d", *map(chr, range(0xE0020, 0xE0080))}
# Letters and symbols that show as nothing (Hangul fillers, braille blank, combining grapheme joiner).
_BLANK = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u034f"}
_CONTROL_NAMES = {0: "NUL", 9: "TAB", 10: "LINE FEED", 13: "CARRIAGE RETURN", 27: "ESCAPE", 127: "DELETE"}
# user_defined is flat metadata; deeper nesting is a mistake (and 50k levels would exhaust the stack).
MAX_USER_DEFINED_DEPTH = 32
_JSON_VALUES_ONLY = (
    "must hold only JSON values (strings, numbers, booleans, lists, objects; no NaN or Infinity, text as valid UTF-8)"
)


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
    # What the worker posts: the file as it is, or (audio only) its fingerprint made on the worker.
    send_as: str = "audio"


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
        # A field name comes from the message (an unknown argument): keep it short and printable.
        self.errors.setdefault(_show_text(field, 60), message)

    def raise_if_any(self) -> None:
        if self.errors:
            raise InputError(self.errors)


def _show_text(text: str, limit: int = 100) -> str:
    """``text`` as it can be shown and stored: printable, bounded."""
    if len(text) <= limit and text.isprintable():
        return text
    return _show(text, limit)[1:-1]


def _show(value: Any, limit: int = 100) -> str:
    """A bounded repr of any value (a 5000-digit integer has no repr in Python 3.11+)."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str | bytes | list | dict | tuple) and len(value) > 4 * limit:
        value = value[: 4 * limit] if isinstance(value, str | bytes) else type(value).__name__
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"a {type(value).__name__}"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def code_point(ch: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE)``: a character named so it can be found and removed."""
    name = unicodedata.name(ch, "") or _CONTROL_NAMES.get(ord(ch), "a control character")
    return f"U+{ord(ch):04X} ({name})"


def hidden_character(text: str, allowed: set[str] | frozenset[str] = frozenset()) -> str | None:
    """The first control, format or line-separator character of ``text`` (as ``code_point``), else None.
    ``allowed`` characters pass after the first character. ``isprintable`` is the fast path (C speed)."""
    if text.isprintable():
        return None
    for i, ch in enumerate(text):
        if unicodedata.category(ch) in _HIDDEN_CATEGORIES and not (i and ch in allowed):
            return code_point(ch)
    return None


def _visible(text: str) -> bool:
    """Whether some character of ``text`` shows (not only spaces, format characters, marks or blanks)."""
    return any(
        not ch.isspace() and ch not in _BLANK and unicodedata.category(ch) not in ("Cf", "Mn", "Me") for ch in text
    )


def _got(value: Any) -> str:
    """What a field was given, for its message: the type of a value of the wrong type (``bytes``), else the
    value itself (bounded)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return type(value).__name__
    return _show(value)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no database or HTTP body takes it
        return False
    return True


def _api_id(value: Any) -> int | None:
    """A positive integer an id column holds (up to BIGINT), from an int or its ASCII digits, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _DIGITS_RE.match(value.strip()):
        number = int(value.strip())
    else:
        return None
    return number if 0 < number <= BIGINT_MAX else None


def _bucket(c: _Collector, field: str, value: Any, settings: Settings, *, default: bool = True) -> int:
    if value is None and default and settings.default_bucket is not None:
        return settings.default_bucket
    if value is None:
        c.add(field, "required: give the numeric bucket id (or set ACR_INGEST_DEFAULT_BUCKET)")
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        c.add(field, f"must be a positive integer bucket id, got {type(value).__name__}")
        return 0
    number = _api_id(value)
    if number is None:
        c.add(field, f"must be a positive integer bucket id of at most {BIGINT_MAX}, got {_show(value)}")
        return 0
    return number


def _title(c: _Collector, value: Any, settings: Settings, *, required: bool = True) -> str | None:
    if value is None:
        if required:
            c.add("title", "required: give the track title")
        return None
    if not isinstance(value, str):
        c.add("title", f"must be a string (the track title), got {type(value).__name__}")
        return None
    title = value.strip()
    if not _utf8(title):
        c.add("title", "is not valid Unicode text (a lone surrogate); send it as UTF-8")
    elif not title:
        c.add("title", "must not be empty: give the track title")
    elif len(title) > settings.max_title_length:
        c.add("title", f"is {len(title)} characters; shorten it to {settings.max_title_length} or fewer")
    elif hidden := hidden_character(title, _TITLE_JOINERS):
        c.add("title", f"contains {hidden}; remove it (no control or invisible format characters)")
    elif not _visible(title):
        c.add("title", "must not be empty: it holds only invisible characters; give the track title")
    return title


def _user_defined(c: _Collector, value: Any, settings: Settings) -> dict[str, Any] | None:
    if value is None:
        return None
    limit = settings.max_user_defined_bytes
    if isinstance(value, str):
        if len(value) > limit:  # over the limit before parsing it (characters are at least a byte each)
            c.add("user_defined", f"is over {limit} bytes; keep it under {limit} (ACR_INGEST_MAX_USER_DEFINED_BYTES)")
            return None
        try:
            value = json.loads(value, parse_constant=_no_constant)
        except RecursionError:
            c.add("user_defined", f"is nested too deeply; keep it to {MAX_USER_DEFINED_DEPTH} levels")
            return None
        except _NotJsonNumber:
            c.add("user_defined", _JSON_VALUES_ONLY)
            return None
        except ValueError:
            c.add("user_defined", 'must be a JSON object such as {"artist": "..."}; the text is not JSON')
            return None
    if not isinstance(value, dict):
        c.add("user_defined", f'must be a JSON object such as {{"artist": "..."}}, got {type(value).__name__}')
        return None
    if _depth_over(value, MAX_USER_DEFINED_DEPTH):
        c.add("user_defined", f"is nested too deeply; keep it to {MAX_USER_DEFINED_DEPTH} levels")
        return None
    if bad_key := _non_text_key(value):
        key = bad_key[0]
        if isinstance(key, str):
            c.add("user_defined", f"key {_show(key, 60)} contains {hidden_character(key)}; remove it")
        else:
            c.add("user_defined", f"keys must be text, as in JSON; got {key!r} ({type(key).__name__}): quote it")
        return None
    if REF_KEY in value:
        c.add("user_defined", f"{REF_KEY!r} is reserved (acr-ingest keeps the ref there); rename that key")
        return None
    try:
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError, RecursionError):
        c.add("user_defined", _JSON_VALUES_ONLY)
        return None
    if size > settings.max_user_defined_bytes:
        c.add(
            "user_defined",
            f"is {size} bytes as JSON; keep it under {settings.max_user_defined_bytes} "
            "(ACR_INGEST_MAX_USER_DEFINED_BYTES)",
        )
        return None
    return value


class _NotJsonNumber(ValueError):
    """NaN or Infinity: Python's json reads them, but no database or API JSON takes them."""


def _no_constant(name: str) -> Any:
    raise _NotJsonNumber(name)


def _non_text_key(value: Any) -> tuple[Any] | None:
    """(the first key of an object, at any depth, that is not text (a Python dict may have any) or holds a
    control or format character), else None. Values are the catalog's own data, kept as given."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str) or hidden_character(key):
                    return (key,)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _depth_over(value: Any, limit: int) -> bool:
    """Whether lists/objects nest deeper than ``limit`` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _ref(c: _Collector, value: Any, *, field: str = "ref") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        c.add(field, f"must be a string (the upstream catalog id), got {type(value).__name__}")
        return None
    if isinstance(value, int) and _api_id(value) is None:
        c.add(field, f"must be a string of at most {REF_MAX} characters, got {_show(value)}")
        return None
    ref = str(value).strip()
    if not _utf8(ref):
        c.add(field, "is not valid Unicode text (a lone surrogate); send it as UTF-8")
    elif not ref:
        c.add(field, "must not be empty: give the upstream catalog id, or omit it to have one generated")
    elif len(ref) > REF_MAX:
        c.add(field, f"is {len(ref)} characters; keep it to {REF_MAX}")
    elif hidden := hidden_character(ref):
        c.add(field, f"contains {hidden}; remove it (no control or invisible format characters)")
    elif "," in ref:
        c.add(field, "must not contain commas (a list of refs is comma-separated)")
    elif not _visible(ref):
        c.add(field, "must not be empty: it holds only invisible characters; give the upstream catalog id")
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
        c.add("url", f"must be a string (the http(s) URL), got {type(value).__name__}")
        return None
    url = value.strip()
    if len(url) > 2048 or _SPACE_RE.search(url):
        c.add("url", "must be at most 2048 characters with no spaces (percent-encode them)")
        return None
    if not _utf8(url):
        c.add("url", "must not contain control characters or invalid Unicode (a lone surrogate); percent-encode them")
        return None
    if hidden := hidden_character(url):
        c.add("url", f"must not contain control characters or invisible format characters ({hidden}); encode it")
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (parsing it is the check: a port out of range raises)
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range"...
        c.add("url", f"is not a valid URL ({exc}): check the host and port, got {_show(mask_url_credentials(url))}")
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        c.add("url", f"must be an absolute http:// or https:// URL, got {_show(mask_url_credentials(url))}")
        return None
    if parts.username is not None or parts.password is not None:
        # It would be stored in the operation's row, in the broker message and in Flower's task arguments.
        c.add("url", "must not carry credentials (user:password@host): use a signed URL or a source that needs none")
        return None
    return url


def resolve_media_path(value: Any, settings: Settings, c: _Collector | None = None) -> tuple[Path, str] | None:
    """The real path of a file under the media root, and its path relative to it.

    Refuses ``..`` and symlinks that lead outside the root, missing, unreadable and empty files.
    """
    own = c or _Collector()
    field = "path"
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is not None and not isinstance(value, str):
        own.add(field, f"must be a string (a file path under the media root), got {type(value).__name__}")
        return _finish(own, c, None)
    if value is None or not value.strip():
        own.add(field, "required: give the audio file's path under the media root (ACR_INGEST_MEDIA_ROOT)")
        return _finish(own, c, None)
    shown = _show(str(value))
    if not _utf8(str(value)) or len(str(value)) > 4096:
        own.add(field, f"{shown} is not a usable path (invalid Unicode or too long)")
        return _finish(own, c, None)
    if hidden := hidden_character(str(value)):
        own.add(field, f"{shown} is not a usable path (it contains {hidden}); rename the file")
        return _finish(own, c, None)
    root = Path(settings.media_root).resolve()
    candidate = Path(value)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        real = candidate.resolve()
        if not real.is_relative_to(root):
            own.add(field, f"{shown} is outside the media root {str(root)!r}; copy the file under it")
        elif not real.exists():
            own.add(field, f"{shown} does not exist under the media root {str(root)!r}")
        elif not real.is_file():
            own.add(field, f"{shown} is not a regular file")
        elif not os.access(real, os.R_OK):
            own.add(field, f"{shown} is not readable by this process; fix its permissions")
        elif real.stat().st_size == 0:
            own.add(field, f"{shown} is empty (0 bytes); give a real audio file")
        elif not _utf8(rel := real.relative_to(root).as_posix()):
            own.add(field, f"{shown} leads to a file whose name is not valid UTF-8; rename it")
        else:
            return _finish(own, c, (real, rel))
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before 3.13), a name too long...
        own.add(field, f"{shown} cannot be resolved under the media root ({type(exc).__name__}: {exc})")
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
UPLOAD_FILE_ARGS = {"path", "bucket_id", "title", "user_defined", "ref", "data_type", "send_as"}
SEND_AS = ("audio", "fingerprint")
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
    data_type = args.get("data_type")
    if data_type is None or data_type == "":
        data_type = "audio"
    if not isinstance(data_type, str) or data_type not in FILE_DATA_TYPES:
        c.add("data_type", f"must be one of {', '.join(FILE_DATA_TYPES)} (a string), got {_got(data_type)}")
    send_as = _send_as(c, args.get("send_as"), data_type, settings)
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
        send_as=send_as,
    )


def _send_as(c: _Collector, value: Any, data_type: Any, settings: Settings) -> str:
    """What to post: a fingerprint file is posted as it is; audio as given, else ACR_INGEST_UPLOAD_AS."""
    if value is not None and (not isinstance(value, str) or value not in SEND_AS):
        c.add("send_as", f"must be one of {', '.join(SEND_AS)} (a string), got {_got(value)}")
        return "audio"
    if data_type == "fingerprint":
        if value == "audio":
            c.add("send_as", "a data_type=fingerprint file is sent as it is: leave send_as out, or give the audio")
        return "fingerprint"
    send_as = value or settings.upload_as
    if send_as == "fingerprint" and (why := unavailable_reason()):
        c.add("send_as", f"fingerprint: {why}")
    return send_as


def _file_id(c: _Collector, field: str, value: Any) -> int | None:
    if value is None:
        return None
    number = _api_id(value)
    if number is None:
        c.add(field, f"must be a positive integer file id from the API (at most {BIGINT_MAX}), got {_got(value)}")
    return number


def _acr_id(c: _Collector, field: str, value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower() if isinstance(value, str) else ""
    if not ACR_ID_RE.match(text):
        c.add(field, f"must be a 32-character hex acr_id (a string), got {_got(value)}")
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
            c.add(field, f"must be a list (or comma-separated text), got {type(value).__name__}")
            return []
        if len(value) > settings.max_ids_per_job:  # refused before checking each of a million entries
            c.add(field, f"{len(value)} {field} in one job; split it into jobs of at most {settings.max_ids_per_job}")
            return []
        return list(value)

    refs: dict[str, None] = {}
    ids: dict[int, None] = {}
    acr_ids: dict[str, None] = {}
    for name in ("refs", "ids", "acr_ids"):  # a null entry is a mistake, not an entry to skip silently
        for i, v in enumerate(as_list(name) if isinstance(args.get(name), list | tuple) else []):
            if v is None:
                c.add(f"{name}[{i}]", "must be a string or an integer, got null (None): remove it")
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


def job_args(job: BaseModel) -> dict[str, Any]:
    """A validated job as the arguments an operation row keeps (what the producer stores and sends): the read
    side (``show``, ``failures``, ``retry-failed``) then sees the validated types, not a message's own shape."""
    if isinstance(job, DeleteBatchJob | MoveBatchJob):
        data = {k: v for k, v in job.model_dump().items() if k != "targets"}
        data.update(job.targets.model_dump())
    else:
        data = job.model_dump()
    return {k: v for k, v in data.items() if v is not None and v != []}
