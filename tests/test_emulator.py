"""The ACRCloud API emulator over real HTTP, checked against the vendor page's own JSON examples.

The examples are parsed out of tests/fixtures/vendor-files-api.zh.txt here, so a shape drift in either
the emulator or the fixture shows up as a key-set or value-type difference.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ingest.devtools.emulator import Emulator, Faults
from ingest.devtools.emulator.__main__ import _parser
from ingest.fingerprints import Fingerprint, extract
from tests.fingerprint_audio import write_wav
from tests.helpers import vendor_examples

TOKEN = "emu-test-token"
ROOT = Path(__file__).resolve().parents[1]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
AUDIO = b"ID3" + bytes(range(256)) * 64  # 16 KiB of "audio"
FILE_404 = {"message": "No query results for model [App\\Models\\File]."}


# ---- the vendor's examples -------------------------------------------------------------------------


VENDOR = vendor_examples()


def _kind(value: Any) -> str:
    """The JSON type of a value (int and float are both a JSON number)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", dict: "object", list: "array"}[type(value)]


def _assert_like(ours: dict[str, Any], theirs: dict[str, Any], *, what: str) -> None:
    assert set(ours) == set(theirs), f"{what}: keys differ: {set(ours) ^ set(theirs)}"
    for key, value in theirs.items():
        if value is not None:  # a null in the example says nothing about the type
            assert _kind(ours[key]) == _kind(value), f"{what}.{key}: {ours[key]!r} vs example {value!r}"


def _assert_file_like_list_items(item: dict[str, Any], examples: list[dict[str, Any]], what: str) -> None:
    # The examples' items differ slightly (one list item carries fp_id): match the common keys and stay
    # within the union.
    common = set.intersection(*(set(e) for e in examples))
    union = set.union(*(set(e) for e in examples))
    assert common <= set(item) <= union, f"{what}: keys {sorted(item)}"
    typical = next(e for e in examples if set(e) == common)
    _assert_like({k: item[k] for k in common}, typical, what=what)
    assert ISO.match(item["created_at"]) and ISO.match(item["updated_at"])
    assert HEX32.match(item["acr_id"])


def test_vendor_examples_are_found() -> None:
    assert set(VENDOR) == {"upload", "list", "update", "get"}
    assert VENDOR["upload"]["data"]["duration"] == "78.524082"
    assert VENDOR["list"]["meta"]["per_page"] == "20"


