"""The emulator's WSGI app: routing, request parsing and Laravel-shaped JSON answers.

One API request goes: route match -> injected faults (latency, reset, 429 burst, 5xx) -> 404/405 ->
bearer auth -> per-token rate limit -> bucket exists -> handler. Faults come first because they stand
for the load balancer and the network, which act before the application sees anything.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from ingest.devtools.emulator.faults import FaultInjector, Faults
from ingest.devtools.emulator.profiles import LENIENT, Profile
from ingest.devtools.emulator.store import RateLimiter, Stats, Store

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)

API_PREFIX = "/api"
DATA_TYPES = ("audio", "fingerprint", "audio_url", "acrid")
MAX_TITLE = 255
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 1000
# Fake processing: ~128 kbit/s audio, and a fixed length for what is fetched from a URL.
BYTES_PER_SECOND = 16_000
URL_DURATION = 30.0
# A fingerprint is ~25 KB per minute of audio: this holds one of over five hours; larger is not one.
FINGERPRINT_MAX_BYTES = 8 << 20
# An audio_url containing one of these ends in state -1 (bad audio), so clients can test that path.
BAD_URL_MARKERS = ("invalid", "broken")

FILE_NOT_FOUND = "No query results for model [App\\Models\\File]."
BUCKET_NOT_FOUND = "No query results for model [App\\Models\\Bucket]."
ERROR_MESSAGES = {500: "Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}

# Endpoint names double as the route templates counted in stats.
UPLOAD = "POST /buckets/{bucket}/files"
LIST = "GET /buckets/{bucket}/files"
DELETE_BODY = "DELETE /buckets/{bucket}/files"
MOVE_BODY = "POST /buckets/{bucket}/files/move"
GET_IDS = "GET /buckets/{bucket}/files/{ids}"
UPDATE = "PUT /buckets/{bucket}/files/{id}"
DELETE_IDS = "DELETE /buckets/{bucket}/files/{ids}"
MOVE_IDS = "PUT /buckets/{bucket}/files/{ids}/move"


def _url_map() -> Map:
    files = f"{API_PREFIX}/buckets/<int:bucket>/files"
    api = [
        (UPLOAD, files, "POST"),
        (LIST, files, "GET"),
        (DELETE_BODY, files, "DELETE"),
        (MOVE_BODY, f"{files}/move", "POST"),
        (GET_IDS, f"{files}/<ids>", "GET"),
        (UPDATE, f"{files}/<ids>", "PUT"),
        (DELETE_IDS, f"{files}/<ids>", "DELETE"),
        (MOVE_IDS, f"{files}/<ids>/move", "PUT"),
    ]
    control = [
        ("ctl:stats", "/_emulator/stats", ("GET",)),
        ("ctl:files", "/_emulator/files", ("GET",)),
        ("ctl:faults", "/_emulator/faults", ("GET", "POST", "DELETE")),
        ("ctl:tokens", "/_emulator/tokens", ("POST",)),
        ("ctl:reset", "/_emulator/reset", ("POST",)),
    ]
    rules = [Rule(path, endpoint=name, methods=[method]) for name, path, method in api]
    rules += [Rule(path, endpoint=name, methods=list(methods)) for name, path, methods in control]
    # No redirects for a trailing or doubled slash: a JSON client should get an answer, not a 308.
    return Map(rules, strict_slashes=False, merge_slashes=False)


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")),
        status=status,
        mimetype="application/json",
        headers=dict(headers or {}),
    )


def invalid(errors: dict[str, list[str]]) -> Response:
    return json_response({"message": "The given data was invalid.", "errors": errors}, 422)


def _split_ids(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _ids_from_body(value: Any) -> list[str] | None:
    """The ``ids`` of the vendor CLI's body forms: a list, or a comma-separated string."""
    if isinstance(value, str):
        return _split_ids(value) or None
    if isinstance(value, list) and all(isinstance(v, int | str) and not isinstance(v, bool) for v in value):
        return [str(v).strip() for v in value if str(v).strip()] or None
    return None


