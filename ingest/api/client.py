"""HTTP client of the ACRCloud Console API v2 bucket files.

It knows HTTP and nothing of Celery: it does not retry (the caller's retry policy decides from the
typed error), never logs or exposes the token, and streams uploads from disk.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import mimetypes
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlsplit

import requests
from pydantic import ValidationError as PydanticValidationError
from requests.adapters import HTTPAdapter
from requests_toolbelt import MultipartEncoder
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from ingest.api.errors import (
    ApiError,
    AuthError,
    ClientError,
    NotFoundError,
    RateLimitedError,
    TransientError,
    UnconfirmedUploadError,
    ValidationError,
)
from ingest.api.schemas import BucketFile, Page

if TYPE_CHECKING:
    from ingest.settings import Settings

log = logging.getLogger("ingest.api.client")

try:
    __version__ = version("acr-ingest")
except PackageNotFoundError:  # running from a source tree that is not pip-installed
    __version__ = "dev"

USER_AGENT = f"acr-ingest/{__version__}"
FILE_DATA_TYPES = ("audio", "fingerprint")
# What is sent by value in a JSON body rather than as a file part (acrid: an ACRCloud music-database id).
VALUE_DATA_TYPES = ("audio_url", "acrid")
_MESSAGE_LIMIT = 300
# A file is sent in blocks of this size, read straight from disk: a block is all the memory an upload holds.
UPLOAD_READ_SIZE = 256 * 1024
_SCRUB_MIN = 8

TokenProvider = Callable[[], str | None]
Gate = Callable[[str], None]
# Told of every request that went out: (operation, HTTP status or None when no answer came, the answer's
# headers). The shared rate limit learns through it and metrics count through it, so this layer needs
# neither Redis nor a metrics library. Errors in an observer are the caller's own.
Observer = Callable[[str, int | None, Mapping[str, str]], None]


@dataclass(frozen=True)
class _Reply:
    """A 2xx answer: its decoded JSON (None when empty) and what an error about it must carry."""

    method: str
    url: str
    status: int
    text: str
    data: Any


class AcrCloudClient:
    """One instance per process; its session pools connections (``pool_maxsize``) across threads."""

    def __init__(
        self,
        base_url: str,
        token: str | TokenProvider,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        session: requests.Session | None = None,
        pool_maxsize: int = 10,
        gate: Gate | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._base_path = urlsplit(self.base_url).path
        # Kept as a provider either way, so there is one code path and a rotated token is read each call.
        self._token: TokenProvider = token if callable(token) else _constant(token)
        self.timeout = (connect_timeout, read_timeout)
        self.gate = gate
        self.observers = list(observers)
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # max_retries=0: retries belong to the caller, who knows whether a POST may be repeated.
            adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_maxsize, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers.update({"Accept": "application/json", "User-Agent": USER_AGENT})
            _read_environment_once(session, self.base_url)
        self.session = session

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> AcrCloudClient:
        kw.setdefault("connect_timeout", settings.connect_timeout)
        kw.setdefault("read_timeout", settings.read_timeout)
        return cls(settings.base_url, settings.current_token, **kw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # ---- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> AcrCloudClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- endpoints -------------------------------------------------------------------------------

    def upload_file(
        self,
        bucket_id: int,
        path: str | os.PathLike[str],
        *,
        title: str,
        data_type: str = "audio",
        user_defined: dict[str, Any] | None = None,
        audio_id: str | None = None,
    ) -> BucketFile:
        """POST a file as multipart, streamed from disk (``requests``' own ``files=`` would buffer it)."""
        name = os.path.basename(os.fspath(path)) or "upload"
        # Opened before the gate: a missing file fails locally without using a rate-limit slot.
        with open(path, "rb") as fh:
            return self._upload_stream(bucket_id, fh, name, data_type, title, user_defined, audio_id)

    def upload_bytes(
        self,
        bucket_id: int,
        data: bytes,
        *,
        name: str,
        title: str,
        data_type: str = "fingerprint",
        user_defined: dict[str, Any] | None = None,
        audio_id: str | None = None,
    ) -> BucketFile:
        """POST content held in memory (a fingerprint made here) as the file part ``name``."""
        return self._upload_stream(bucket_id, io.BytesIO(data), name, data_type, title, user_defined, audio_id)

    def _upload_stream(
        self,
        bucket_id: int,
        fh: BinaryIO,
        name: str,
        data_type: str,
        title: str,
        user_defined: dict[str, Any] | None,
        audio_id: str | None,
    ) -> BucketFile:
        if data_type not in FILE_DATA_TYPES:
            raise ValueError(f"data_type must be one of {FILE_DATA_TYPES}, not {data_type!r}")
        fields = _form_fields(data_type, title, user_defined, audio_id)
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        form = _FileForm(fields, name, fh, ctype)
        body = self._request(
            "upload",
            "POST",
            self._files_path(bucket_id),
            data=form,
            headers={"Content-Type": form.content_type},
        )
        return _created_file(body)

    def upload_url(
        self,
        bucket_id: int,
        url: str,
        *,
        title: str,
        user_defined: dict[str, Any] | None = None,
        audio_id: str | None = None,
        as_json: bool = True,
    ) -> BucketFile:
        """Ask the API to fetch ``url`` (``data_type=audio_url``), as a JSON body or a multipart form."""
        path = self._files_path(bucket_id)
        if as_json:
            payload: dict[str, Any] = {"data_type": "audio_url", "title": title, "url": url}
            if user_defined is not None:
                payload["user_defined"] = user_defined  # a real object in JSON
            if audio_id is not None:
                payload["audio_id"] = audio_id
            body = self._request("upload", "POST", path, json=payload)
        else:
            fields = [*_form_fields("audio_url", title, user_defined, audio_id), ("url", url)]
            encoder = MultipartEncoder(fields=fields)
            body = self._request("upload", "POST", path, data=encoder, headers={"Content-Type": encoder.content_type})
        return _created_file(body)

    def upload_acrid(
        self,
        bucket_id: int,
        acrid: str,
        *,
        title: str,
        user_defined: dict[str, Any] | None = None,
        audio_id: str | None = None,
    ) -> BucketFile:
        """Add a file by an existing ACRCloud music-database id (``data_type=acrid``, English page)."""
        acrid = acrid.strip() if isinstance(acrid, str) else ""
        if not acrid:
            raise ValueError("acrid must be a non-empty ACRCloud id")
        payload: dict[str, Any] = {"data_type": "acrid", "title": title, "acrid": acrid}
        if user_defined is not None:
            payload["user_defined"] = user_defined
        if audio_id is not None:
            payload["audio_id"] = audio_id
        return _created_file(self._request("upload", "POST", self._files_path(bucket_id), json=payload))

    def list_page(
        self,
        bucket_id: int,
        *,
        page: int = 1,
        per_page: int = 100,
        search: str | None = None,
        state: int | None = None,
        sort: str | None = None,
        order: str | None = None,
    ) -> Page:
        params: dict[str, Any] = {"page": page, "per_page": per_page}
        for key, value in (("search", search), ("state", state), ("sort", sort), ("order", order)):
            if value is not None:
                params[key] = int(value) if key == "state" else value
        body = self._request("list", "GET", self._files_path(bucket_id), params=params)
        return _parse(Page, body.data, body)

    def iter_files(
        self,
        bucket_id: int,
        *,
        per_page: int = 100,
        search: str | None = None,
        state: int | None = None,
        sort: str | None = None,
        order: str | None = None,
    ) -> Iterator[BucketFile]:
        """Every file over every page. Pages are requested by number with the same filters, since
        Laravel's ``links`` drop the query's other parameters. Files added or deleted meanwhile can
        shift between pages; with the default ascending id order new uploads only append."""
        page_no = 1
        while True:
            page = self.list_page(
                bucket_id,
                page=page_no,
                per_page=per_page,
                search=search,
                state=state,
                sort=sort,
                order=order,
            )
            yield from page.files
            # Our own counter and the empty-page guard end the loop even against a server that ignores
            # `page` or keeps reporting a larger last_page.
            if not page.files or max(page.current_page, page_no) >= page.last_page:
                return
            page_no = max(page.current_page, page_no) + 1

    def update_file(
        self,
        bucket_id: int,
        file_id: int | str,
        *,
        title: str | None = None,
        user_defined: dict[str, Any] | None = None,
        user_defined_as: str = "string",
    ) -> BucketFile:
        """PUT title and/or user_defined; ``file_id`` is a numeric id or an acr_id. ``user_defined_as``
        "object" sends it as a JSON object instead of a JSON string (for ``acr-ingest probe``)."""
        if title is None and user_defined is None:
            raise ValueError("update_file needs title or user_defined")
        payload: dict[str, Any] = {}
        if title is not None:
            payload["title"] = title
        if user_defined is not None:
            # A JSON string, as the English page says and the vendor CLI sends (json.dumps); an API that
            # wants the string refuses an object with a 422, while the string form is the documented one.
            as_string = user_defined_as != "object"
            payload["user_defined"] = json.dumps(user_defined, ensure_ascii=False) if as_string else user_defined
        path = f"{self._files_path(bucket_id)}/{_ids_segment([file_id], name='file_id')}"
        return _one_file(self._request("update", "PUT", path, json=payload))

    def delete_files(self, bucket_id: int, ids: Sequence[int | str]) -> list[BucketFile]:
        """The deleted files when the API lists them, else [] (any other 2xx body is a success that
        names no files: the page does not document it). The caller chunks long id lists."""
        path = f"{self._files_path(bucket_id)}/{_ids_segment(ids)}"
        return _acted_on(self._request("delete", "DELETE", path, allow_empty=True))

    def move_files(self, target_bucket_id: int, ids: Sequence[int | str]) -> list[BucketFile]:
        """Move files into ``target_bucket_id`` (the path's bucket is the TARGET)."""
        path = f"{self._files_path(target_bucket_id)}/{_ids_segment(ids)}/move"
        return _acted_on(self._request("move", "PUT", path, allow_empty=True))

    def get_files(self, bucket_id: int, ids: Sequence[int | str]) -> list[BucketFile]:
        """The files found among ``ids`` (ids not found are simply absent from the list)."""
        path = f"{self._files_path(bucket_id)}/{_ids_segment(ids)}"
        return _file_list(self._request("get", "GET", path))

    def send(self, op: str, method: str, path: str, *, params: dict[str, Any] | None = None) -> tuple[int, str, Any]:
        """A request as is, for diagnosis (``acr-ingest probe``): (status, body text, decoded JSON or
        None) of a 2xx; errors are the usual typed ones. ``path`` is below the base URL."""
        reply = self._request(op, method, path, params=params, allow_empty=True)
        return reply.status, reply.text, reply.data

    # ---- plumbing --------------------------------------------------------------------------------

    def _files_path(self, bucket_id: int) -> str:
        return f"/buckets/{quote(str(bucket_id).strip(), safe='')}/files"

    def _auth_header(self, method: str, url: str) -> str:
        token = self._token()
        token = token.strip() if isinstance(token, str) else ""
        if not token:
            raise AuthError(
                "no access token configured (set ACR_INGEST_ACCESS_TOKEN or ACR_INGEST_ACCESS_TOKEN_FILE)",
                method=method,
                url=url,
            )
        # requests' own invalid-header error quotes the value: refuse here so the token is never echoed.
        if any(not (0x21 <= ord(c) <= 0x7E) for c in token):
            raise AuthError("access token contains characters not allowed in a header", method=method, url=url)
        return f"Bearer {token}"

    def _request(
        self,
        op: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        allow_empty: bool = False,
    ) -> _Reply:
        url = self.base_url + path
        auth = self._auth_header(method, url)  # before the gate: no token, no rate-limit slot used
        if self.gate is not None:
            self.gate(op)  # may raise to refuse; propagated as is
        hdrs = {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        hdrs["Authorization"] = auth  # per request, never on the session: rotation needs no rebuild
        log_path = self._base_path + path
        started = time.monotonic()
        error: ApiError | None = None
        resp: requests.Response | None = None
        try:
            resp = self._send(method, url, params=params, json=json, data=data, headers=hdrs)
        except requests.RequestException as exc:
            ms = (time.monotonic() - started) * 1000
            log.debug("%s %s -> %s after %.0f ms", method, log_path, type(exc).__name__, ms)
            error = _map_exception(exc, method, _request_url(exc, url), auth)
        for observe in self.observers:
            observe(op, None if resp is None else resp.status_code, {} if resp is None else resp.headers)
        # Raised outside the except block so the requests exception (whose .request holds the
        # Authorization header) is not kept as __context__.
        if error is not None:
            raise error
        assert resp is not None
        ms = (time.monotonic() - started) * 1000
        log.debug("%s %s -> %s in %.0f ms", method, log_path, resp.status_code, ms)
        return _read_response(resp, method, auth, allow_empty=allow_empty)

    def _send(
        self, method: str, url: str, *, params: Any, json: Any, data: Any, headers: dict[str, str]
    ) -> requests.Response:
        """``Session.request`` without the per-call work we do not use: merging the session's headers, params,
        auth, cookies and hooks into every request, the environment (read once at start), the cookie jar, the
        redirect machinery (redirects are not followed). That was a third of the client's CPU per call. The
        session's adapters (its pool), ``verify``, ``cert`` and ``proxies`` are used as ``Session.request``
        uses them; the errors are requests' own, raised by the adapter or while the body is read."""
        prep = requests.PreparedRequest()
        prep.prepare(method=method, url=url, headers=headers, data=data, params=params, json=json)
        session = self.session
        verify = True if session.verify is None else session.verify
        resp = session.get_adapter(prep.url or url).send(
            prep, stream=False, timeout=self.timeout, verify=verify, cert=session.cert, proxies=session.proxies
        )
        resp.content  # noqa: B018  (read whole here, as Session.request does: the connection goes back to the pool)
        return resp


# ---- helpers -------------------------------------------------------------------------------------


def _read_environment_once(session: requests.Session, base_url: str) -> None:
    """Proxies and CA bundle from the environment, read once for our one host instead of on every request
    (requests walks all of ``os.environ`` per call when ``trust_env`` is on: a tenth of a job's CPU). It also
    keeps a ``~/.netrc`` entry from replacing our bearer token."""
    session.trust_env = False
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle


class _FileForm:
    """The multipart body of a file upload, streamed: the form's fields and the file part's headers, the file
    read straight from disk in ``UPLOAD_READ_SIZE`` blocks, the closing boundary.

    The bytes around the file are MultipartEncoder's own (made with an empty file part). Reading the file
    through the encoder as well cost several system calls and three copies per read, and urllib3 reads
    16 KiB at a time: ~4 s of CPU per GB, 2.5x curl's time (benchmarks/large_upload.py).
    """

    def __init__(
        self, fields: list[tuple[str, Any]], name: str, fh: BinaryIO, ctype: str, *, boundary: str | None = None
    ) -> None:
        empty = MultipartEncoder(fields=[*fields, ("file", (name, io.BytesIO(), ctype))], boundary=boundary)
        encoded: bytes = empty.to_string()
        self._tail = b"\r\n" + empty.boundary.encode() + b"--\r\n"
        if not encoded.endswith(self._tail):
            raise AssertionError("MultipartEncoder no longer ends a body with its closing boundary")
        self._head = encoded[: -len(self._tail)]
        self._fh = fh
        start = fh.tell()
        self._left = fh.seek(0, os.SEEK_END) - start  # a file on disk or bytes in memory alike
        fh.seek(start)
        self.content_type: str = empty.content_type
        self.len = len(self._head) + self._left + len(self._tail)  # requests takes the Content-Length from it

    def read(self, size: int | None = -1) -> bytes:
        if self._head:
            out, self._head = self._head, b""
            return out
        if self._left > 0:
            block = self._fh.read(min(self._left, UPLOAD_READ_SIZE))
            if not block:
                raise OSError("the file got shorter while it was being sent")
            self._left -= len(block)
            return block
        out, self._tail = self._tail, b""
        return out


def _unexpected(reply: _Reply, why: str) -> ApiError:
    return ApiError(
        f"unexpected response: {why}",
        status=reply.status,
        body=reply.text,
        method=reply.method,
        url=reply.url,
    )


def _parse(model: type[Any], data: Any, reply: _Reply) -> Any:
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        raise _unexpected(reply, _summary(exc)) from None


def _one_file(reply: _Reply) -> BucketFile:
    body = reply.data
    data = body.get("data", body) if isinstance(body, dict) else body
    return _parse(BucketFile, data, reply)


def _created_file(reply: _Reply) -> BucketFile:
    """The file an upload created. An answer that does not name it (no ``id``/``acr_id``) is not a
    parse error: the file was stored, so the caller must find it rather than post again."""
    body = reply.data
    data = body.get("data", body) if isinstance(body, dict) else body
    if not isinstance(data, dict) or data.get("id") in (None, "") or not data.get("acr_id"):
        raise UnconfirmedUploadError(
            "upload answered without the new file's id/acr_id",
            status=reply.status,
            body=reply.text,
            method=reply.method,
            url=reply.url,
        )
    return _parse(BucketFile, data, reply)


def _acted_on(reply: _Reply) -> list[BucketFile]:
    """The files a delete/move answer lists; [] for any other 2xx body (empty, 204, true, a count, an
    object that is not a file): the API acted, it just does not say on what."""
    body = reply.data
    data = body.get("data") if isinstance(body, dict) else body
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        return []
    try:
        return [BucketFile.model_validate(item) for item in data]
    except PydanticValidationError:
        return []  # e.g. {"data": {"affected": 2}}: not files


def _file_list(reply: _Reply) -> list[BucketFile]:
    """``data`` as a list of files: [] when absent or null (an empty 200/204 to a delete)."""
    body = reply.data
    data = body.get("data") if isinstance(body, dict) else body
    if data is None:
        return []
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise _unexpected(reply, "'data' is neither a list nor a file")
    return [_parse(BucketFile, item, reply) for item in data]


def _constant(token: str | None) -> TokenProvider:
    def provider() -> str | None:
        return token

    return provider


def _form_fields(
    data_type: str, title: str, user_defined: dict[str, Any] | None, audio_id: str | None
) -> list[tuple[str, Any]]:
    fields: list[tuple[str, Any]] = [("data_type", data_type), ("title", title)]
    if user_defined is not None:
        fields.append(("user_defined", json.dumps(user_defined, ensure_ascii=False)))  # a string in forms
    if audio_id is not None:
        fields.append(("audio_id", audio_id))
    return fields


def _ids_segment(ids: Sequence[int | str], name: str = "ids") -> str:
    if isinstance(ids, str | bytes):
        raise ValueError(f"{name} must be a sequence of ids, not a single string")
    cleaned: list[str] = []
    for raw in ids:
        item = str(raw).strip()
        if not item:
            raise ValueError(f"{name} contains an empty id")
        if "," in item:
            raise ValueError(f"{name}: an id must not contain ',' ({item!r})")
        cleaned.append(item)
    if not cleaned:
        raise ValueError(f"{name} must not be empty")
    # ',' stays literal (the API's separator); everything else, '/' included, is escaped.
    return quote(",".join(cleaned), safe=",")


def _request_url(exc: requests.RequestException, fallback: str) -> str:
    req = getattr(exc, "request", None)
    return getattr(req, "url", None) or fallback


def _scrub(text: str, auth: str) -> str:
    """Blank the token out of text that goes into an error (a server could echo the header back).

    Tokens shorter than ``_SCRUB_MIN`` are left alone: the real ones are long JWTs, and blanking a
    one-letter test token would garble every message."""
    token = auth.removeprefix("Bearer ")
    return text.replace(token, "***") if len(token) >= _SCRUB_MIN else text


def _map_exception(exc: requests.RequestException, method: str, url: str, auth: str) -> ApiError:
    def err(cls: type[ApiError], message: str, **kw: Any) -> ApiError:
        return cls(_scrub(message, auth), method=method, url=url, **kw)

    if isinstance(exc, requests.ConnectTimeout):
        return err(TransientError, "connect timeout", maybe_applied=False)
    if isinstance(exc, requests.ReadTimeout):
        # The request was sent: the server may have acted on it.
        return err(TransientError, "read timeout", maybe_applied=True)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
        return err(TransientError, f"response broken off: {_reason(exc)}", maybe_applied=True)
    if isinstance(exc, requests.ConnectionError):
        reason = _root_reason(exc)
        # Refused / unresolvable / connect timeout: nothing was sent, so nothing can have been applied.
        if isinstance(reason, NewConnectionError | ConnectTimeoutError):
            return err(TransientError, f"connection failed: {_reason(exc)}", maybe_applied=False)
        return err(TransientError, f"connection error: {_reason(exc)}", maybe_applied=True)
    # InvalidURL, MissingSchema, ...: a configuration error, not worth retrying.
    return err(ApiError, f"request failed: {type(exc).__name__}: {_reason(exc)}")


def _root_reason(exc: BaseException) -> BaseException | None:
    """The urllib3 error under a requests ConnectionError (MaxRetryError.reason, or the cause chain)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, NewConnectionError | ConnectTimeoutError):
            return cur
        todo.extend([getattr(cur, "reason", None), cur.__cause__, cur.__context__])
        todo.extend(a for a in cur.args if isinstance(a, BaseException))
    return None


def _reason(exc: BaseException) -> str:
    reason = _root_reason(exc)
    text = str(reason) if reason is not None else str(exc)
    if len(text) > _MESSAGE_LIMIT:
        text = text[:_MESSAGE_LIMIT] + "..."
    return text or type(exc).__name__


def _read_response(resp: requests.Response, method: str, auth: str, *, allow_empty: bool) -> _Reply:
    url = resp.url or ""
    # JSON is UTF-8 (RFC 8259); resp.text would guess a charset from the bytes when none is declared.
    raw = _decode(resp)
    text = _scrub(raw, auth)  # what errors carry; the data itself is parsed from the raw text
    status = resp.status_code
    if status >= 300:
        raise _status_error(resp, method, url, text)
    if allow_empty and not raw.strip():
        return _Reply(method, url, status, text, None)
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError("unexpected response (not JSON)", status=status, body=text, method=method, url=url) from None
    return _Reply(method, url, status, text, data)


def _decode(resp: requests.Response) -> str:
    """The body as text: the declared charset, else UTF-8 (JSON's); never a guess from the bytes."""
    try:
        return resp.content.decode(resp.encoding or "utf-8", "replace")
    except LookupError:  # an unknown charset name in Content-Type
        return resp.content.decode("utf-8", "replace")


def _status_error(resp: requests.Response, method: str, url: str, text: str) -> ApiError:
    status = resp.status_code
    body: Any = None
    with contextlib.suppress(ValueError):
        body = json.loads(text) if text.strip() else None
    message = _message_of(body, text) or f"HTTP {status} {resp.reason or ''}".strip()
    kw: dict[str, Any] = {"status": status, "body": text, "method": method, "url": url}
    if status < 400:
        # Redirects are not followed: a streamed upload cannot be replayed, and a redirect from the API
        # almost always means a wrong base URL (http vs https, missing /api).
        where = resp.headers.get("Location", "")
        return ClientError(f"unexpected redirect to {where!r}: check the base URL", **kw)
    if status in (401, 403):
        return AuthError(message, **kw)
    if status == 404:
        return NotFoundError(message, **kw)
    if status == 422:
        return ValidationError(message, errors=_field_errors(body), **kw)
    if status == 429:
        return RateLimitedError(message, retry_after=retry_after_seconds(resp.headers.get("Retry-After")), **kw)
    if status == 408:
        # The server gave up waiting for our request: it did not act on it, and a retry may succeed.
        return TransientError(message, maybe_applied=False, **kw)
    if status < 500:
        return ClientError(message, **kw)
    return TransientError(message, maybe_applied=True, **kw)


def _message_of(body: Any, text: str) -> str:
    if isinstance(body, dict):
        for key in ("message", "error"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or json.dumps(value)
            if value:
                return str(value)[:_MESSAGE_LIMIT]
    raw = text.strip()
    return raw[:_MESSAGE_LIMIT] + ("..." if len(raw) > _MESSAGE_LIMIT else "")


def _field_errors(body: Any) -> dict[str, list[str]]:
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, dict):
        return {}
    return {str(k): [str(m) for m in v] if isinstance(v, list) else [str(v)] for k, v in errors.items()}


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _summary(exc: PydanticValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:3]]
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