# ---- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(tokens={TOKEN}, processing_delay=0.2, seed=11).start(host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture(autouse=True)
def _calm(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "emu" in request.fixturenames:
        emu: Emulator = request.getfixturevalue("emu")
        emu.faults.reset()
        emu.set_tokens({TOKEN})
        emu.processing_delay = 0.2


_buckets = itertools.count(7000)


@pytest.fixture()
def bucket() -> int:
    """A bucket of this test's own: tests share the module's emulator, never each other's files."""
    return next(_buckets)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.headers.update({"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"})
        yield s


def files_url(emu: Emulator, bucket: int, tail: str = "") -> str:
    return f"{emu.url}/buckets/{bucket}/files{tail}"


def upload(
    http: requests.Session,
    emu: Emulator,
    bucket: int,
    title: str = "song",
    content: bytes = AUDIO,
    **fields: str,
) -> dict[str, Any]:
    r = http.post(
        files_url(emu, bucket),
        data={"data_type": "audio", "title": title, **fields},
        files={"file": ("song.mp3", content, "audio/mpeg")},
        timeout=5,
    )
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def states(http: requests.Session, emu: Emulator, bucket: int, ids: list[int]) -> list[int]:
    r = http.get(files_url(emu, bucket, "/" + ",".join(map(str, ids))), timeout=5)
    return [f["state"] for f in r.json()["data"]]


def control(emu: Emulator, path: str) -> str:
    return emu.url.removesuffix("/api") + "/_emulator" + path


# ---- upload --------------------------------------------------------------------------------------


def test_upload_multipart_matches_the_vendor_example(http: requests.Session, emu: Emulator, bucket: int) -> None:
    before = emu.stats()["uploads_created"]
    f = upload(http, emu, bucket, "My Song", user_defined='{"artist": "A", "n": 1}', audio_id="cat-42")
    _assert_like(f, VENDOR["upload"]["data"], what="upload")
    assert list(f) == list(VENDOR["upload"]["data"])  # even the key order
    assert f["state"] == 0 and f["bucket_id"] == bucket and f["title"] == "My Song"
    assert f["audio_id"] == "cat-42" and f["user_defined"] == {"artist": "A", "n": 1}
    assert re.fullmatch(r"\d+\.\d{6}", f["duration"]) and float(f["duration"]) == round(len(AUDIO) / 16000, 6)
    assert HEX32.match(f["acr_id"]) and ISO.match(f["created_at"]) and f["created_at"] == f["updated_at"]
    g = upload(http, emu, bucket, "second")
    assert g["id"] > f["id"] and g["acr_id"] != f["acr_id"]
    assert g["audio_id"] == "" and g["user_defined"] == {}
    assert emu.stats()["uploads_created"] == before + 2


def _fingerprint(tmp_path: Path) -> Fingerprint:
    return extract(write_wav(tmp_path / "fp.wav", 4.0, seed=2))


def test_bytes_that_are_not_a_fingerprint_get_422_or_in_their_profile_state_minus_1(
    http: requests.Session, emu: Emulator, bucket: int
) -> None:
    junk = {"data_type": "fingerprint", "title": "not one"}
    r = http.post(files_url(emu, bucket), data=junk, files={"file": b"FP" * 100})
    assert r.status_code == 422 and r.json()["errors"] == {"file": ["The file must be a valid fingerprint."]}, r.text
    assert emu.files(bucket) == []
    with Emulator(tokens={TOKEN}, processing_delay=0.0, profile="fingerprint-unchecked").start(port=0) as loose:
        r = http.post(files_url(loose, bucket), data=junk, files={"file": b"FP" * 100})
        assert r.status_code == 200, r.text
        (f,) = wait_for(lambda: [f for f in loose.files(bucket) if f["state"] != 0], timeout=10)
        assert f["state"] == -1


def test_upload_audio_url_json_and_fingerprint_and_acrid(
    http: requests.Session, emu: Emulator, bucket: int, tmp_path: Path
) -> None:
    r = http.post(
        files_url(emu, bucket),
        json={"data_type": "audio_url", "title": "t", "user_defined": {"artists": "a"}, "url": "https://h/x.mp3"},
    )
    assert r.status_code == 200, r.text
    f = r.json()["data"]
    _assert_like(f, VENDOR["upload"]["data"], what="upload(audio_url)")
    assert (f["duration"], f["user_defined"], f["audio_id"]) == ("30.000000", {"artists": "a"}, "")

    fp = _fingerprint(tmp_path)
    r = http.post(files_url(emu, bucket), data={"data_type": "fingerprint", "title": "fp"}, files={"file": fp.data})
    assert r.status_code == 200 and r.json()["data"]["title"] == "fp"
    assert r.json()["data"]["duration"] == f"{fp.duration_ms / 1000:.6f}"  # read from the fingerprint

    acrid = "0123456789abcdef0123456789abcdef"
    r = http.post(files_url(emu, bucket), json={"data_type": "acrid", "title": "by acrid", "acrid": acrid})
    assert r.status_code == 200 and r.json()["data"]["acr_id"] == acrid


def test_big_upload_is_counted_not_buffered(
    http: requests.Session, emu: Emulator, bucket: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Werkzeug's default keeps a part in memory up to 500 KB and in a temporary file beyond: the
    # emulator must use neither (a 1 GB upload would take 1 GB of /tmp, of memory on a tmpfs).
    def kept(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the emulator kept an uploaded part")

    monkeypatch.setattr("werkzeug.wrappers.request.default_stream_factory", kept)
    monkeypatch.setattr("werkzeug.formparser.default_stream_factory", kept)
    sizes = (4_000_000, 100_000, 0)
    made = [upload(http, emu, bucket, f"big {n}", content=b"\1" * n) for n in sizes]
    assert [f["duration"] for f in made] == ["250.000000", "6.250000", "0.000000"]
    assert emu.received_bytes(bucket) == {f["id"]: n for f, n in zip(made, sizes, strict=True)}


@pytest.mark.parametrize(
    ("fields", "file", "field"),
    [
        ({"title": "t"}, True, "data_type"),
        ({"data_type": "video", "title": "t"}, True, "data_type"),
        ({"data_type": "audio"}, True, "title"),
        ({"data_type": "audio", "title": "   "}, True, "title"),
        ({"data_type": "audio", "title": "x" * 256}, True, "title"),
        ({"data_type": "audio", "title": "t"}, False, "file"),
        ({"data_type": "fingerprint", "title": "t"}, False, "file"),
        ({"data_type": "audio_url", "title": "t"}, False, "url"),
        ({"data_type": "audio_url", "title": "t", "url": "ftp://h/x.mp3"}, False, "url"),
        ({"data_type": "audio_url", "title": "t", "url": "not a url"}, False, "url"),
        ({"data_type": "audio", "title": "t", "user_defined": "[1, 2]"}, True, "user_defined"),
        ({"data_type": "audio", "title": "t", "user_defined": "{not json"}, True, "user_defined"),
        ({"data_type": "acrid", "title": "t"}, False, "acrid"),
    ],
)
def test_upload_422_field_errors(
    http: requests.Session, emu: Emulator, bucket: int, fields: dict[str, str], file: bool, field: str
) -> None:
    before = emu.stats()["uploads_created"]
    files = {"file": ("a.mp3", AUDIO)} if file else None
    r = http.post(files_url(emu, bucket), data=fields, files=files)
    assert r.status_code == 422
    body = r.json()
    assert body["message"] == "The given data was invalid."
    assert field in body["errors"] and all(isinstance(m, str) and m for m in body["errors"][field])
    assert emu.stats()["uploads_created"] == before and emu.files(bucket) == []


def test_upload_422_json_user_defined_must_be_an_object(http: requests.Session, emu: Emulator, bucket: int) -> None:
    r = http.post(
        files_url(emu, bucket),
        json={"data_type": "audio_url", "title": "t", "url": "https://h/x", "user_defined": ["a"]},
    )
    assert r.status_code == 422 and set(r.json()["errors"]) == {"user_defined"}


# ---- processing states ---------------------------------------------------------------------------


def test_states_go_from_0_to_1_or_to_minus_1(http: requests.Session, emu: Emulator, bucket: int) -> None:
    good = upload(http, emu, bucket, "good")
    empty = upload(http, emu, bucket, "empty", content=b"")
    r = http.post(files_url(emu, bucket), json={"data_type": "audio_url", "title": "b", "url": "https://h/broken.mp3"})
    broken = r.json()["data"]
    assert (good["state"], empty["state"], broken["state"]) == (0, 0, 0)
    assert empty["duration"] == "0.000000"
    ids = [good["id"], empty["id"], broken["id"]]
    wait_for(lambda: states(http, emu, bucket, ids) == [1, -1, -1], what="states 1, -1, -1")
    # Finishing processing bumps updated_at, as in the vendor's list example.
    done = http.get(files_url(emu, bucket, f"/{good['id']}")).json()["data"][0]
    assert done["updated_at"] > done["created_at"]


# ---- list ----------------------------------------------------------------------------------------


def test_list_matches_the_vendor_example(http: requests.Session, emu: Emulator, bucket: int) -> None:
    made = [upload(http, emu, bucket, f"t{i}", user_defined='{"k": "v"}') for i in range(3)]
    r = http.get(files_url(emu, bucket))
    assert r.status_code == 200
    body = r.json()
    vendor = VENDOR["list"]
    assert set(body) == set(vendor)
    for item in body["data"]:
        _assert_file_like_list_items(item, vendor["data"], "list item")
        assert isinstance(item["duration"], int)  # a number in lists, a string on upload
    assert [f["id"] for f in body["data"]] == [f["id"] for f in made]
    assert set(body["links"]) == set(vendor["links"])
    assert all(v is None or isinstance(v, str) for v in body["links"].values())
    _assert_like(body["meta"], vendor["meta"], what="meta")
    path = f"{emu.url}/buckets/{bucket}/files"
    assert body["meta"] == {
        "current_page": 1, "from": 1, "last_page": 1, "path": path, "per_page": "20", "to": 3, "total": 3,
    }  # fmt: skip
    assert body["links"] == {"first": f"{path}?page=1", "last": f"{path}?page=1", "prev": None, "next": None}


def test_pagination_over_three_pages(http: requests.Session, emu: Emulator, bucket: int) -> None:
    ids = [upload(http, emu, bucket, f"p{i}")["id"] for i in range(5)]
    path = f"{emu.url}/buckets/{bucket}/files"

    def page(n: int) -> dict[str, Any]:
        r = http.get(path, params={"page": n, "per_page": 2})
        assert r.status_code == 200
        out: dict[str, Any] = r.json()
        return out

    p1, p2, p3, p4 = page(1), page(2), page(3), page(4)
    assert [f["id"] for p in (p1, p2, p3) for f in p["data"]] == ids
    assert p1["links"] == {"first": f"{path}?page=1", "last": f"{path}?page=3", "prev": None, "next": f"{path}?page=2"}
    assert (p2["links"]["prev"], p2["links"]["next"]) == (f"{path}?page=1", f"{path}?page=3")
    assert (p3["links"]["prev"], p3["links"]["next"]) == (f"{path}?page=2", None)
    assert [(p["meta"]["from"], p["meta"]["to"]) for p in (p1, p2, p3)] == [(1, 2), (3, 4), (5, 5)]
    assert {p["meta"]["last_page"] for p in (p1, p2, p3)} == {3} and p1["meta"]["per_page"] == "2"
    assert p4["data"] == [] and (p4["meta"]["from"], p4["meta"]["to"], p4["meta"]["total"]) == (None, None, 5)
    # Laravel's links keep only ?page=N: following one falls back to the default per_page.
    followed = http.get(p1["links"]["next"]).json()
    assert followed["meta"]["per_page"] == "20" and followed["meta"]["current_page"] == 2
    assert http.get(path, params={"per_page": 5000}).json()["meta"]["per_page"] == "1000"
    empty = http.get(f"{emu.url}/buckets/{bucket + 100_000}/files").json()
    assert empty["data"] == [] and empty["meta"]["last_page"] == 1 and empty["meta"]["from"] is None


def test_list_search_sort_order_state(http: requests.Session, emu: Emulator, bucket: int) -> None:
    a = upload(http, emu, bucket, "Alpha One")
    e = upload(http, emu, bucket, "empty alphabet", content=b"")
    emu.processing_delay = 60  # this one stays in processing for the whole test
    p = upload(http, emu, bucket, "Beta TWO")
    wait_for(lambda: states(http, emu, bucket, [a["id"], e["id"], p["id"]]) == [1, -1, 0], what="settled states")

    def ids(**params: Any) -> list[int]:
        r = http.get(files_url(emu, bucket), params=params)
        assert r.status_code == 200, r.text
        return [f["id"] for f in r.json()["data"]]

    assert ids(search="ALPHA") == [a["id"], e["id"]]
    assert ids(search="two") == [p["id"]]
    assert ids(search="nothing") == []
    assert ids(order="desc") == [p["id"], e["id"], a["id"]]
    assert ids(sort="state") == [e["id"], p["id"], a["id"]]
    assert ids(sort="state", order="desc") == [a["id"], p["id"], e["id"]]
    assert ids(state=0) == [p["id"]] and ids(state=1) == [a["id"]] and ids(state=-1) == [e["id"]]
    assert ids(search="alpha", state=1) == [a["id"]]
    for bad in ({"state": 2}, {"state": "x"}, {"sort": "title"}, {"order": "up"}):
        r = http.get(files_url(emu, bucket), params=bad)
        assert r.status_code == 422 and set(r.json()["errors"]) == set(bad), bad


# ---- get, update, delete, move -------------------------------------------------------------------


def test_get_by_ids_and_acr_ids_in_order(http: requests.Session, emu: Emulator, bucket: int) -> None:
    f1, _f2, f3 = (upload(http, emu, bucket, f"g{i}") for i in range(3))
    r = http.get(files_url(emu, bucket, f"/{f3['id']}, {f1['acr_id']} ,999999999,,{f3['id']}"))
    assert r.status_code == 200
    data = r.json()["data"]
    assert [f["id"] for f in data] == [f3["id"], f1["id"]]  # order asked, unknown absent, no duplicate
    for item in data:
        _assert_file_like_list_items(item, VENDOR["get"]["data"], "get item")
    assert http.get(files_url(emu, bucket, "/999999999,nope")).json() == FILE_404
    assert http.get(files_url(emu, bucket, "/999999999")).status_code == 404
    # A file of another bucket is not found through this one.
    assert http.get(files_url(emu, bucket + 1, f"/{f1['id']}")).status_code == 404


def test_update_title_and_user_defined(http: requests.Session, emu: Emulator, bucket: int) -> None:
    f = upload(http, emu, bucket, "old", user_defined='{"a": 1}')
    r = http.put(files_url(emu, bucket, f"/{f['id']}"), json={"title": "update-title", "user_defined": {"x": "y"}})
    assert r.status_code == 200, r.text
    u = r.json()["data"]
    _assert_like(u, VENDOR["update"]["data"], what="update")
    assert (u["title"], u["user_defined"], u["id"]) == ("update-title", {"x": "y"}, f["id"])
    assert u["updated_at"] > f["updated_at"] and u["created_at"] == f["created_at"]
    # The vendor CLI's form: a form body with user_defined as a JSON string, the file named by acr_id.
    r = http.put(files_url(emu, bucket, f"/{f['acr_id']}"), data={"user_defined": '{"z": 2}'})
    assert r.status_code == 200 and r.json()["data"]["user_defined"] == {"z": 2}
    assert r.json()["data"]["title"] == "update-title"
    r = http.put(files_url(emu, bucket, f"/{f['id']}"), json={"title": ""})
    assert r.status_code == 422 and set(r.json()["errors"]) == {"title"}
    r = http.put(files_url(emu, bucket, f"/{f['id']}"), json={"user_defined": "[1]"})
    assert r.status_code == 422 and set(r.json()["errors"]) == {"user_defined"}
    r = http.put(files_url(emu, bucket, f"/{f['id']}"), data={"user_defined": "not json"})
    assert r.status_code == 422
    assert http.put(files_url(emu, bucket, "/999999999"), json={"title": "t"}).json() == FILE_404
    assert http.put(files_url(emu, bucket, f"/{f['id']},{f['id']}"), json={"title": "t"}).status_code == 404
    assert emu.files(bucket)[0]["title"] == "update-title"


def test_delete_partial_with_spaces_and_acr_ids(http: requests.Session, emu: Emulator, bucket: int) -> None:
    f1, f2, f3 = (upload(http, emu, bucket, f"d{i}") for i in range(3))
    r = http.delete(files_url(emu, bucket, f"/ {f1['id']} , {f3['acr_id']},999999999"))
    assert r.status_code == 200
    deleted = r.json()["data"]
    assert [f["id"] for f in deleted] == [f1["id"], f3["id"]]
    for item in deleted:
        _assert_file_like_list_items(item, VENDOR["get"]["data"], "deleted item")
    assert [f["id"] for f in emu.files(bucket)] == [f2["id"]]
    r = http.delete(files_url(emu, bucket, f"/{f1['id']}"))
    assert (r.status_code, r.json()) == (404, FILE_404)
    # The vendor CLI's form: DELETE /files with a JSON list of ids.
    r = http.delete(files_url(emu, bucket), json={"ids": [f2["id"], 999999999]})
    assert r.status_code == 200 and [f["id"] for f in r.json()["data"]] == [f2["id"]]
    assert http.delete(files_url(emu, bucket), json={}).status_code == 422
    assert emu.files(bucket) == []


def test_move_from_any_bucket(http: requests.Session, emu: Emulator, bucket: int) -> None:
    other, target = bucket + 200_000, bucket + 300_000
    a = upload(http, emu, bucket, "a")
    b = upload(http, emu, other, "b")
    r = http.put(files_url(emu, target, f"/{a['id']}, {b['acr_id']},999999999/move"))
    assert r.status_code == 200, r.text
    moved = r.json()["data"]
    assert [(f["id"], f["bucket_id"]) for f in moved] == [(a["id"], target), (b["id"], target)]
    assert moved[0]["updated_at"] > a["updated_at"]
    assert emu.files(bucket) == [] and emu.files(other) == []
    assert [f["id"] for f in http.get(files_url(emu, target)).json()["data"]] == [a["id"], b["id"]]
    assert http.put(files_url(emu, target, "/999999999/move")).json() == FILE_404
    # The vendor CLI's form: POST /buckets/{source}/files/move with the target in the body.
    r = http.post(files_url(emu, target, "/move"), json={"target_bucket_id": bucket, "ids": [a["id"]]})
    assert r.status_code == 200 and r.json()["data"][0]["bucket_id"] == bucket
    assert http.post(files_url(emu, target, "/move"), json={"ids": [a["id"]]}).status_code == 422


def test_known_buckets_only() -> None:
    with Emulator(tokens={TOKEN}, buckets={1, 2}).start() as emu, requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {TOKEN}"
        f = upload(s, emu, 1)
        r = s.get(files_url(emu, 3))
        assert r.status_code == 404 and "Bucket" in r.json()["message"]
        assert s.post(files_url(emu, 3), data={"data_type": "audio", "title": "t"}).status_code == 404
        assert s.put(files_url(emu, 3, f"/{f['id']}/move")).status_code == 404
        assert s.post(files_url(emu, 1, "/move"), json={"target_bucket_id": 3, "ids": [f["id"]]}).status_code == 404
        assert s.put(files_url(emu, 2, f"/{f['id']}/move")).json()["data"][0]["bucket_id"] == 2


# ---- auth, routing, rate limit -------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", f"Bearer  {TOKEN}", f"bearer {TOKEN}", f"Token {TOKEN}", "Bearer wrong"],
)
def test_401_without_a_good_bearer_token(emu: Emulator, bucket: int, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = requests.get(files_url(emu, bucket), headers=headers)
    assert (r.status_code, r.json()) == (401, {"message": "Unauthenticated."})


def test_tokens_replaced_at_runtime(http: requests.Session, emu: Emulator, bucket: int) -> None:
    emu.set_tokens({"rotated"})
    assert http.get(files_url(emu, bucket)).status_code == 401
    r = requests.get(files_url(emu, bucket), headers={"Authorization": "Bearer rotated"})
    assert r.status_code == 200


def test_unknown_routes_and_methods(http: requests.Session, emu: Emulator, bucket: int) -> None:
    for url in (f"{emu.url}/nope", f"{emu.url}/buckets/abc/files", files_url(emu, 0), f"{emu.url}/buckets/-1/files"):
        r = http.get(url)
        assert r.status_code == 404 and r.headers["Content-Type"] == "application/json", url
        assert isinstance(r.json()["message"], str)
    r = http.patch(files_url(emu, bucket))
    assert r.status_code == 405 and "PATCH" in r.json()["message"]
    assert set(r.headers["Allow"].split(", ")) == {"GET", "POST", "DELETE"}
    assert http.post(files_url(emu, bucket, "/1")).status_code == 405


def test_rate_limit_per_token() -> None:
    with Emulator(tokens={"a", "b"}, rate_limit=3).start() as emu:
        url = files_url(emu, 1)
        seen = [requests.get(url, headers={"Authorization": "Bearer a"}) for _ in range(4)]
        assert [r.status_code for r in seen] == [200, 200, 200, 429]
        assert [r.headers["X-RateLimit-Remaining"] for r in seen] == ["2", "1", "0", "0"]
        assert {r.headers["X-RateLimit-Limit"] for r in seen} == {"3"}
        limited = seen[-1]
        assert limited.json() == {"message": "Too Many Attempts."}
        assert int(limited.headers["Retry-After"]) >= 1
        # Another token has a window of its own; a refused token is not counted against anyone.
        assert requests.get(url, headers={"Authorization": "Bearer b"}).status_code == 200
        assert requests.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert emu.stats()["faults"]["rate_limited"] == 1
        # The window slides: once a second has passed, "a" is served again.
        wait_for(
            lambda: requests.get(url, headers={"Authorization": "Bearer a"}).status_code == 200,
            timeout=3,
            what="the rate-limit window to slide",
        )


# ---- faults --------------------------------------------------------------------------------------


def test_error_rate_answers_5xx_before_anything(http: requests.Session, emu: Emulator, bucket: int) -> None:
    before = emu.stats()
    emu.faults.error_rate = 1.0
    replies = [http.post(files_url(emu, bucket), data={"data_type": "audio", "title": "t"}) for _ in range(6)]
    assert {r.status_code for r in replies} <= {500, 502, 503}
    assert all(isinstance(r.json()["message"], str) for r in replies)
    after = emu.stats()
    assert after["faults"]["error"] - before["faults"]["error"] == 6
    assert after["uploads_created"] == before["uploads_created"] and emu.files(bucket) == []
    # Even a bad token meets the outage first: it stands for the load balancer.
    assert requests.get(files_url(emu, bucket)).status_code in {500, 502, 503}


def test_error_rate_draws_are_seeded() -> None:
    def run() -> list[int]:
        with Emulator(tokens={TOKEN}, seed=3).start() as emu:
            emu.set_faults(error_rate=0.5)
            h = {"Authorization": f"Bearer {TOKEN}"}
            return [requests.get(files_url(emu, 1), headers=h).status_code for _ in range(20)]

    first = run()
    assert first == run() and 200 in first and len(set(first)) > 1


def test_created_then_error_stores_the_file(http: requests.Session, emu: Emulator, bucket: int) -> None:
    before = emu.stats()
    emu.faults.created_then_error_rate = 1.0
    r = http.post(files_url(emu, bucket), data={"data_type": "audio", "title": "ambiguous"}, files={"file": AUDIO})
    assert r.status_code == 500
    assert [f["title"] for f in emu.files(bucket)] == ["ambiguous"]
    after = emu.stats()
    assert after["uploads_created"] == before["uploads_created"] + 1
    assert after["faults"]["created_then_error"] == before["faults"]["created_then_error"] + 1
    # Only uploads are affected.
    assert http.get(files_url(emu, bucket)).status_code == 200


def test_burst_429(http: requests.Session, emu: Emulator, bucket: int) -> None:
    before = emu.stats()["faults"]["rate_limited"]
    emu.set_faults(burst_429=2, retry_after=3)
    replies = [http.get(files_url(emu, bucket)) for _ in range(3)]
    assert [r.status_code for r in replies] == [429, 429, 200]
    assert replies[0].headers["Retry-After"] == "3" and replies[0].json() == {"message": "Too Many Attempts."}
    assert replies[0].headers["X-RateLimit-Remaining"] == "0"
    assert emu.faults.burst_429 == 0
    assert emu.stats()["faults"]["rate_limited"] == before + 2


def test_upload_burst_429_answers_uploads_only(http: requests.Session, emu: Emulator, bucket: int) -> None:
    """The knob a test uses when it means one upload's 429: a list request in between is not refused."""
    emu.set_faults(upload_burst_429=1, retry_after=2)
    assert http.get(files_url(emu, bucket)).status_code == 200  # a state poll: untouched, the burst kept
    post = lambda: http.post(  # noqa: E731
        files_url(emu, bucket), data={"data_type": "audio", "title": "t"}, files={"file": ("s.mp3", AUDIO)}
    )
    refused = post()
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "2")
    assert emu.faults.upload_burst_429 == 0 and post().status_code == 200


def test_reset_closes_the_connection(http: requests.Session, emu: Emulator, bucket: int) -> None:
    before = emu.stats()
    emu.faults.reset_rate = 1.0
    with pytest.raises(requests.ConnectionError):
        requests.get(files_url(emu, bucket), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    with pytest.raises(requests.ConnectionError):
        upload(http, emu, bucket, "never")
    after = emu.stats()
    assert after["faults"]["reset"] - before["faults"]["reset"] == 2
    assert after["requests"] - before["requests"] == 2
    emu.faults.reset()
    assert http.get(files_url(emu, bucket)).status_code == 200 and emu.files(bucket) == []


def test_latency_makes_a_short_read_timeout_fire(http: requests.Session, emu: Emulator, bucket: int) -> None:
    before = emu.stats()["faults"]["latency"]
    emu.faults.latency = 1.0  # latency_rate 0: every request
    with pytest.raises(requests.ReadTimeout):
        http.get(files_url(emu, bucket), timeout=(2, 0.2))
    assert emu.stats()["faults"]["latency"] == before + 1
    emu.faults.latency = 0.2
    emu.faults.latency_rate = 1.0
    t0 = time.monotonic()
    assert http.get(files_url(emu, bucket), timeout=5).status_code == 200
    assert time.monotonic() - t0 >= 0.2


def test_upload_delay_slows_uploads_only(http: requests.Session, emu: Emulator, bucket: int) -> None:
    emu.set_faults(upload_delay=0.3)
    t0 = time.monotonic()
    upload(http, emu, bucket)
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    http.get(files_url(emu, bucket))
    assert time.monotonic() - t0 < 0.3


def test_faults_validation_and_reset() -> None:
    f = Faults()
    f.update(error_rate=0.5, burst_429=2, latency=1)
    assert (f.error_rate, f.burst_429, f.latency) == (0.5, 2, 1.0)
    for bad in ({"nope": 1}, {"error_rate": 2}, {"latency": -1}, {"burst_429": 1.5}, {"retry_after": "x"}):
        with pytest.raises((TypeError, ValueError)):
            f.update(**bad)
    assert f.error_rate == 0.5  # a refused update changes nothing
    f.reset()
    assert f == Faults()


# ---- concurrency, counters, control endpoints ----------------------------------------------------


def test_concurrent_uploads_get_distinct_ids(emu: Emulator, bucket: int) -> None:
    before = emu.stats()["uploads_created"]
    ids: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        with requests.Session() as s:
            s.headers["Authorization"] = f"Bearer {TOKEN}"
            for i in range(5):
                f = upload(s, emu, bucket, f"c{n}-{i}")
                with lock:
                    ids.append(f["id"])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(ids) == len(set(ids)) == 60
    assert emu.stats()["uploads_created"] - before == 60
    assert sorted(f["id"] for f in emu.files(bucket)) == sorted(ids)


def test_stats_count_routes_statuses_and_control_endpoints() -> None:
    with Emulator(tokens={TOKEN}, processing_delay=0).start() as emu, requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {TOKEN}"
        f = upload(s, emu, 5)
        s.get(files_url(emu, 5))
        s.get(files_url(emu, 5, f"/{f['id']}"))
        requests.get(files_url(emu, 5))  # no token
        stats = emu.stats()
        assert stats == {
            "requests": 4,
            "by_route": {
                "POST /buckets/{bucket}/files": 1,
                "GET /buckets/{bucket}/files": 2,
                "GET /buckets/{bucket}/files/{ids}": 1,
            },
            "by_status": {"200": 3, "401": 1},
            "faults": {"error": 0, "created_then_error": 0, "rate_limited": 0, "latency": 0, "reset": 0},
            "uploads_created": 1,
            "searches": {},
        }
        # The control endpoints: not counted as API traffic, no token needed.
        assert requests.get(control(emu, "/stats")).json() == stats
        listed = requests.get(control(emu, "/files"), params={"bucket_id": 5}).json()["data"]
        assert listed == emu.files(5) and listed[0]["state"] == 1
        assert requests.get(control(emu, "/files"), params={"bucket_id": 6}).json()["data"] == []
        r = requests.post(control(emu, "/faults"), json={"error_rate": 1, "burst_429": 2})
        assert r.status_code == 200 and (emu.faults.error_rate, emu.faults.burst_429) == (1.0, 2)
        assert requests.post(control(emu, "/faults"), json={"bogus": 1}).status_code == 422
        assert requests.delete(control(emu, "/faults")).json()["data"] == Faults().as_dict()
        r = requests.post(control(emu, "/tokens"), json={"tokens": ["t2"]})
        assert r.status_code == 200 and TOKEN not in r.text and emu.tokens == {"t2"}
        assert requests.post(control(emu, "/tokens"), json={"tokens": "t2"}).status_code == 422
        assert requests.post(control(emu, "/reset")).status_code == 200
        assert emu.files() == [] and emu.stats()["requests"] == 0
        # Ids keep growing after a reset, so a stale id never names a new file.
        s.headers["Authorization"] = "Bearer t2"
        assert upload(s, emu, 5)["id"] > f["id"]
        assert requests.get(control(emu, "/nope")).status_code == 404


def test_reset_and_files_snapshot(emu: Emulator) -> None:
    with Emulator(tokens={TOKEN}, seed=1).start() as own, requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {TOKEN}"
        upload(s, own, 1, "x")
        upload(s, own, 2, "y")
        snap = own.files()
        assert [f["title"] for f in snap] == ["x", "y"] and [f["title"] for f in own.files(2)] == ["y"]
        snap[0]["title"] = "mutated"  # a snapshot is a copy
        assert own.files(1)[0]["title"] == "x"
        own.set_faults(error_rate=1.0)
        own.reset()
        assert own.files() == [] and own.faults == Faults() and own.stats()["uploads_created"] == 0
    assert not own.running


# ---- the command line ----------------------------------------------------------------------------


def test_main_serves_until_interrupted() -> None:
    args = _parser().parse_args(["--port", "0", "--token", "a", "--error-rate", "0.5", "--burst-429", "2"])
    assert (args.port, args.tokens, args.error_rate, args.burst_429) == (0, ["a"], 0.5, 2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest.devtools.emulator", "--port", "0", "--token", "cli-token", "--bucket", "9"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"(http://\S+/api)", line)
        assert match, f"no URL announced: {line!r}"
        r = requests.get(f"{match.group(1)}/buckets/9/files", headers={"Authorization": "Bearer cli-token"}, timeout=5)
        assert r.status_code == 200 and r.json()["meta"]["total"] == 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "cli-token" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
