"""Every row of docs/INPUT.md through the three entry points: Python API, CLI, a message sent by name."""

from __future__ import annotations

import functools
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from ingest.cli.commands import main
from ingest.jobs.errors import InputError
from ingest.jobs.inputs import validate_delete_batch, validate_upload_url
from ingest.settings import get_settings
from ingest.store.db import session_scope
from ingest.store.models import Operation
from tests.conftest import MEDIA, WORKDIR
from tests.helpers import idle_producer, wait_for

DOC = Path(__file__).resolve().parents[1] / "docs" / "INPUT.md"
ROW = re.compile(r"^\| (\w+) \| `(.+)` \| ([\w\[\]]+) \| (.+) \|$")
PLACEHOLDERS: dict[str, Any] = {
    "<300 x>": "x" * 300,
    "<20000 bytes>": json.dumps({"blob": "y" * 20_000}),
    "<10001 refs>": [f"r{i}" for i in range(10_001)],
    "<5000 digits>": "9" * 5000,
    "<nested 100>": functools.reduce(lambda inner, _: {"a": inner}, range(100), {}),
    "<8000 nested as text>": '{"a": ' + "[" * 8000 + "]" * 8000 + "}",
}


def _rows() -> list[tuple[str, dict[str, Any], str, str]]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if m := ROW.match(line):
            kind, args_text, field, expect = m.groups()
            args = {k: PLACEHOLDERS.get(v, v) if isinstance(v, str) else v for k, v in json.loads(args_text).items()}
            rows.append((kind, args, field, expect))
    return rows


ROWS = _rows()


@pytest.fixture(scope="module", autouse=True)
def _media_files() -> None:
    (MEDIA / "song.wav").write_bytes(b"RIFF" + b"\0" * 100)
    (MEDIA / "empty.wav").write_bytes(b"")
    (WORKDIR / "outside.wav").write_bytes(b"RIFF" + b"\0" * 100)
    link = MEDIA / "escape.wav"
    if not link.is_symlink():
        link.symlink_to(WORKDIR / "outside.wav")
    for name, to in (("loop.wav", "loop-back.wav"), ("loop-back.wav", "loop.wav")):  # a symlink loop
        if not (MEDIA / name).is_symlink():
            (MEDIA / name).symlink_to(MEDIA / to)


def test_the_table_is_read() -> None:
    assert len(ROWS) >= 30
    assert {k for k, *_ in ROWS} == {"upload_url", "upload_file", "update_meta", "delete_batch", "move_batch"}


def _python_call(producer: Any, kind: str, args: dict[str, Any]) -> Any:
    method = {
        "upload_url": producer.upload_url,
        "upload_file": producer.upload_file,
        "update_meta": producer.update_meta,
        "delete_batch": producer.delete,
        "move_batch": producer.move,
    }
    try:
        return method[kind](**args)
    except TypeError as exc:  # an unknown keyword: Python itself names the argument
        name = re.search(r"keyword argument '(\w+)'", str(exc))
        raise InputError({name.group(1) if name else "?": f"unknown argument ({exc})"}) from None


@pytest.mark.parametrize(
    ("kind", "args", "field", "expect"), ROWS, ids=[f"{r[0]}-{r[2]}-{i}" for i, r in enumerate(ROWS)]
)
def test_python_api_names_the_field(producer, kind, args, field, expect) -> None:
    with pytest.raises(InputError) as err:
        _python_call(producer, kind, args)
    assert field in err.value.errors, err.value.errors
    assert expect in err.value.errors[field]


CLI_ARGS = {
    "url": None,
    "path": None,
    "title": "--title",
    "bucket_id": "--bucket",
    "user_defined": "--user-defined",
    "ref": "--ref",
    "data_type": "--data-type",
    "send_as": "--as",
    "file_id": "--id",
    "acr_id": "--acr-id",
    "target_bucket_id": "--to",
    "refs": "--ref",
    "ids": "--id",
    "acr_ids": "--acr-id",
}
CLI_NAMES = {
    "upload_url": "upload-url",
    "upload_file": "upload-file",
    "update_meta": "update-meta",
    "delete_batch": "delete",
    "move_batch": "move",
}


TEXT_KEYS = {"url", "path", "title", "ref", "acr_id", "data_type"}
LIST_KEYS = {"refs", "ids", "acr_ids"}


def _not_text_for_click(key: str, value: Any) -> bool:
    if key in TEXT_KEYS:
        return not isinstance(value, str)
    if key in LIST_KEYS:
        entries = value if isinstance(value, list) else [value] if isinstance(value, str) else [None]
        return any(not isinstance(v, str | int) or isinstance(v, bool) for v in entries)
    return False


