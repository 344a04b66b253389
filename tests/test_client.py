"""The HTTP client against the project's emulator, over real HTTP on loopback."""

from __future__ import annotations

import json
import logging
import pickle
import socket
import subprocess
import sys
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

from ingest.api.client import UPLOAD_READ_SIZE, USER_AGENT, AcrCloudClient, _FileForm, _form_fields, retry_after_seconds
from ingest.api.errors import (
    ApiError,
    AuthError,
    ClientError,
    NotFoundError,
    RateLimitedError,
    TransientError,
    ValidationError,
)
from ingest.api.schemas import BucketFile, FileState, Page
from ingest.devtools.emulator import Emulator
from ingest.settings import Settings
from tests.helpers import vendor_examples

TOKEN = "tok-S3CRET-7f3a9c-do-not-leak"
PROCESSING_DELAY = 0.2
LIST_ROUTE = "GET /buckets/{bucket}/files"  # the emulator's stats key of the list call


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(tokens={TOKEN}, processing_delay=PROCESSING_DELAY, seed=7).start(host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean_faults(emu: Emulator) -> Iterator[None]:
    emu.faults.reset()
    emu.set_tokens({TOKEN})
    yield
    emu.faults.reset()
    emu.set_tokens({TOKEN})


@pytest.fixture()
def client(emu: Emulator) -> Iterator[AcrCloudClient]:
    with AcrCloudClient(emu.url, TOKEN, connect_timeout=1.0, read_timeout=3.0) as c:
        yield c


_bucket_seq = iter(range(9100, 9999))


@pytest.fixture()
def bucket() -> int:
    """A fresh bucket per test: tests share one emulator but never each other's files."""
    return next(_bucket_seq)


def _audio(tmp_path: Path, name: str = "song.mp3", size: int = 4096) -> Path:
    path = tmp_path / name
    path.write_bytes(b"ID3" + bytes(range(256)) * (size // 256))
    return path


def _wait_state(client: AcrCloudClient, bucket: int, file_id: int, state: int) -> BucketFile:
    deadline = time.monotonic() + 5
    while True:
        (f,) = client.get_files(bucket, [file_id])
        if f.state == state or time.monotonic() > deadline:
            return f
        time.sleep(0.05)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- schemas -------------------------------------------------------------------------------------


def test_schemas_parse_every_vendor_example() -> None:
    vendor = vendor_examples()
    upload, listing, update, get = (vendor[k] for k in ("upload", "list", "update", "get"))
    up = BucketFile.model_validate(upload["data"])
    assert up.duration == pytest.approx(78.524082)  # a string in the upload answer
    assert up.state == FileState.PROCESSING and up.user_defined == {} and up.audio_id == ""
    page = Page.model_validate(listing)
    assert (page.per_page, page.total, page.current_page, page.last_page) == (20, 7, 1, 1)
    assert page.files[0].duration == 79.0  # a number in lists
    assert page.files[-1].model_extra == {"fp_id": None}  # extra keys tolerated, kept
    assert page.files[2].user_defined["played_duration"] == 8
    assert not page.has_more and page.next_url is None
    assert BucketFile.model_validate(update["data"]).user_defined == {"artists": "update-artist"}
    assert [f.id for f in map(BucketFile.model_validate, get["data"])][:2] == [12945472, 12403501]


def test_schema_coercions() -> None:
    base = {"id": "5", "acr_id": "a" * 32, "bucket_id": 1, "state": -1}
    f = BucketFile.model_validate({**base, "user_defined": '{"k": 1}', "duration": None, "title": None, "audio_id": 42})
    assert (f.id, f.user_defined, f.duration, f.title, f.audio_id) == (5, {"k": 1}, None, "", "42")
    assert f.is_error and f.file_state is FileState.ERROR
    assert BucketFile.model_validate({**base, "user_defined": None}).user_defined == {}
    assert BucketFile.model_validate({**base, "user_defined": []}).user_defined == {}  # PHP's empty array
    assert BucketFile.model_validate({**base, "duration": "12"}).duration == 12.0
    assert BucketFile.model_validate({**base, "state": 7}).file_state is None  # unknown state: no crash


# ---- uploads -------------------------------------------------------------------------------------


def test_upload_file_multipart(client: AcrCloudClient, emu: Emulator, bucket: int, tmp_path: Path) -> None:
    ud = {"artist": "Ä", "n": 1}
    f = client.upload_file(bucket, _audio(tmp_path), title="Song", user_defined=ud, audio_id="ref-1")
    assert isinstance(f, BucketFile)
    assert (f.bucket_id, f.title, f.user_defined, f.audio_id) == (bucket, "Song", ud, "ref-1")
    assert f.state == FileState.PROCESSING and len(f.acr_id) == 32
    assert [x["id"] for x in emu.files(bucket)] == [f.id]
    assert _wait_state(client, bucket, f.id, FileState.READY).is_ready


def test_upload_file_body_is_the_encoders_read_in_blocks(tmp_path: Path) -> None:
    # The same bytes as MultipartEncoder would send, but the file read in UPLOAD_READ_SIZE blocks whatever
    # urllib3 asks for (16 KiB): reading it through the encoder cost 2.5x curl's time for 1 GB.
    from requests_toolbelt import MultipartEncoder

    big = tmp_path / "big.wav"
    size = 4 * UPLOAD_READ_SIZE + 7
    big.write_bytes(bytes(range(256)) * (size // 256) + b"\1" * (size % 256))
    fields = _form_fields("audio", "Ä title", {"artist": "Ä", "n": 1}, "ref-1")
    with big.open("rb") as fh, big.open("rb") as again:
        form = _FileForm(fields, "big.wav", fh, "audio/x-wav", boundary="b0undary")
        blocks = []
        while block := form.read(16 * 1024):
            blocks.append(block)
        expected = MultipartEncoder([*fields, ("file", ("big.wav", again, "audio/x-wav"))], boundary="b0undary")
        assert b"".join(blocks) == expected.to_string()
    assert form.len == len(b"".join(blocks))
    assert form.content_type == "multipart/form-data; boundary=b0undary"
    assert max(len(b) for b in blocks[1:-1]) == UPLOAD_READ_SIZE and len(blocks) == 4 + 1 + 2  # head, file, tail


def test_upload_file_sends_the_whole_file(client: AcrCloudClient, emu: Emulator, bucket: int, tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    size = 3 * UPLOAD_READ_SIZE + 7
    big.write_bytes(b"\1" * size)
    f = client.upload_file(bucket, big, title="blocks")
    assert emu.received_bytes(bucket) == {f.id: size}


def test_upload_empty_file_ends_in_error_state(client: AcrCloudClient, bucket: int, tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    f = client.upload_file(bucket, empty, title="empty")
    assert _wait_state(client, bucket, f.id, FileState.ERROR).is_error


def test_upload_file_checks_arguments_locally(client: AcrCloudClient, emu: Emulator, tmp_path: Path) -> None:
    before = emu.stats()["requests"]
    with pytest.raises(ValueError, match="data_type"):
        client.upload_file(1, _audio(tmp_path), title="t", data_type="audio_url")
    with pytest.raises(FileNotFoundError):
        client.upload_file(1, tmp_path / "missing.mp3", title="t")
    assert emu.stats()["requests"] == before


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "multipart"])
def test_upload_url(client: AcrCloudClient, bucket: int, as_json: bool) -> None:
    ud = {"artists": "a", "nested": {"x": [1, 2]}}
    f = client.upload_url(
        bucket, "https://host.example/x.mp3", title="by-url", user_defined=ud, audio_id="u1", as_json=as_json
    )
    assert (f.bucket_id, f.title, f.user_defined, f.audio_id) == (bucket, "by-url", ud, "u1")
    assert isinstance(f.duration, float | None)


def test_upload_streams_from_disk_with_flat_memory(tmp_path: Path) -> None:
    """A 50 MB upload must not be read into memory. The emulator runs in a child process here, so
    tracemalloc (which sees every thread of this process) measures the client alone."""
    size = 50 * 1024 * 1024
    big = tmp_path / "big.wav"
    with big.open("wb") as fh:
        fh.truncate(size)  # sparse: costs no disk
    script = (
        "import sys\nfrom ingest.devtools.emulator import Emulator\n"
        f"e = Emulator(tokens={{{TOKEN!r}}}, processing_delay=0.05).start(host='127.0.0.1', port=0)\n"
        "print(e.url, flush=True)\nsys.stdin.read()\ne.stop()\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://"), "the emulator did not start"
        with AcrCloudClient(url, TOKEN, read_timeout=30) as c:
            tracemalloc.start()
            try:
                f = c.upload_file(1, big, title="big", data_type="audio")
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert f.title == "big"
        assert peak < 10 * 1024 * 1024, f"peak traced memory {peak / 1e6:.1f} MB for a 50 MB upload"
    finally:
        proc.communicate(input="", timeout=10)


# ---- list ----------------------------------------------------------------------------------------


def test_list_and_iter_files_over_pages(client: AcrCloudClient, emu: Emulator, bucket: int) -> None:
    made = [
        client.upload_url(bucket, f"https://h.example/{i}.mp3", title=f"{'rock' if i % 2 else 'jazz'}-{i}")
        for i in range(7)
    ]
    page = client.list_page(bucket, page=1, per_page=3)
    assert (page.current_page, page.last_page, page.per_page, page.total) == (1, 3, 3, 7)
    assert page.has_more and len(page.files) == 3

    lists_before = emu.stats()["by_route"].get(LIST_ROUTE, 0)
    got = list(client.iter_files(bucket, per_page=3))
    assert [f.id for f in got] == sorted(f.id for f in made)
    assert emu.stats()["by_route"][LIST_ROUTE] - lists_before == 3  # numbered pages, no extra call

    rock = list(client.iter_files(bucket, per_page=2, search="rock"))
    assert sorted(f.title for f in rock) == sorted(f.title for f in made if f.title.startswith("rock"))
    assert len(rock) == 3  # spans two pages of 2: the filter is kept on page 2

    desc = list(client.iter_files(bucket, per_page=3, sort="id", order="desc"))
    assert [f.id for f in desc] == sorted((f.id for f in made), reverse=True)


def test_iter_files_state_filter(client: AcrCloudClient, bucket: int, tmp_path: Path) -> None:
    empty = tmp_path / "e.mp3"
    empty.write_bytes(b"")
    bad = [client.upload_file(bucket, empty, title=f"bad{i}") for i in range(3)]
    good = client.upload_file(bucket, _audio(tmp_path), title="good")
    _wait_state(client, bucket, good.id, FileState.READY)
    for f in bad:
        _wait_state(client, bucket, f.id, FileState.ERROR)
    errored = list(client.iter_files(bucket, per_page=2, state=FileState.ERROR))
    assert sorted(f.id for f in errored) == sorted(f.id for f in bad)
    assert [f.id for f in client.iter_files(bucket, per_page=2, state=FileState.READY)] == [good.id]


def test_iter_files_empty_bucket(client: AcrCloudClient, bucket: int) -> None:
    assert list(client.iter_files(bucket)) == []


# ---- update / delete / move / get ------------------------------------------------------------------


def test_update_by_id_and_by_acr_id(client: AcrCloudClient, bucket: int) -> None:
    f = client.upload_url(bucket, "https://h.example/u.mp3", title="old", user_defined={"a": 1})
    g = client.update_file(bucket, f.id, title="new")
    assert (g.id, g.title) == (f.id, "new")
    h = client.update_file(bucket, f.acr_id, user_defined={"artist": "b"})
    assert (h.id, h.title, h.user_defined) == (f.id, "new", {"artist": "b"})
    with pytest.raises(ValueError, match="title or user_defined"):
        client.update_file(bucket, f.id)


def test_get_delete_move_with_several_ids(client: AcrCloudClient, emu: Emulator, bucket: int) -> None:
    target = next(_bucket_seq)
    a, b, c, d = (client.upload_url(bucket, f"https://h.example/{i}.mp3", title=f"t{i}") for i in range(4))

    # numeric ids and acr_ids mixed, with stray spaces
    got = client.get_files(bucket, [f" {a.id} ", b.acr_id, str(c.id)])
    assert sorted(f.id for f in got) == sorted([a.id, b.id, c.id])

    # partial: the unknown ids are simply absent
    got = client.get_files(bucket, [a.id, 999_999_999, "f" * 32])
    assert [f.id for f in got] == [a.id]

    moved = client.move_files(target, [a.acr_id, f" {b.id}"])
    assert sorted(f.id for f in moved) == sorted([a.id, b.id])
    assert {x["id"] for x in emu.files(target)} == {a.id, b.id}
    assert {f.id for f in client.get_files(target, [a.id, b.id])} == {a.id, b.id}

    deleted = client.delete_files(bucket, [c.id, d.acr_id, 999_999_998])  # one unknown: partial success
    assert sorted(f.id for f in deleted) == sorted([c.id, d.id])
    assert emu.files(bucket) == []

    with pytest.raises(NotFoundError):
        client.get_files(bucket, [c.id])
    with pytest.raises(NotFoundError):
        client.delete_files(bucket, [c.id, d.id])
    with pytest.raises(NotFoundError):
        client.move_files(target, [999_999_997])


@pytest.mark.parametrize("bad", [[], [" "], ["1,2"], "12"])
def test_ids_are_validated_locally(client: AcrCloudClient, bad: Any) -> None:
    with pytest.raises(ValueError, match="ids"):
        client.get_files(1, bad)


# ---- errors --------------------------------------------------------------------------------------


def test_bad_token_is_auth_error_and_provider_rotation(emu: Emulator, bucket: int) -> None:
    current = {"token": "wrong-token"}
    with AcrCloudClient(emu.url, lambda: current["token"], read_timeout=3) as c:
        with pytest.raises(AuthError) as ei:
            c.list_page(bucket)
        assert ei.value.status == 401 and ei.value.message == "Unauthenticated."
        current["token"] = TOKEN  # picked up on the very next call, no new client
        assert c.list_page(bucket).total == 0

        emu.set_tokens({"rotated-token"})  # the server rotates: the old token is now refused
        with pytest.raises(AuthError):
            c.list_page(bucket)
        current["token"] = "rotated-token"
        assert c.list_page(bucket).files == []


def test_no_token_fails_without_a_request(emu: Emulator) -> None:
    before = emu.stats()["requests"]
    for token in (None, "", "  "):
        with AcrCloudClient(emu.url, lambda t=token: t) as c, pytest.raises(AuthError, match="no access token"):
            c.list_page(1)
    with AcrCloudClient(emu.url, "bad\ntoken") as c, pytest.raises(AuthError, match="not allowed"):
        c.list_page(1)
    assert emu.stats()["requests"] == before


def test_not_found(client: AcrCloudClient, bucket: int) -> None:
    with pytest.raises(NotFoundError) as ei:
        client.update_file(bucket, 987_654_321, title="x")
    assert ei.value.status == 404 and ei.value.method == "PUT" and "/987654321" in ei.value.url


def test_validation_errors_carry_fields(client: AcrCloudClient, bucket: int) -> None:
    with pytest.raises(ValidationError) as ei:
        client.upload_url(bucket, "not a url", title="t")
    assert ei.value.status == 422 and "url" in ei.value.errors
    assert all(isinstance(m, str) for m in ei.value.errors["url"])
    assert "url" in str(ei.value)
    with pytest.raises(ValidationError) as ei:
        client.upload_url(bucket, "https://h.example/x.mp3", title="", as_json=False)
    assert "title" in ei.value.errors


def test_rate_limited_carries_retry_after(client: AcrCloudClient, emu: Emulator, bucket: int) -> None:
    emu.faults.retry_after = 7
    emu.faults.burst_429 = 1
    with pytest.raises(RateLimitedError) as ei:
        client.list_page(bucket)
    assert ei.value.status == 429 and ei.value.retry_after == 7.0 and ei.value.transient


def test_retry_after_parsing() -> None:
    assert retry_after_seconds(None) is None and retry_after_seconds("") is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds("1.5") == 1.5 and retry_after_seconds("-4") == 0.0
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_seconds(when) or 0) <= 30
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(past) == 0.0


def test_server_error_is_transient_maybe_applied(client: AcrCloudClient, emu: Emulator, bucket: int) -> None:
    emu.faults.error_rate = 1.0
    with pytest.raises(TransientError) as ei:
        client.upload_url(bucket, "https://h.example/x.mp3", title="t")
    assert ei.value.status is not None and ei.value.status >= 500
    assert ei.value.maybe_applied and ei.value.transient


def test_connection_refused_is_transient_not_applied() -> None:
    with AcrCloudClient(f"http://127.0.0.1:{_closed_port()}/api", TOKEN) as c, pytest.raises(TransientError) as ei:
        c.upload_url(1, "https://h.example/x.mp3", title="t")
    assert ei.value.maybe_applied is False and ei.value.status is None
    assert ei.value.method == "POST" and ei.value.url.endswith("/api/buckets/1/files")


def test_read_timeout_is_transient_maybe_applied(emu: Emulator, bucket: int) -> None:
    emu.faults.latency = 1.0
    emu.faults.latency_rate = 1.0
    with AcrCloudClient(emu.url, TOKEN, read_timeout=0.2) as c:
        started = time.monotonic()
        with pytest.raises(TransientError, match="read timeout") as ei:
            c.list_page(bucket)
    assert ei.value.maybe_applied is True
    assert time.monotonic() - started < 0.9


def test_connection_reset_is_transient(client: AcrCloudClient, emu: Emulator, bucket: int) -> None:
    emu.faults.reset_rate = 1.0
    with pytest.raises(TransientError) as ei:
        client.list_page(bucket)
    assert ei.value.maybe_applied is True and ei.value.status is None


# ---- headers, timeouts, gate -----------------------------------------------------------------------


class _RecordingAdapter(HTTPAdapter):
    def __init__(self) -> None:
        super().__init__(max_retries=0)
        self.sent: list[tuple[requests.PreparedRequest, Any]] = []

    def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append((request, kw.get("timeout")))
        return super().send(request, **kw)


def test_every_request_has_headers_and_both_timeouts(emu: Emulator, bucket: int, tmp_path: Path) -> None:
    adapter = _RecordingAdapter()
    session = requests.Session()
    session.mount("http://", adapter)
    with AcrCloudClient(emu.url, TOKEN, connect_timeout=1.5, read_timeout=4.0, session=session) as c:
        f = c.upload_file(bucket, _audio(tmp_path), title="h")
        c.upload_url(bucket, "https://h.example/y.mp3", title="h2")
        c.list_page(bucket)
        c.update_file(bucket, f.id, title="h3")
        c.get_files(bucket, [f.id])
        c.move_files(bucket, [f.id])
        c.delete_files(bucket, [f.id])
    assert [r.method for r, _ in adapter.sent] == ["POST", "POST", "GET", "PUT", "GET", "PUT", "DELETE"]
    for req, timeout in adapter.sent:
        assert timeout == (1.5, 4.0)
        assert req.headers["Authorization"] == f"Bearer {TOKEN}"
        assert req.headers["Accept"] == "application/json"
        assert req.headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("acr-ingest/")
    assert "Authorization" not in session.headers


def test_gate_sees_each_operation_and_can_refuse(emu: Emulator, bucket: int, tmp_path: Path) -> None:
    seen: list[str] = []
    with AcrCloudClient(emu.url, TOKEN, gate=seen.append) as c:
        f = c.upload_file(bucket, _audio(tmp_path), title="g")
        c.upload_url(bucket, "https://h.example/g.mp3", title="g2")
        list(c.iter_files(bucket, per_page=1))
        c.update_file(bucket, f.id, title="g3")
        c.get_files(bucket, [f.id])
        c.move_files(bucket, [f.id])
        c.delete_files(bucket, [f.id])
    assert seen == ["upload", "upload", "list", "list", "update", "get", "move", "delete"]

    class Refused(Exception):
        pass

    def refuse(op: str) -> None:
        raise Refused(op)

    before = emu.stats()["requests"]
    with AcrCloudClient(emu.url, TOKEN, gate=refuse) as c, pytest.raises(Refused, match="list"):
        c.list_page(bucket)
    assert emu.stats()["requests"] == before


def test_from_settings(emu: Emulator, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        api_base_url=emu.url + "/",
        access_token=None,
        access_token_file=token_file,
        connect_timeout=1.5,
        read_timeout=9,
    )
    with AcrCloudClient.from_settings(settings) as c:
        assert c.base_url == emu.url and c.timeout == (1.5, 9.0)
        assert c.list_page(1).current_page == 1
        token_file.write_text("rotated\n")  # the file is re-read on every request
        with pytest.raises(AuthError):
            c.list_page(1)
    assert TOKEN not in repr(c)


# ---- responses the emulator does not produce (a stub adapter, no network) ---------------------------


class _StubAdapter(HTTPAdapter):
    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.status, self.body, self.headers = status, body, headers or {}

    def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:  # type: ignore[override]
        resp = requests.Response()
        resp.status_code, resp._content, resp.url, resp.request = self.status, self.body, request.url, request
        resp.headers.update(self.headers)
        return resp


def _stub_client(status: int, body: bytes, headers: dict[str, str] | None = None) -> AcrCloudClient:
    session = requests.Session()
    session.mount("https://", _StubAdapter(status, body, headers))
    return AcrCloudClient("https://api.example/api", TOKEN, session=session)


@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        (200, b"<html>gateway</html>", ApiError, "unexpected response (not JSON)"),
        (200, b'{"data": {"id": "x"}}', ApiError, "unexpected response"),
        (403, b'{"error": "forbidden bucket"}', AuthError, "forbidden bucket"),
        (400, b"plain text failure", ClientError, "plain text failure"),
        (409, b'{"message": "conflict"}', ClientError, "conflict"),
        (302, b"", ClientError, "redirect"),
        (404, '{"message": "caf\u00e9"}'.encode(), NotFoundError, "caf\u00e9"),
        (503, b"", TransientError, "HTTP 503"),
        (
            422,
            b'{"name": "x", "message": "Lack field:title", "code": 0, "status": 422}',
            ValidationError,
            "Lack field:title",
        ),
    ],
)
def test_response_mapping(status: int, body: bytes, cls: type[ApiError], message: str) -> None:
    with _stub_client(status, body, {"Location": "https://x/"}) as c, pytest.raises(cls) as ei:
        c.update_file(1, 2, title="t")
    assert type(ei.value) is cls and message in str(ei.value)
    assert ei.value.status == status and ei.value.method == "PUT"
    assert ei.value.url == "https://api.example/api/buckets/1/files/2"


class _RaisingAdapter(HTTPAdapter):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:  # type: ignore[override]
        self.exc.request = request  # type: ignore[attr-defined]  # as requests does: it holds the headers
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "cls", "maybe_applied"),
    [
        (requests.ConnectTimeout("connect timed out"), TransientError, False),
        (requests.ReadTimeout("read timed out"), TransientError, True),
        (requests.exceptions.ChunkedEncodingError("broken chunk"), TransientError, True),
        (requests.ConnectionError("Connection aborted."), TransientError, True),
        (requests.exceptions.InvalidURL("bad url"), ApiError, None),
    ],
)
def test_exception_mapping(exc: Exception, cls: type[ApiError], maybe_applied: bool | None) -> None:
    session = requests.Session()
    session.mount("https://", _RaisingAdapter(exc))
    with AcrCloudClient("https://api.example/api", TOKEN, session=session) as c, pytest.raises(ApiError) as ei:
        c.list_page(3)
    assert type(ei.value) is cls and ei.value.__context__ is None and ei.value.status is None
    assert getattr(ei.value, "maybe_applied", None) is maybe_applied
    assert ei.value.url.startswith("https://api.example/api/buckets/3/files?page=1")
    assert TOKEN not in repr(ei.value) and TOKEN.encode() not in pickle.dumps(ei.value)


