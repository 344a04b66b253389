"""File leases: one holder at a time, kept alive while the holder works, free once it stops."""

from __future__ import annotations

import time

from ingest.store.db import session_scope
from ingest.store.leases import claim_file, kept_alive, release_file
from ingest.store.models import TrackFile
from tests.helpers import wait_for


def _file(bucket: int) -> int:
    with session_scope() as s:
        row = TrackFile(ref="lease", bucket_id=bucket, data_type="audio_url", title="t", source="https://h/x")
        s.add(row)
        s.commit()
        assert row.id is not None
        return row.id


def test_a_lease_kept_alive_outlasts_its_term_and_is_free_once_released(bucket: int) -> None:
    file_id = _file(bucket)
    term = 0.6
    with session_scope() as s:
        assert claim_file(s, file_id, "elsewhere:1:a", term)[0]
        started = time.monotonic()
        with kept_alive(file_id, "elsewhere:1:a", term):
            # Well past the term, the renewals keep a second owner out.
            while time.monotonic() - started < 3 * term:
                taken, remaining = claim_file(s, file_id, "elsewhere:2:b", term)
                assert not taken and remaining > 0
                time.sleep(0.1)  # sampling the lease, not waiting on a result
        release_file(s, file_id, "elsewhere:1:a")
        assert claim_file(s, file_id, "elsewhere:2:b", term)[0]


def test_an_unrenewed_lease_expires(bucket: int) -> None:
    file_id = _file(bucket)
    with session_scope() as s:
        assert claim_file(s, file_id, "elsewhere:1:a", 0.3)[0]
        assert not claim_file(s, file_id, "elsewhere:2:b", 0.3)[0]
        wait_for(lambda: claim_file(s, file_id, "elsewhere:2:b", 0.3)[0], timeout=5, what="expiry")
