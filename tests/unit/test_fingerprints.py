"""Fingerprint uploads, with the real extraction library on audio the test makes: the wrapper, the job field
and its default, the worker's path (extract, post data_type=fingerprint under the same identity) and bad
audio failing before the API sees it."""

from __future__ import annotations

import os

import pytest

from ingest.devtools.emulator.app import UPLOAD
from ingest.fingerprints import NotDecodable, extract, unavailable_reason
from ingest.fingerprints.extraction import duration_ms
from ingest.jobs.errors import InputError
from ingest.jobs.identity import REF_KEY
from ingest.jobs.inputs import validate_upload_file
from ingest.settings import get_settings
from ingest.store.models import FileStatus, OpStatus
from tests.conftest import MEDIA
from tests.fingerprint_audio import write_wav
from tests.helpers import file_row
from tests.unit.support import run


@pytest.fixture(scope="module")
def wav() -> str:
    write_wav(MEDIA / "fp-5s.wav", 5.0, seed=3)
    return "fp-5s.wav"


@pytest.fixture(scope="module")
def junk() -> str:
    (MEDIA / "fp-junk.wav").write_bytes(os.urandom(50_000))  # named .wav, holds no audio
    return "fp-junk.wav"


def test_the_library_is_installed_for_the_tests() -> None:
    assert unavailable_reason() is None  # the test extra installs pyacrcloud: real extraction below


def test_extract_makes_a_small_database_fingerprint_holding_the_duration(wav: str) -> None:
    fp = extract(MEDIA / wav)
    size = (MEDIA / wav).stat().st_size
    assert 0 < len(fp.data) < size / 100  # 5 s of 44.1 kHz stereo is 882 KB
    assert abs(fp.duration_ms - 5000) < 600, fp.duration_ms
    assert duration_ms(fp.data) == fp.duration_ms
    assert extract(MEDIA / wav).data == fp.data  # the same audio gives the same bytes


def test_bytes_that_are_not_audio_are_not_decodable(junk: str) -> None:
    with pytest.raises(NotDecodable):
        extract(MEDIA / junk)
    assert duration_ms(os.urandom(4096)) is None
    assert duration_ms(b"") is None


def test_send_as_defaults_to_the_setting_and_is_checked() -> None:
    write_wav(MEDIA / "fp-short.wav", 1.0, rate=8000, channels=1)
    base = {"path": "fp-short.wav", "bucket_id": 1, "title": "T"}
    settings = get_settings()
    assert validate_upload_file(base, settings).send_as == "audio"
    as_fp = settings.model_copy(update={"upload_as": "fingerprint"})
    assert validate_upload_file(base, as_fp).send_as == "fingerprint"
    assert validate_upload_file({**base, "send_as": "audio"}, as_fp).send_as == "audio"
    with pytest.raises(InputError) as bad:
        validate_upload_file({**base, "send_as": "fp"}, settings)
    assert bad.value.errors == {"send_as": "must be one of audio, fingerprint (a string), got 'fp'"}
    # A fingerprint file is sent as it is; asking to send it as audio is a mistake.
    fp_file = {**base, "data_type": "fingerprint"}
    assert validate_upload_file(fp_file, settings).send_as == "fingerprint"
    with pytest.raises(InputError) as wrong:
        validate_upload_file({**fp_file, "send_as": "audio"}, settings)
    assert "send_as" in wrong.value.errors
    # send_as is not part of the identity: the generated ref is the same either way.
    assert validate_upload_file(base, as_fp).ref == validate_upload_file(base, settings).ref


def test_an_upload_sent_as_fingerprint_posts_the_fingerprint_under_the_same_identity(
    ctx, emulator, bucket, wav: str
) -> None:
    args = {
        "path": wav,
        "bucket_id": bucket,
        "title": "Glide",
        "ref": "fp-1",
        "user_defined": {"artist": "A"},
        "send_as": "fingerprint",
    }
    out = run("upload_file", args, ctx)

    assert out["status"] == OpStatus.SUCCEEDED, out
    (f,) = emulator.files(bucket)
    row = file_row(bucket, "fp-1")
    expected = extract(MEDIA / wav)
    assert emulator.data_types(bucket) == {f["id"]: "fingerprint"}
    assert emulator.received_bytes(bucket) == {f["id"]: len(expected.data)}
    assert (f["title"], f["audio_id"], f["user_defined"]) == ("Glide", "fp-1", {"artist": "A", REF_KEY: "fp-1"})
    # The emulator read the duration out of the fingerprint (not the byte count's fake one).
    assert f["duration"] == -(-expected.duration_ms // 1000)
    assert (row.data_type, row.send_as) == ("audio", "fingerprint")
    assert (row.fingerprint_bytes, row.duration_ms) == (len(expected.data), expected.duration_ms)
    assert row.remote_id == f["id"] and row.status == FileStatus.PROCESSING


def test_audio_stays_audio_by_default(ctx, emulator, bucket, wav: str) -> None:
    out = run("upload_file", {"path": wav, "bucket_id": bucket, "title": "Glide", "ref": "a-1"}, ctx)
    assert out["status"] == OpStatus.SUCCEEDED
    (f,) = emulator.files(bucket)
    assert emulator.data_types(bucket) == {f["id"]: "audio"}
    assert emulator.received_bytes(bucket) == {f["id"]: (MEDIA / wav).stat().st_size}
    row = file_row(bucket, "a-1")
    assert (row.send_as, row.fingerprint_bytes, row.duration_ms) == ("audio", None, None)


def test_bad_audio_fails_at_once_as_bad_input_and_is_never_posted(ctx, emulator, bucket, junk: str) -> None:
    posts = emulator.stats()["by_route"].get(UPLOAD, 0)
    args = {"path": junk, "bucket_id": bucket, "title": "Junk", "ref": "junk-1", "send_as": "fingerprint"}
    out = run("upload_file", args, ctx)  # no RetryLater: one delivery ends it

    assert out["status"] == OpStatus.FAILED
    reason = "path: not decodable audio: 'fp-junk.wav' is no audio the fingerprint library reads"
    assert out["error"] == f"bad input: {reason}"
    assert emulator.stats()["by_route"].get(UPLOAD, 0) == posts and emulator.files(bucket) == []
    row = file_row(bucket, "junk-1")
    assert row.status == FileStatus.FAILED and row.post_started_at is None and row.remote_id is None


def test_without_a_wheel_for_the_platform_the_message_says_so(monkeypatch) -> None:
    # The one case no machine here can run for real: an arm64 host, where pip finds no pyacrcloud wheel.
    from ingest.fingerprints import extraction

    monkeypatch.setattr(extraction, "_library", lambda: None)
    monkeypatch.setattr(extraction.platform, "machine", lambda: "arm64")
    why = extraction.unavailable_reason()
    assert why is not None and "has no wheel for this platform" in why and "arm64" in why
    assert "ACR_INGEST_UPLOAD_AS=audio" in why
    monkeypatch.setattr(extraction.platform, "machine", lambda: "x86_64")
    assert extraction.unavailable_reason() == (
        "the fingerprint library is not installed: install the extraction library: "
        "pip install 'acr-ingest[fingerprint]', or send audio (ACR_INGEST_UPLOAD_AS=audio)"
    )