def test_408_is_transient_not_applied() -> None:
    with _stub_client(408, b'{"message": "Request Timeout"}') as c, pytest.raises(TransientError) as ei:
        c.get_files(1, [1])
    assert ei.value.maybe_applied is False


def test_iter_files_ends_against_a_server_ignoring_page() -> None:
    # Always page 1 of 3: the client's own page counter must still end the walk.
    body = {"data": [{"id": 1, "acr_id": "a", "bucket_id": 1, "state": 1}], "meta": {"current_page": 1, "last_page": 3}}
    with _stub_client(200, json.dumps(body).encode()) as c:
        assert len(list(c.iter_files(1))) == 3


def test_delete_with_empty_body_returns_empty_list() -> None:
    with _stub_client(204, b"") as c:
        assert c.delete_files(1, [1, 2]) == []
    with _stub_client(200, b'{"message": "deleted"}') as c:
        assert c.move_files(1, [1]) == []


def test_server_echoing_the_token_is_scrubbed() -> None:
    body = json.dumps({"message": f"bad header Bearer {TOKEN}"}).encode()
    with _stub_client(400, body) as c, pytest.raises(ClientError) as ei:
        c.get_files(1, [1])
    assert TOKEN not in str(ei.value) and TOKEN not in ei.value.body and "***" in ei.value.body