def _argv(kind: str, args: dict[str, Any]) -> list[str] | None:
    argv = [CLI_NAMES[kind]]
    if kind in ("upload_url", "upload_file"):
        positional = args.get("url" if kind == "upload_url" else "path")
        if not isinstance(positional, str):
            return None  # click itself answers a missing argument (tested below); it takes only text
        argv.append(str(positional))
        if "title" not in args:
            return None
    for key, value in args.items():
        flag = CLI_ARGS.get(key, f"--{key}")
        if flag is None:
            continue
        if (
            key not in CLI_ARGS
            or isinstance(value, float)
            or (key in ("data_type", "send_as") and value not in ("audio", "fingerprint"))
        ):
            return None  # click refuses these before our code runs (unknown option, choice, type)
        if _not_text_for_click(key, value):
            return None  # a command line is text: a list, null or number where text goes cannot be typed
        values = value if isinstance(value, list) else [value]
        if not values and key in ("refs", "ids", "acr_ids"):
            continue
        for v in values:
            argv += [flag, json.dumps(v) if isinstance(v, dict) else str(v)]
    return argv


@pytest.mark.parametrize(
    ("kind", "args", "field", "expect"), ROWS, ids=[f"{r[0]}-{r[2]}-{i}" for i, r in enumerate(ROWS)]
)
def test_cli_exits_2_naming_the_field(kind, args, field, expect) -> None:
    argv = _argv(kind, args)
    runner = CliRunner()
    if argv is None:  # click's own answer: still non-zero, naming the option or argument
        result = runner.invoke(main, [CLI_NAMES[kind]])
        assert result.exit_code == 2
        return
    result = runner.invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert f"error: {field}: " in result.output and expect in result.output


@pytest.mark.usefixtures("worker")
def test_worker_checks_messages_sent_by_name_and_never_retries(celery_app) -> None:
    """The same rows sent as raw messages (as another system would): failed with the reason, 0 attempts."""
    sent = []
    for kind, args, field, expect in ROWS:
        task_id = str(uuid.uuid4())
        celery_app.send_task(f"ingest.{kind}", kwargs=args, task_id=task_id)
        sent.append((task_id, field, expect))
    for task_id, field, expect in sent:

        def done(task_id: str = task_id) -> Operation | None:
            with session_scope() as s:
                op = s.exec(select(Operation).where(Operation.task_id == task_id)).first()
                return op if op is not None and op.status == "failed" else None

        op = wait_for(done, timeout=30, what=f"{field} rejected")
        assert op.error.startswith("bad input: ") and f"{field}: " in op.error and expect in op.error
        assert op.attempts == 0


def test_cli_missing_positional_names_it() -> None:
    result = CliRunner().invoke(main, ["upload-url", "--title", "t", "--bucket", "1"])
    assert result.exit_code == 2 and "URL" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_is_refused(producer) -> None:
    path = MEDIA / "locked.wav"
    path.write_bytes(b"RIFF")
    path.chmod(0)
    with pytest.raises(InputError, match="not readable"):
        producer.upload_file("locked.wav", title="t", bucket_id=1)


# --- odd input that must be accepted, or refused cleanly ----------------------------------------------


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    title=st.text(min_size=1, max_size=300),
    user_defined=st.dictionaries(
        st.text(max_size=20), st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=2000)), max_size=20
    ),
)
def test_any_title_and_user_defined_is_accepted_or_refused_by_field(title: str, user_defined: dict) -> None:
    args = {"url": "https://h/a.mp3", "title": title, "bucket_id": 1, "user_defined": user_defined}
    try:
        job = validate_upload_url(args, get_settings())
    except InputError as exc:
        assert set(exc.errors) <= {"title", "user_defined"} and exc.errors
        return
    assert job.title == title.strip() and job.user_defined == user_defined and job.ref.startswith("auto-")


def test_unicode_title_is_accepted() -> None:
    job = validate_upload_url(
        {"url": "https://h/a.mp3", "title": "Für Elise — 夜曲 🎹", "bucket_id": "7"}, get_settings()
    )
    assert (job.title, job.bucket_id) == ("Für Elise — 夜曲 🎹", 7)


@given(st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=50))
def test_ids_with_spaces_and_duplicates_are_trimmed_and_sent_once(ids: list[int]) -> None:
    messy = [f"  {i} " for i in ids] + [str(i) for i in ids]
    job = validate_delete_batch({"bucket_id": 1, "ids": messy}, get_settings())
    assert job.targets.ids == list(dict.fromkeys(ids))


def test_the_same_ref_for_another_source_is_refused(producer, bucket) -> None:
    idle = idle_producer()
    idle.upload_url("https://h/one.mp3", title="t", bucket_id=bucket, ref="dup")
    with pytest.raises(InputError) as err:
        idle.upload_url("https://h/two.mp3", title="t", bucket_id=bucket, ref="dup")
    assert "already used" in err.value.errors["ref"]


def test_user_defined_nested_50k_deep_is_a_field_error_at_the_python_api(producer) -> None:
    deep: dict[str, Any] = {}
    for _ in range(50_000):
        deep = {"a": deep}
    with pytest.raises(InputError) as err:
        producer.upload_url("https://h/a.mp3", title="t", bucket_id=1, user_defined=deep)
    assert "nested too deeply" in err.value.errors["user_defined"]
