"""Every field of every job, given a value of the wrong type, is refused naming the field and what it takes
(``path: must be a string (a file path...), got bytes``), never read as missing; and text fields refuse
characters a reader cannot see (control, format, bidi) naming the code point."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.jobs.errors import InputError
from ingest.jobs.inputs import (
    DELETE_ARGS,
    MOVE_ARGS,
    UPDATE_META_ARGS,
    UPLOAD_FILE_ARGS,
    UPLOAD_URL_ARGS,
    VALIDATORS,
)
from ingest.settings import get_settings
from tests.conftest import MEDIA

WRONG: list[Any] = [b"song.wav", 1.5, True, {"a": 1}, [[1]], object(), (1,), {1, 2}]
FIELDS = {
    "upload_url": ({"url": "https://h/a.mp3", "title": "t", "bucket_id": 1}, UPLOAD_URL_ARGS),
    "upload_file": ({"path": "types.wav", "title": "t", "bucket_id": 1}, UPLOAD_FILE_ARGS),
    "update_meta": ({"bucket_id": 1, "title": "t"}, UPDATE_META_ARGS),
    "delete_batch": ({"bucket_id": 1}, DELETE_ARGS),
    "move_batch": ({"bucket_id": 1, "target_bucket_id": 2}, MOVE_ARGS),
}
# Right for these fields (a list of entries, an object): their entries are checked below.
TAKES_IT = {("user_defined", dict), ("refs", list), ("ids", list), ("acr_ids", list)}
TAKES_IT |= {(name, tuple) for name in ("refs", "ids", "acr_ids")}


def _cases() -> list[tuple[str, str, Any]]:
    return [
        (kind, name, value)
        for kind, (_, names) in FIELDS.items()
        for name in sorted(names)
        for value in WRONG
        if (name, type(value)) not in TAKES_IT
    ]


@pytest.mark.parametrize(("kind", "name", "value"), _cases(), ids=lambda v: type(v).__name__ if v else str(v))
def test_a_value_of_the_wrong_type_names_the_field_and_its_type(kind: str, name: str, value: Any) -> None:
    (MEDIA / "types.wav").write_bytes(b"RIFF" + b"\0" * 100)
    base, _ = FIELDS[kind]
    with pytest.raises(InputError) as err:
        VALIDATORS[kind]({**base, name: value}, get_settings())
    errors = err.value.errors
    assert name in errors, errors
    assert f"got {type(value).__name__}" in errors[name] and "must be" in errors[name], errors[name]
    assert "required" not in errors[name]


@pytest.mark.parametrize("name", ["refs", "ids", "acr_ids"])
@pytest.mark.parametrize("value", [b"x", 1.5, True, {"a": 1}, [1], None])
def test_an_entry_of_the_wrong_type_names_its_index_and_type(name: str, value: Any) -> None:
    with pytest.raises(InputError) as err:
        VALIDATORS["delete_batch"]({"bucket_id": 1, name: ["5", value]}, get_settings())
    got = "got null" if value is None else f"got {type(value).__name__}"
    assert got in err.value.errors[f"{name}[1]"], err.value.errors


HIDDEN = {
    "\u202e": "U+202E (RIGHT-TO-LEFT OVERRIDE)",
    "\u200b": "U+200B (ZERO WIDTH SPACE)",
    "\u2066": "U+2066 (LEFT-TO-RIGHT ISOLATE)",
    "\ufeff": "U+FEFF (ZERO WIDTH NO-BREAK SPACE)",
    "\x85": "U+0085 (a control character)",
    "\x1b": "U+001B (ESCAPE)",
    "\u2028": "U+2028 (LINE SEPARATOR)",
    "\u00ad": "U+00AD (SOFT HYPHEN)",
}


@pytest.mark.parametrize("ch", sorted(HIDDEN))
def test_hidden_characters_are_refused_in_every_text_field_naming_the_code_point(ch: str) -> None:
    settings = get_settings()
    url = {"url": "https://h/a.mp3", "title": "t", "bucket_id": 1}
    for kind, args, field in (
        ("upload_url", {**url, "ref": f"cat{ch}1"}, "ref"),
        ("upload_url", {**url, "title": f"So{ch}ng"}, "title"),
        ("upload_url", {**url, "url": f"https://h/a{ch}.mp3"}, "url"),
        ("upload_url", {**url, "user_defined": {f"k{ch}": "v"}}, "user_defined"),
        ("upload_file", {"path": f"song{ch}.wav", "title": "t", "bucket_id": 1}, "path"),
        ("update_meta", {"bucket_id": 1, "ref": "x", "title": f"Song{ch}!"}, "title"),
        ("delete_batch", {"bucket_id": 1, "refs": ["ok", f"a{ch}b"]}, "refs[1]"),
    ):
        with pytest.raises(InputError) as err:
            VALIDATORS[kind](args, settings)
        # A URL's spaces (U+0085 and U+2028 are str.isspace) are answered first: "no spaces".
        expect = "no spaces" if field == "url" and ch.isspace() else HIDDEN[ch]
        assert expect in err.value.errors[field], (kind, field, err.value.errors)


def test_the_brief_s_examples_in_one_line() -> None:
    settings = get_settings()
    with pytest.raises(InputError) as err:
        VALIDATORS["upload_url"]({"url": "https://h/a.mp3", "title": "t", "bucket_id": 1, "ref": "a\u202eb"}, settings)
    assert err.value.errors == {
        "ref": "contains U+202E (RIGHT-TO-LEFT OVERRIDE); remove it (no control or invisible format characters)"
    }
    for blank in ("\u200b\u200b\u200b", "\u3164", " \u2800 ", "\u200d"):
        with pytest.raises(InputError) as err:
            VALIDATORS["upload_url"]({"url": "https://h/a.mp3", "title": blank, "bucket_id": 1}, settings)
        assert set(err.value.errors) == {"title"}, blank


@pytest.mark.parametrize(
    "title",
    [
        "Family \U0001f468\u200d\U0001f469\u200d\U0001f467",  # an emoji ZWJ sequence
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian with a ZWNJ
        "Flag \U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",  # a subdivision flag's tags
        "Caf\u00e9\u00a0Noir",  # a no-break space is text
        "\u05e9\u05dc\u05d5\u05dd world",  # right-to-left text itself (no override)
    ],
)
def test_joiners_inside_a_title_and_rtl_text_are_accepted(title: str) -> None:
    job = VALIDATORS["upload_url"]({"url": "https://h/a.mp3", "title": title, "bucket_id": 1}, get_settings())
    assert job.title == title  # type: ignore[attr-defined]