def test_scrubbing_never_alters_parsed_data(emu: Emulator, bucket: int) -> None:
    # Only error text is scrubbed: data that happens to contain the token string comes back intact.
    with AcrCloudClient(emu.url, TOKEN) as c:
        assert c.upload_url(bucket, "https://h.example/s.mp3", title=f"t {TOKEN}").title == f"t {TOKEN}"
    emu.set_tokens({"t"})  # a one-letter token must not garble answers either
    with AcrCloudClient(emu.url, "t") as c:
        assert c.upload_url(bucket, "https://h.example/s.mp3", title="title").title == "title"


# ---- the token never leaks ---------------------------------------------------------------------------


def test_token_never_in_errors_or_logs(
    emu: Emulator, bucket: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []

    def attempt(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except ApiError as exc:
            errors.append(exc)

    with AcrCloudClient(emu.url, TOKEN, read_timeout=0.3) as c:
        f = c.upload_file(bucket, _audio(tmp_path), title="leak?")
        c.list_page(bucket)
        attempt(lambda: c.get_files(bucket, [123_456_789]))  # 404
        attempt(lambda: c.upload_url(bucket, "nope", title="t"))  # 422
        emu.faults.error_rate = 1.0
        attempt(lambda: c.update_file(bucket, f.id, title="x"))  # 5xx
        emu.faults.reset()
        emu.faults.burst_429, emu.faults.retry_after = 1, 2
        attempt(lambda: c.list_page(bucket))  # 429
        emu.faults.reset()
        emu.faults.reset_rate = 1.0
        attempt(lambda: c.list_page(bucket))  # reset
        emu.faults.reset()
        emu.faults.latency, emu.faults.latency_rate = 1.0, 1.0
        attempt(lambda: c.list_page(bucket))  # read timeout
        emu.faults.reset()
        emu.set_tokens({"other"})
        attempt(lambda: c.list_page(bucket))  # 401
    with AcrCloudClient(f"http://127.0.0.1:{_closed_port()}/api", TOKEN) as c:
        attempt(lambda: c.list_page(bucket))  # refused

    assert {type(e) for e in errors} >= {NotFoundError, ValidationError, TransientError, RateLimitedError}
    assert AuthError in {type(e) for e in errors} and len(errors) == 8
    for err in errors:
        assert isinstance(err, ApiError)
        texts = [str(err), repr(err), err.body, err.url, err.message, "".join(traceback.format_exception(err))]
        assert all(TOKEN not in t for t in texts), err
        assert err.__cause__ is None and err.__context__ is None  # the requests exception held the header
        assert TOKEN.encode() not in pickle.dumps(err)
        assert type(pickle.loads(pickle.dumps(err))) is type(err)
    records = [r for r in caplog.records if r.name == "ingest.api.client"]
    assert len(records) >= 10  # one line per request, failures included
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text