def _parse_user_defined(value: Any) -> tuple[bool, dict[str, Any] | None]:
    """(ok, object): an object as-is, a JSON string holding an object; None/"" = not given."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True, None
    if isinstance(value, dict):
        return True, value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return False, None
        if isinstance(parsed, dict):
            return True, parsed
    return False, None


def _check_title(value: Any, errors: dict[str, list[str]]) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        errors["title"] = ["The title field is required."]
        return None
    if not isinstance(value, str):
        errors["title"] = ["The title must be a string."]
        return None
    if len(value) > MAX_TITLE:
        errors["title"] = [f"The title may not be greater than {MAX_TITLE} characters."]
        return None
    return value


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value.strip())
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class _CountedPart(io.RawIOBase):
    """Where a multipart file part goes: its bytes are counted and dropped as they arrive.

    The emulator needs an audio file's size only (for the fake duration), so it keeps no more than a
    fingerprint's worth (``FINGERPRINT_MAX_BYTES``, read for its duration): a 1 GB upload costs no memory
    and no temporary file (Werkzeug's default spools parts over 500 KB to one, which on a tmpfs /tmp is
    memory again).
    """

    def __init__(self, uplink: _Uplink | None = None) -> None:
        super().__init__()
        self.size = 0
        self.head = bytearray()
        self.uplink = uplink

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        n = view.nbytes
        if self.uplink is not None:
            self.uplink.take(n)
        if self.size < FINGERPRINT_MAX_BYTES:
            self.head += view.cast("B")[: FINGERPRINT_MAX_BYTES - self.size]
        self.size += n
        return n

    def readinto(self, buffer: Any) -> int:
        return 0  # nothing was kept

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        # Werkzeug rewinds a finished part; the end is where the counted bytes would have ended.
        return self.size if whence == io.SEEK_END else 0


class _Uplink:
    """The uplink all uploads share (``Faults.upload_bytes_per_second``): a part's bytes are read no faster
    than it allows, so a client's wall time for a file is what that link would take."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._lock = threading.Lock()
        self._free_at = 0.0  # when the link has sent everything taken so far

    def take(self, n: int) -> None:
        rate = self.faults.upload_bytes_per_second
        if rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._free_at = max(self._free_at, now) + n / rate
            wait = self._free_at - now
        if wait > 0:
            time.sleep(wait)


class _Request(Request):
    uplink: _Uplink | None = None

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return cast(IO[bytes], _CountedPart(self.uplink))


def _stream_size(storage: FileStorage) -> int:
    stream = storage.stream
    if isinstance(stream, _CountedPart):
        return stream.size
    try:
        return stream.seek(0, 2)
    except (AttributeError, OSError, ValueError):
        total = 0
        while chunk := stream.read(1 << 16):
            total += len(chunk)
        return total


def fingerprint_reader() -> Callable[[FileStorage], int | None] | None:
    """How to read a fingerprint part's duration (ms, None if it is not one), when the vendor's library is
    installed (the emulator's own use of it, not acr-ingest's wrapper: the fake stays independent)."""
    try:
        from acrcloud import acrcloud_extr_tool
    except ImportError:
        return None

    def duration_ms(part: FileStorage) -> int | None:
        stream = part.stream
        data = bytes(stream.head) if isinstance(stream, _CountedPart) else part.read(FINGERPRINT_MAX_BYTES + 1)
        if not data or len(data) > FINGERPRINT_MAX_BYTES or _stream_size(part) > FINGERPRINT_MAX_BYTES:
            return None
        value = acrcloud_extr_tool.get_duration_ms_by_fpbuffer(data)
        return value if isinstance(value, int) and value > 0 else None

    return duration_ms


