"""Catalog rows read as upload jobs: the column rule, and bad rows refused with the field named."""

from __future__ import annotations

import io
import json

from ingest.jobs.bulk_uploads import Refused, batches
from ingest.jobs.catalog_input import read_catalog
from ingest.jobs.inputs import UploadFileJob, UploadUrlJob
from ingest.settings import get_settings

CSV = (
    "ref,title,url,bucket,user_defined,artist\n"
    'A-1,One,https://cdn.example.com/1.mp3,5,"{""label"": ""L"", ""artist"": ""old""}",New Artist\n'
    "A-2,,https://cdn.example.com/2.mp3,5,,\n"
    "A-3,Three,ftp://cdn.example.com/3.mp3,,,\n"
)


def test_csv_rows_map_columns_and_refuse_bad_rows_with_the_field() -> None:
    items = list(read_catalog(io.StringIO(CSV), "csv", get_settings(), default_bucket=9))
    first, second, third = items
    assert isinstance(first, UploadUrlJob)
    # An extra column is a user_defined key and wins over the same key of the JSON column.
    assert first.user_defined == {"label": "L", "artist": "New Artist"} and first.bucket_id == 5
    assert isinstance(second, Refused) and "title" in second.error.errors and second.ref == "A-2"
    assert isinstance(third, Refused) and "url" in third.error.errors and third.bucket_id == 9


def test_jsonl_rows_path_and_bad_lines(media) -> None:
    (media / "cat-a.wav").write_bytes(b"RIFF0000WAVE")
    text = (
        '{"ref": "P-1", "title": "Path", "path": "cat-a.wav", "bucket": 3, "data_type": "fingerprint"}\n'
        "\n"
        "not json\n"
        '{"ref": "P-2", "title": "Both", "path": "cat-a.wav", "url": "https://x.example.com/a.mp3", "bucket": 3}\n'
        '{"ref": "P-3", "title": "Neither", "bucket": 3}\n'
    )
    items = list(read_catalog(io.StringIO(text), "jsonl", get_settings()))
    assert len(items) == 4  # the blank line is not a row
    assert isinstance(items[0], UploadFileJob) and items[0].data_type == "fingerprint"
    assert isinstance(items[1], Refused) and "row" in items[1].error.errors
    assert isinstance(items[2], Refused) and "not both" in items[2].error.errors["url"]
    assert isinstance(items[3], Refused) and "required" in items[3].error.errors["url"]


def test_a_ref_seen_again_closes_the_batch() -> None:
    rows = [
        UploadUrlJob(url=f"https://c.example.com/{r}.mp3", bucket_id=1, title="t", user_defined={}, ref=r)
        for r in ("a", "b", "a", "c")
    ]
    assert [[i for i, _ in b] for b in batches(rows, 10)] == [[1, 2], [3, 4]]
    assert [[i for i, _ in b] for b in batches(rows, 3)] == [[1, 2], [3, 4]]


def test_a_url_with_any_unicode_space_is_refused_as_before() -> None:
    """The URL's space check is a regex now (a loop over the characters cost 5 % of an import): it refuses
    exactly the characters str.isspace does, over every code point."""
    import sys

    from ingest.jobs.inputs import _SPACE_RE

    assert [c for c in range(sys.maxunicode + 1) if chr(c).isspace() != bool(_SPACE_RE.search(chr(c)))] == []
    for space in (" ", "\u00a0", "\u2003", "\u3000", "\x1c"):
        row = {"ref": "R", "title": "T", "url": f"https://cdn.example.com/a{space}b.mp3", "bucket": 1}
        rows = io.StringIO(json.dumps(row) + "\n")
        (item,) = read_catalog(rows, "jsonl", get_settings())
        assert isinstance(item, Refused) and "no spaces" in item.error.errors["url"], space
