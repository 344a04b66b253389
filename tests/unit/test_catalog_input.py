"""Catalog rows read as upload jobs: the column rule, and bad rows refused with the field named."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ingest.cli.commands import main
from ingest.jobs.bulk_uploads import Refused, batches
from ingest.jobs.catalog_input import check_catalog, read_catalog
from ingest.jobs.errors import InputError
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


# --- files that would lose rows: refused whole, before any row is acted on ---------------------------------

BROKEN_FILES = {
    "no_header": (
        "A-1,One,https://cdn.example.com/1.mp3,5\nA-2,Two,https://cdn.example.com/2.mp3,5\n",
        "header: the first line 'A-1,One,https://cdn.example.com/1.mp3,5' names none of the columns",
    ),
    "semicolons": ("ref;title;url\nA-1;One;https://cdn.example.com/1.mp3\n", "separated by semicolons"),
    "tabs": ("ref\ttitle\turl\nA-1\tOne\thttps://cdn.example.com/1.mp3\n", "separated by tabs"),
    "unclosed_quote": (
        'ref,title,url\nA-1,"One,https://cdn.example.com/1.mp3\nA-2,Two,https://cdn.example.com/2.mp3\n',
        "file: line 2: a quote opened on this line is never closed",
    ),
    "quote_closed_lines_later": (
        'ref,title,url\nA-1,"One,https://c.example.com/1.mp3\nA-2,Two,https://c.example.com/2.mp3\nA-3",x,y\n',
        "file: line 2: a quoted value runs on to line 4",
    ),
    "text_after_a_closing_quote": ('ref,title,url\nA-1,"One"x,https://c.example.com/1.mp3\n', "file: line 2: "),
    "duplicate_column": (
        "ref,title,url,title\nA-1,One,https://cdn.example.com/1.mp3,Uno\n",
        "header: column 'title' is named twice (columns 2 and 4); keep one",
    ),
    "misspelt_column": (
        "ref,tittle,url\nA-1,One,https://cdn.example.com/1.mp3\n",
        "header: 'tittle' is not a column; did you mean 'title'?",
    ),
    "capitalised_column": ("Ref,Title,URL\nA-1,One,https://cdn.example.com/1.mp3\n", "did you mean 'ref'?"),
    "unnamed_column": ("ref,title,url,\nA-1,One,https://cdn.example.com/1.mp3,x\n", "header: column 4 has no name"),
    "no_url_or_path": ("ref,title,artist\nA-1,One,Someone\n", "header: no url or path column"),
    "empty": ("", "file: is empty"),
    "hidden_character_in_a_column_name": (
        "ref,ti\u200btle,url\nA-1,One,https://cdn.example.com/1.mp3\n",
        "header: column 2 ('ti\\u200btle') contains U+200B (ZERO WIDTH SPACE); remove it",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_a_csv_that_would_lose_rows_is_refused_whole(case: str) -> None:
    text, answer = BROKEN_FILES[case]
    with pytest.raises(InputError) as raised:
        check_catalog(io.StringIO(text), "csv")
    assert answer in str(raised.value), str(raised.value)


@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_import_dry_run_status_and_sync_refuse_it_in_one_line_and_write_nothing(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, answer = BROKEN_FILES[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.csv").write_text(text, newline="")
    for args in (
        ["import", "cat.csv", "--bucket", "1"],
        ["import", "cat.csv", "--bucket", "1", "--dry-run"],
        ["import", "cat.csv", "--bucket", "1", "--status"],
        ["import", "-", "--format", "csv", "--bucket", "1"],
        ["sync", "cat.csv", "--bucket", "1", "--prune", "--apply"],
    ):
        result = CliRunner().invoke(main, args, input=text)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and lines == [f"error: {lines[0][7:]}"] and answer in lines[0], (args, lines)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.csv"], args  # no report left behind


def test_rows_that_keep_to_the_header_are_read_and_the_rest_refused_each_once() -> None:
    text = (
        "ref,title,url,bucket,label\n"
        "A-1,One,https://cdn.example.com/1.mp3,5,L1\n"
        "\n"  # a blank line is not a row
        "A-2,Two, Part 2,https://cdn.example.com/2.mp3,5,L2\n"  # an unquoted comma: one value too many
        '"A-3","Three, quoted",https://cdn.example.com/3.mp3,5\n'  # a trailing value left out: fine
        "A-1,One again,https://cdn.example.com/1.mp3,5,L1\n"  # the same ref again
        ",No ref,https://cdn.example.com/3.mp3,5\n"
        ",No ref again,https://cdn.example.com/3.mp3,5\n"  # the same source without a ref
    )
    assert check_catalog(io.StringIO(text), "csv").rows == 6
    assert check_catalog(io.StringIO(text), "csv").note() == "note: column label become user_defined keys of their rows"
    items = list(read_catalog(io.StringIO(text), "csv", get_settings()))
    assert len(items) == 6
    assert isinstance(items[0], UploadUrlJob) and items[0].user_defined == {"label": "L1"}
    assert isinstance(items[1], Refused) and "has 6 values, the header 5 columns" in items[1].error.errors["row"]
    assert isinstance(items[2], UploadUrlJob) and items[2].title == "Three, quoted"
    assert isinstance(items[3], Refused) and items[3].error.errors == {
        "ref": "already given in row 1; keep one row per ref"
    }
    assert isinstance(items[4], UploadUrlJob)
    assert isinstance(items[5], Refused) and "the same as row 5" in items[5].error.errors["url"]


def test_jsonl_keys_named_twice_or_misspelt_refuse_the_row() -> None:
    text = (
        '{"ref": "J-1", "title": "One", "title": "Uno", "url": "https://c.example.com/1.mp3", "bucket": 1}\n'
        '{"ref": "J-2", "tittle": "Two", "url": "https://c.example.com/2.mp3", "bucket": 1}\n'
        '{"ref": "J-3", "title": "Three", "url": "https://c.example.com/3.mp3", "bucket": 1, "label": "L"}\n'
    )
    first, second, third = read_catalog(io.StringIO(text), "jsonl", get_settings())
    assert isinstance(first, Refused) and first.error.errors == {"row": "names the key 'title' twice; keep one"}
    assert isinstance(second, Refused) and "did you mean 'title'?" in second.error.errors["tittle"]
    assert second.ref == "J-2"
    assert isinstance(third, UploadUrlJob) and third.user_defined == {"label": "L"}


def test_the_send_as_column(media) -> None:
    (media / "cat-s.wav").write_bytes(b"RIFF0000WAVE")
    text = (
        "ref,title,path,url,bucket,send_as\n"
        "S-1,Fp,cat-s.wav,,3,fingerprint\n"
        "S-2,Default,cat-s.wav,,3,\n"  # empty: ACR_INGEST_UPLOAD_AS
        "S-3,Url,,https://x.example.com/a.mp3,3,fingerprint\n"
        "S-4,Typo,cat-s.wav,,3,fingerprints\n"
    )
    items = list(read_catalog(io.StringIO(text), "csv", get_settings()))
    assert isinstance(items[0], UploadFileJob) and items[0].send_as == "fingerprint"
    assert isinstance(items[1], UploadFileJob) and items[1].send_as == "audio"
    assert isinstance(items[2], Refused) and "path rows only" in items[2].error.errors["send_as"]
    assert isinstance(items[3], Refused) and "must be one of audio, fingerprint" in items[3].error.errors["send_as"]
    # With the default set to fingerprint, a row that says nothing is sent as one.
    as_fp = get_settings().model_copy(update={"upload_as": "fingerprint"})
    (default,) = list(read_catalog(io.StringIO("ref,title,path,bucket\nS-5,D,cat-s.wav,3\n"), "csv", as_fp))
    assert isinstance(default, UploadFileJob) and default.send_as == "fingerprint"


def test_a_closed_multi_line_cell_is_legal_csv_and_kept() -> None:
    """A quoted value over several lines (a note) is read as one value; only lines that read as rows of their
    own (a quote left open that took them in) refuse the file. In the title, the row is refused by its field."""
    text = (
        "ref,title,url,bucket,notes\n"
        'M-1,One,https://cdn.example.com/1.mp3,5,"Recorded live\nat the Apollo, 1962"\n'
        'M-2,"Two\nlines",https://cdn.example.com/2.mp3,5,\n'
        "M-3,Three,https://cdn.example.com/3.mp3,5,plain\n"
    )
    assert check_catalog(io.StringIO(text), "csv").rows == 3
    first, second, third = read_catalog(io.StringIO(text), "csv", get_settings())
    assert isinstance(first, UploadUrlJob) and first.user_defined == {"notes": "Recorded live\nat the Apollo, 1962"}
    assert isinstance(second, Refused) and "U+000A" in second.error.errors["title"] and second.ref == "M-2"
    assert isinstance(third, UploadUrlJob) and third.ref == "M-3"
    swallowed = (
        "ref,title,url,bucket,notes\n"
        'M-1,One,https://cdn.example.com/1.mp3,5,"live\n'
        'M-2,Two,https://cdn.example.com/2.mp3,5,studio"\n'
    )
    with pytest.raises(InputError) as raised:
        check_catalog(io.StringIO(swallowed), "csv")
    assert "file: line 2: a quoted value runs on to line 3" in str(raised.value)


def test_a_multi_line_cell_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = 'ref,title,url,bucket,notes\nM-9,Nine,https://cdn.example.com/9.mp3,5,"a\nb"\n'
    (tmp_path / "cat.csv").write_text(text, newline="")
    result = CliRunner().invoke(main, ["import", "cat.csv", "--dry-run"])
    assert result.exit_code == 0 and "error" not in result.output, result.output