def _is_loopback(addr: str | None) -> bool:
    try:
        return addr is not None and ipaddress.ip_address(addr.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class _DropConnection(ConnectionAbortedError):
    """Leaves the app (after the socket is shut) as a ConnectionError: Werkzeug's handler takes it
    for a client that went away and neither answers nor logs."""


class EmulatorApp:
    """The WSGI callable. Everything it reads may be changed at runtime by the owning Emulator."""

    def __init__(
        self,
        *,
        tokens: Iterable[str],
        processing_delay: float,
        buckets: Iterable[int] | None,
        rate_limit: float | None,
        seed: int | None,
        profile: Profile = LENIENT,
        rate_window: float = 1.0,
    ) -> None:
        #: Fixed for the app's life: how it answers where the vendor page is silent (profiles.py).
        self.profile = profile
        self.tokens: frozenset[str] = frozenset(tokens)
        self.processing_delay = processing_delay
        self.buckets: frozenset[int] | None = None if buckets is None else frozenset(buckets)
        self.faults = Faults()
        self.injector = FaultInjector(self.faults, seed)
        self.uplink = _Uplink(self.faults)
        self.limiter = RateLimiter(rate_limit, rate_window)
        self.store = Store()
        self.stats = Stats()
        self.url_map = _url_map()
        self._handlers: dict[str, Callable[..., Response]] = {
            UPLOAD: self._upload,
            LIST: self._list,
            DELETE_BODY: self._delete_body,
            MOVE_BODY: self._move_body,
            GET_IDS: self._get,
            UPDATE: self._update,
            DELETE_IDS: self._delete,
            MOVE_IDS: self._move,
        }
        # Set by the Emulator for the control endpoint; defaults to the app's own reset.
        self.on_reset: Callable[[], None] = self.reset

    def reset(self) -> None:
        self.store.clear()
        self.stats.clear()
        self.faults.reset()
        self.limiter.clear()
        self.injector.reseed()

    # --- WSGI -----------------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = _Request(environ)
        request.uplink = self.uplink
        try:
            response = self._dispatch(request)
        finally:
            request.close()
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        endpoint: str | None = None
        args: Mapping[str, Any] = {}
        routing_error: HTTPException | None = None
        try:
            endpoint, args = adapter.match()
        except HTTPException as exc:
            routing_error = exc
        if (endpoint or "").startswith("ctl:") or request.path.startswith("/_emulator/"):
            return self._control(request, endpoint, routing_error)

        route = endpoint or f"{request.method} (unmatched)"
        try:
            response = self._api(request, endpoint, args, routing_error)
        except _DropConnection:
            # Counted before the socket goes: the client must not see the reset before the counter.
            self.stats.record(route, None)
            self._shut_socket(request.environ)
            raise
        except HTTPException as exc:
            # From Werkzeug while reading the body (client gone mid-upload, malformed form): expected.
            response = json_response({"message": exc.description or ""}, exc.code or 400)
        except Exception:
            # Log the route only: never the headers, which carry the token.
            log.exception("emulator error on %s", route)
            response = json_response({"message": "Server Error"}, 500)
        self.stats.record(route, response.status_code)
        return response

    # --- API ------------------------------------------------------------------------------------

    def _api(
        self,
        request: Request,
        endpoint: str | None,
        args: Mapping[str, Any],
        routing_error: HTTPException | None,
    ) -> Response:
        inj = self.injector
        if (delay := inj.latency()) > 0:
            self.stats.fault("latency")
            time.sleep(delay)
        if inj.reset():
            self.stats.fault("reset")
            raise _DropConnection("emulator: injected connection reset")
        if inj.take_burst(upload=endpoint == UPLOAD):
            self.stats.fault("rate_limited")
            return self._too_many(inj.retry_after_header(), limit=self._nominal_limit())
        if (status := inj.error_status()) is not None:
            self.stats.fault("error")
            return json_response({"message": ERROR_MESSAGES[status]}, status)

        if routing_error is not None or endpoint is None:
            return self._routing_error(request, routing_error)

        token = self._bearer(request)
        if token is None:
            return json_response({"message": "Unauthenticated."}, 401)

        rate_headers: dict[str, str] = {}
        decision = self.limiter.hit(token)
        if decision is not None:
            if not decision.allowed:
                self.stats.fault("rate_limited")
                return self._too_many(str(decision.retry_after), limit=decision.limit)
            rate_headers = {
                "X-RateLimit-Limit": str(decision.limit),
                "X-RateLimit-Remaining": str(decision.remaining),
            }

        if not self._bucket_exists(args["bucket"]):
            response = json_response({"message": BUCKET_NOT_FOUND}, 404)
        else:
            response = self._handlers[endpoint](request, **args)
        response.headers.update(rate_headers)
        return response

    @staticmethod
    def _shut_socket(environ: WSGIEnvironment) -> None:
        """Close the client's connection without answering (a reset, seen from the client).

        The _DropConnection raised next is a ConnectionError, which Werkzeug's handler treats as a
        client that went away: nothing is written and nothing logged. Under another WSGI server (no
        ``werkzeug.socket``) the exception surfaces as that server's own 500 instead.
        """
        sock = environ.get("werkzeug.socket")
        if isinstance(sock, socket.socket):
            try:
                # Linger 0: the final close sends RST rather than a polite FIN after our shutdown.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _too_many(self, retry_after: str, *, limit: int) -> Response:
        return json_response(
            {"message": "Too Many Attempts."},
            429,
            {"Retry-After": retry_after, "X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0"},
        )

    def _nominal_limit(self) -> int:
        # What an injected 429 announces as the limit: the real one if set, else Laravel's default.
        limit = self.limiter.limit
        return max(1, int(limit)) if limit else 60

    def _routing_error(self, request: Request, error: HTTPException | None) -> Response:
        if isinstance(error, MethodNotAllowed):
            allowed = sorted(m for m in (error.valid_methods or []) if m != "HEAD")
            return json_response(
                {
                    "message": f"The {request.method} method is not supported for this route. "
                    f"Supported methods: {', '.join(allowed)}."
                },
                405,
                {"Allow": ", ".join(allowed)},
            )
        if error is not None and not isinstance(error, NotFound):
            return json_response({"message": error.description or ""}, error.code or 400)
        return json_response({"message": f"The route {request.path.lstrip('/')} could not be found."}, 404)

    def _bearer(self, request: Request) -> str | None:
        """The token, if the header is exactly ``Bearer <token>`` and the token is accepted."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        token = header[len("Bearer ") :]
        # "Bearer  x" (two spaces) leaves " x": not a token the account issued.
        if not token or token != token.strip():
            return None
        return token if token in self.tokens else None

    def _bucket_exists(self, bucket: int) -> bool:
        return bucket > 0 and (self.buckets is None or bucket in self.buckets)

    @staticmethod
    def _fields(request: Request) -> dict[str, Any]:
        """Body fields from JSON (values keep their JSON types) or a form (first value of each)."""
        if request.is_json:
            body = request.get_json(silent=True)
            return body if isinstance(body, dict) else {}
        return request.form.to_dict()

    # --- handlers -------------------------------------------------------------------------------

    def _upload(self, request: Request, bucket: int) -> Response:
        fields = self._fields(request)  # reads the whole body; file parts are counted, not kept
        errors: dict[str, list[str]] = {}

        data_type = fields.get("data_type")
        if data_type in (None, ""):
            errors["data_type"] = ["The data type field is required."]
        elif data_type not in DATA_TYPES:
            errors["data_type"] = ["The selected data type is invalid."]
        title = _check_title(fields.get("title"), errors)

        size = 0
        received: int | None = None
        url = ""
        acrid: str | None = None
        fingerprint_ms: int | None = None  # read from a fingerprint when the vendor's library is installed
        not_a_fingerprint = False
        if data_type in ("audio", "fingerprint"):
            part = request.files.get("file")
            if part is not None:
                size = received = _stream_size(part)
            # A part with neither a filename nor bytes is what a form sends for "no file chosen".
            if part is None or (not part.filename and size == 0):
                errors["file"] = ["The file field is required."]
            elif data_type == "fingerprint" and (reader := fingerprint_reader()) is not None:
                fingerprint_ms = reader(part)
                not_a_fingerprint = fingerprint_ms is None
                if not_a_fingerprint and not self.profile.fingerprint_unchecked:
                    errors["file"] = ["The file must be a valid fingerprint."]
        elif data_type == "audio_url":
            raw_url = fields.get("url")
            if raw_url in (None, "") or not isinstance(raw_url, str):
                errors["url"] = ["The url field is required."]
            elif not _is_http_url(raw_url):
                errors["url"] = ["The url must be a valid URL."]
            else:
                url = raw_url.strip()
        elif data_type == "acrid":
            raw_acrid = fields.get("acrid")
            if not isinstance(raw_acrid, str) or not raw_acrid.strip():
                errors["acrid"] = ["The acrid field is required."]
            else:
                acrid = raw_acrid.strip()

        ok, user_defined = _parse_user_defined(fields.get("user_defined"))
        if not ok:
            errors["user_defined"] = ["The user defined must be a JSON object."]

        raw_audio_id = fields.get("audio_id")
        audio_id = ""
        if self.profile.audio_id_ignored:
            pass  # not a field of this API: dropped without a word, as Laravel drops unknown input
        elif isinstance(raw_audio_id, str | int) and not isinstance(raw_audio_id, bool):
            audio_id = str(raw_audio_id)
        elif raw_audio_id is not None:
            errors["audio_id"] = ["The audio id must be a string."]

        if errors:
            return invalid(errors)
        assert title is not None  # _check_title recorded an error otherwise

        if (delay := self.faults.upload_delay) > 0:
            self.stats.fault("upload_delay")  # counted on arrival: tests can tell a POST is in our hands
            time.sleep(delay)

        if data_type in ("audio", "fingerprint"):
            duration = round(size / BYTES_PER_SECOND, 6)
            final_state = 1 if size > 0 else -1
            if fingerprint_ms is not None:
                duration = fingerprint_ms / 1000
            elif not_a_fingerprint:
                final_state = -1  # fingerprint-unchecked: taken, then it fails to process
        else:
            duration = URL_DURATION
            bad = any(marker in url.lower() for marker in BAD_URL_MARKERS)
            final_state = -1 if bad else 1
        created = self.store.create(
            bucket_id=bucket,
            title=title,
            audio_id=audio_id,
            user_defined=user_defined or {},
            duration=duration,
            final_state=final_state,
            processing_delay=self.processing_delay,
            acr_id=acrid,
            received_bytes=received,
            data_type=str(data_type),
        )
        self.stats.upload_created()
        if self.injector.created_then_error():
            self.stats.fault("created_then_error")
            return json_response({"message": ERROR_MESSAGES[500]}, 500)
        if self.profile.upload_without_ids:
            created = {**created, "id": None, "acr_id": None}
        return json_response({"data": created})

    def _list(self, request: Request, bucket: int) -> Response:
        q = request.args
        errors: dict[str, list[str]] = {}
        sort = q.get("sort") or "id"
        if sort not in ("id", "state"):
            errors["sort"] = ["The selected sort is invalid."]
        order = (q.get("order") or "asc").lower()
        if order not in ("asc", "desc"):
            errors["order"] = ["The selected order is invalid."]
        state: int | None = None
        if (raw_state := q.get("state", "")) != "":
            try:
                state = int(raw_state)
            except ValueError:
                state = None
            if state not in (0, 1, -1):
                errors["state"] = ["The selected state is invalid."]
        if errors:
            return invalid(errors)

        # Like Laravel's paginator: a page or per_page that is not a positive integer falls back.
        page = q.get("page", type=int) or 1
        page = max(1, page)
        per_page = q.get("per_page", type=int) or DEFAULT_PER_PAGE
        per_page = min(MAX_PER_PAGE, max(1, per_page))

        if q.get("search"):
            self.stats.searched(bucket, q["search"])
        items, total = self.store.list_page(
            bucket,
            search=q.get("search", ""),
            state=state,
            sort=sort,
            descending=order == "desc",
            page=page,
            per_page=per_page,
        )
        last_page = max(1, -(-total // per_page))
        path = f"{request.url_root.rstrip('/')}{API_PREFIX}/buckets/{bucket}/files"

        def link(n: int) -> str:
            # Laravel's default links carry only ?page=N (no withQueryString()): filters are not kept.
            return f"{path}?page={n}"

        first_index = (page - 1) * per_page + 1
        return json_response(
            {
                "data": self._shown(items),
                "links": {
                    "first": link(1),
                    "last": link(last_page),
                    "prev": link(page - 1) if page > 1 else None,
                    "next": link(page + 1) if page < last_page else None,
                },
                "meta": {
                    "current_page": page,
                    "from": first_index if items else None,
                    "last_page": last_page,
                    "path": path,
                    "per_page": str(per_page),
                    "to": first_index + len(items) - 1 if items else None,
                    "total": total,
                },
            }
        )

    def _shown(self, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Files as this profile shows them (the state may be an odd value)."""
        if not self.profile.odd_states:
            return files
        return [{**f, "state": self.profile.state_shown(f["state"])} for f in files]

    def _batch_answer(self, files: list[dict[str, Any]]) -> Response:
        """What a delete or move answers on success, in this profile's shape."""
        shape = self.profile.batch_body
        if shape == "empty":
            return Response(b"", status=200)
        if shape == "204":
            return Response(status=204)
        if shape == "true":
            return json_response({"data": True})
        if shape == "object":
            return json_response({"data": {"affected": len(files)}})
        if shape == "count":
            return json_response(len(files))
        return json_response({"data": self._shown(files)})

    def _get(self, request: Request, bucket: int, ids: str) -> Response:
        found = self.store.get_many(bucket, _split_ids(ids), all_or_nothing=self.profile.batch_404_if_any_missing)
        if not found:
            return json_response({"message": FILE_NOT_FOUND}, 404)
        return json_response({"data": self._shown(found)})

    def _update(self, request: Request, bucket: int, ids: str) -> Response:
        fields = self._fields(request)
        errors: dict[str, list[str]] = {}
        title: str | None = None
        if "title" in fields:
            title = _check_title(fields["title"], errors)
        raw_ud = fields.get("user_defined")
        ok, user_defined = _parse_user_defined(raw_ud)
        if not ok:
            errors["user_defined"] = ["The user defined must be a JSON object."]
        elif self.profile.user_defined_string_only and raw_ud is not None and not isinstance(raw_ud, str):
            errors["user_defined"] = ["The user defined must be a string."]
        if errors:
            return invalid(errors)
        key = ids.strip()
        # One file only: a comma-separated list names no single file.
        updated = None if "," in key else self.store.update(bucket, key, title=title, user_defined=user_defined)
        if updated is None:
            return json_response({"message": FILE_NOT_FOUND}, 404)
        return json_response({"data": self._shown([updated])[0]})

    def _delete_keys(self, bucket: int, keys: list[str]) -> Response:
        deleted = self.store.delete_many(bucket, keys, all_or_nothing=self.profile.batch_404_if_any_missing)
        if not deleted:
            return json_response({"message": FILE_NOT_FOUND}, 404)
        return self._batch_answer(deleted)

    def _delete(self, request: Request, bucket: int, ids: str) -> Response:
        return self._delete_keys(bucket, _split_ids(ids))

    def _delete_body(self, request: Request, bucket: int) -> Response:
        keys = _ids_from_body(self._fields(request).get("ids"))
        if keys is None:
            return invalid({"ids": ["The ids field is required."]})
        return self._delete_keys(bucket, keys)

    def _move_keys(self, target: int, keys: list[str]) -> Response:
        moved = self.store.move_many(target, keys, all_or_nothing=self.profile.batch_404_if_any_missing)
        if not moved:
            return json_response({"message": FILE_NOT_FOUND}, 404)
        return self._batch_answer(moved)

    def _move(self, request: Request, bucket: int, ids: str) -> Response:
        # Here the path's bucket is the TARGET; the files may be in any bucket of the account.
        return self._move_keys(bucket, _split_ids(ids))

    def _move_body(self, request: Request, bucket: int) -> Response:
        fields = self._fields(request)
        errors: dict[str, list[str]] = {}
        keys = _ids_from_body(fields.get("ids"))
        if keys is None:
            errors["ids"] = ["The ids field is required."]
        raw_target = fields.get("target_bucket_id")
        target: int | None = None
        if isinstance(raw_target, int) and not isinstance(raw_target, bool):
            target = raw_target
        elif isinstance(raw_target, str) and raw_target.strip().isdigit():
            target = int(raw_target)
        else:
            errors["target_bucket_id"] = ["The target bucket id field is required."]
        if errors:
            return invalid(errors)
        assert target is not None and keys is not None
        if not self._bucket_exists(target):
            return json_response({"message": BUCKET_NOT_FOUND}, 404)
        return self._move_keys(target, keys)

    # --- control endpoints (out-of-process tests; no auth, loopback clients only) ---------------

    def _control(self, request: Request, endpoint: str | None, error: HTTPException | None) -> Response:
        if not _is_loopback(request.remote_addr):
            return json_response({"message": "Control endpoints answer loopback clients only."}, 403)
        if endpoint is None:
            return self._routing_error(request, error)
        method = request.method
        if endpoint == "ctl:stats":
            return json_response(self.stats.snapshot())
        if endpoint == "ctl:files":
            raw = request.args.get("bucket_id", "")
            if raw and not raw.isdigit():
                return invalid({"bucket_id": ["The bucket id must be an integer."]})
            return json_response({"data": self.store.snapshot(int(raw) if raw else None)})
        if endpoint == "ctl:faults":
            if method == "POST":
                body = request.get_json(silent=True)
                if not isinstance(body, dict):
                    return invalid({"faults": ["Send a JSON object of fault knobs."]})
                try:
                    self.faults.update(**body)
                except (TypeError, ValueError) as exc:
                    return invalid({"faults": [str(exc)]})
            elif method == "DELETE":
                self.faults.reset()
            return json_response({"data": self.faults.as_dict()})
        if endpoint == "ctl:tokens":
            body = request.get_json(silent=True)
            tokens = body.get("tokens") if isinstance(body, dict) else None
            if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
                return invalid({"tokens": ['Send {"tokens": [non-empty strings]}.']})
            self.tokens = frozenset(tokens)
            # The count only: tokens are never echoed.
            return json_response({"data": {"tokens": len(self.tokens)}})
        # ctl:reset
        self.on_reset()
        return json_response({"data": {"reset": True}})
