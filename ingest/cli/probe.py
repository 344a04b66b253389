"""``acr-ingest probe``: ask the real API the questions its page leaves open (issue 8, docs/API.md).

Run once with a real token against a scratch bucket. It uploads two tiny files, reads them back,
updates, deletes a list mixing a real and a missing id, moves, lists, waits for processing, deletes
what it created, and saves what it saw as JSON (``ACR_INGEST_PROBE_REPORT``). Each finding names the
emulator profile that behaves the same (ingest/devtools/emulator/profiles.py; the names are shared
by convention only: the probe imports nothing of the emulator).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.api.client import AcrCloudClient
from ingest.api.errors import ApiError, NotFoundError, UnconfirmedUploadError, ValidationError
from ingest.api.schemas import BucketFile
from ingest.cli.demo import write_tone

# An id no bucket of a real account is likely to hold (ids are an auto-increment).
MISSING_ID = 2_000_000_000
Echo = Callable[[str], None]

# name -> (what acr-ingest assumed, the profile that covers the other answer)
ASSUMPTIONS: dict[str, tuple[str, str]] = {
    "upload_answer_has_ids": ("the upload answer names the new file's id and acr_id", "upload-no-ids"),
    "audio_id_kept": ("audio_id sent on upload is kept on the file", "audio-id-ignored"),
    "batch_skips_missing_ids": ("a delete/get of several ids skips the missing ones (no 404)", "batch-404-any"),
    "delete_answer_lists_files": ("a delete answers {data: [files]}", "body-*"),
    "move_answer_lists_files": ("a move answers {data: [files]}", "body-*"),
    "update_accepts_object": ("PUT accepts user_defined as a JSON object", "user-defined-string"),
    "update_accepts_string": ("PUT accepts user_defined as a JSON string", "(none: we send the string)"),
    "states_documented": ("files end in state 1 or -1 (never another value)", "odd-states"),
    "list_search_matches_title": ("list ?search= matches titles", "(adoption needs it)"),
    "list_accepts_keyword": ("list accepts ?keyword= (the vendor CLI's name)", "(informational)"),
    "list_accepts_sort_state": ("list accepts sort=state", "(informational)"),
    "fingerprint_checked": (
        "an upload with data_type=fingerprint that is not one is refused (422)",
        "fingerprint-unchecked",
    ),
}
# What the probe sends as a "fingerprint" that is not one: text no extraction tool writes.
NOT_A_FINGERPRINT = b"acr-ingest probe: these bytes are not an ACRCloud fingerprint\n" * 64


def body_shape(status: int, data: Any) -> str:
    """Which of the profiles' shapes a delete/move answer has: files, empty, 204, true, object, count."""
    if status == 204:
        return "204"
    if data is None:
        return "empty"
    inner = data.get("data") if isinstance(data, dict) else data
    if inner is True:
        return "true"
    if isinstance(inner, int | float) and not isinstance(inner, bool):
        return "count"
    if isinstance(inner, list) or (isinstance(inner, dict) and "acr_id" in inner):
        return "files"
    return "object"


class Probe:
    def __init__(self, client: AcrCloudClient, bucket_id: int, *, move_to: int | None, wait: float, echo: Echo):
        self.client = client
        self.bucket = bucket_id
        self.move_to = move_to or bucket_id
        self.wait = wait
        self.echo = echo
        self.nonce = uuid.uuid4().hex[:10]
        self.found: dict[str, Any] = {}
        self.notes: dict[str, str] = {}
        self.created: dict[int, int] = {}  # file id -> the bucket it is in now

    def _files_path(self, bucket: int) -> str:
        return f"/buckets/{bucket}/files"

    def _upload(self, path: Path, title: str, audio_id: str | None) -> BucketFile:
        try:
            f = self.client.upload_file(
                self.bucket, path, title=title, user_defined={"probe": self.nonce}, audio_id=audio_id
            )
            self.found.setdefault("upload_answer_has_ids", True)
        except UnconfirmedUploadError:
            self.found["upload_answer_has_ids"] = False
            matches = [f for f in self.client.iter_files(self.bucket, search=title) if f.title == title]
            if not matches:
                raise
            f = matches[0]
        self.created[f.id] = self.bucket
        return f

    def run(self) -> None:
        with tempfile.TemporaryDirectory(prefix="acr-ingest-probe-") as tmp:
            a_path, b_path = Path(tmp) / "probe-a.wav", Path(tmp) / "probe-b.wav"
            write_tone(a_path, 440.0, seconds=1.0)
            write_tone(b_path, 660.0, seconds=1.0)
            title_a, title_b = f"acr-ingest probe {self.nonce} a", f"acr-ingest probe {self.nonce} b"
            self.echo(f"uploading two 1 s tones into bucket {self.bucket} ({title_a!r}, {title_b!r})")
            a = self._upload(a_path, title_a, f"probe-{self.nonce}-a")
            b = self._upload(b_path, title_b, None)
        try:
            self._steps(a, b, title_a)
        finally:
            self._clean_up()

    def _steps(self, a: BucketFile, b: BucketFile, title_a: str) -> None:
        self._not_a_fingerprint()
        (back,) = self.client.get_files(self.bucket, [a.id])
        self.found["audio_id_kept"] = back.audio_id == f"probe-{self.nonce}-a"
        self.notes["audio_id_kept"] = f"sent 'probe-{self.nonce}-a', read back {back.audio_id!r}"

        for form in ("object", "string"):
            try:
                self.client.update_file(
                    self.bucket, a.id, user_defined={"probe": self.nonce, "form": form}, user_defined_as=form
                )
                self.found[f"update_accepts_{form}"] = True
            except ValidationError as exc:
                self.found[f"update_accepts_{form}"] = False
                self.notes[f"update_accepts_{form}"] = str(exc)

        self._delete_mixed(b)
        self._move(a)
        self._list(title_a)
        self._states(a)

    def _not_a_fingerprint(self) -> None:
        """Whether the API looks at a fingerprint upload's bytes (acr-ingest checks its own before sending)."""
        title = f"acr-ingest probe {self.nonce} not-a-fingerprint"
        try:
            f = self.client.upload_bytes(
                self.bucket, NOT_A_FINGERPRINT, name="probe.fp", title=title, user_defined={"probe": self.nonce}
            )
        except ValidationError as exc:
            self.found["fingerprint_checked"] = True
            self.notes["fingerprint_checked"] = str(exc)
            return
        except UnconfirmedUploadError:
            matches = [f for f in self.client.iter_files(self.bucket, search=title) if f.title == title]
            if not matches:
                raise
            f = matches[0]
        self.created[f.id] = self.bucket
        self.found["fingerprint_checked"] = False
        self.notes["fingerprint_checked"] = f"taken as file {f.id} (state {f.state})"

    def _delete_mixed(self, b: BucketFile) -> None:
        path = f"{self._files_path(self.bucket)}/{b.id},{MISSING_ID}"
        try:
            status, text, data = self.client.send("delete", "DELETE", path)
        except NotFoundError:
            self.found["batch_skips_missing_ids"] = False
            still = [f.id for f in self.client.iter_files(self.bucket, search=b.title)]
            self.notes["batch_skips_missing_ids"] = f"404 for [{b.id}, missing]; file {b.id} kept: {b.id in still}"
            status, text, data = self.client.send("delete", "DELETE", f"{self._files_path(self.bucket)}/{b.id}")
        else:
            self.found["batch_skips_missing_ids"] = True
        self.created.pop(b.id, None)
        shape = body_shape(status, data)
        self.found["delete_answer_lists_files"] = shape == "files"
        self.found["delete_body"] = shape
        self.notes["delete_answer_lists_files"] = f"HTTP {status}: {text[:200]!r}"

    def _move(self, a: BucketFile) -> None:
        status, text, data = self.client.send("move", "PUT", f"{self._files_path(self.move_to)}/{a.id}/move")
        self.created[a.id] = self.move_to
        shape = body_shape(status, data)
        self.found["move_answer_lists_files"] = shape == "files"
        self.found["move_body"] = shape
        self.notes["move_answer_lists_files"] = f"HTTP {status} (to bucket {self.move_to}): {text[:200]!r}"

    def _list(self, title_a: str) -> None:
        bucket = self.move_to
        found = [f.title for f in self.client.iter_files(bucket, search=title_a)]
        self.found["list_search_matches_title"] = title_a in found
        for key, params in (
            ("list_accepts_keyword", {"keyword": title_a}),
            ("list_accepts_sort_state", {"sort": "state", "order": "desc"}),
        ):
            try:
                self.client.send("list", "GET", self._files_path(bucket), params={**params, "per_page": 5})
                self.found[key] = True
            except ValidationError as exc:
                self.found[key] = False
                self.notes[key] = str(exc)

    def _states(self, a: BucketFile) -> None:
        deadline = time.monotonic() + self.wait
        seen: list[int | str] = []
        while True:
            files = self.client.get_files(self.move_to, [a.id])
            state = files[0].state if files else None
            if state is not None and state not in seen:
                seen.append(state)
            if state not in (0, None) or time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, self.wait / 10 or 0.1))
        if seen and seen[-1] != 0:
            self.found["states_documented"] = all(s in (0, 1, -1) for s in seen)
        self.notes["states_documented"] = f"states seen: {seen} (waited up to {self.wait:g} s)"

    def _clean_up(self) -> None:
        for file_id, bucket in list(self.created.items()):
            with contextlib.suppress(NotFoundError):
                self.client.delete_files(bucket, [file_id])
            self.created.pop(file_id)

    def report(self, base_url: str) -> dict[str, Any]:
        assumptions = {}
        for name, (assumed, other) in ASSUMPTIONS.items():
            value = self.found.get(name)
            assumptions[name] = {
                "assumed": assumed,
                "confirmed": value,  # True / False / None (not observed)
                "other_answer_profile": other,
                "evidence": self.notes.get(name, ""),
            }
        return {
            "probed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "base_url": base_url,
            "bucket_id": self.bucket,
            "matches": matching_profiles(self.found),
            "delete_body": self.found.get("delete_body"),
            "move_body": self.found.get("move_body"),
            "assumptions": assumptions,
            "left_behind": sorted(self.created),
        }


def matching_profiles(found: dict[str, Any]) -> list[str]:
    """The emulator profiles whose behaviour was seen; ["lenient"] when every guess held."""
    out: list[str] = []
    if found.get("upload_answer_has_ids") is False:
        out.append("upload-no-ids")
    if found.get("audio_id_kept") is False:
        out.append("audio-id-ignored")
    if found.get("batch_skips_missing_ids") is False:
        out.append("batch-404-any")
    shapes = {str(found[k]) for k in ("delete_body", "move_body") if found.get(k)} - {"files"}
    out.extend(f"body-{shape}" for shape in sorted(shapes))
    if found.get("update_accepts_object") is False and found.get("update_accepts_string"):
        out.append("user-defined-string")
    if found.get("states_documented") is False:
        out.append("odd-states")
    if found.get("fingerprint_checked") is False:
        out.append("fingerprint-unchecked")
    return out or ["lenient"]


def run_probe(
    client: AcrCloudClient, bucket_id: int, *, move_to: int | None, wait: float, echo: Echo
) -> dict[str, Any]:
    probe = Probe(client, bucket_id, move_to=move_to, wait=wait, echo=echo)
    try:
        probe.run()
    except ApiError as exc:
        probe.notes["aborted"] = str(exc)
        echo(f"probe stopped early: {exc}")
    report = probe.report(client.base_url)
    if "aborted" in probe.notes:
        report["aborted"] = probe.notes["aborted"]
    return report


def save(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load(path: Path) -> dict[str, Any] | None:
    """The saved report, or None when there is none; a report that cannot be read raises ValueError."""
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"the probe report {path} cannot be read ({exc}): run `acr-ingest probe` again") from None
    if not isinstance(report, dict) or not isinstance(report.get("assumptions"), dict):
        raise ValueError(f"the probe report {path} is not one `acr-ingest probe` wrote: run it again")
    return report


def confirmations(report: dict[str, Any]) -> dict[str, bool | None]:
    """Each API assumption: True confirmed, False refuted (the code handles the other answer), None not seen."""
    return {name: a.get("confirmed") for name, a in report["assumptions"].items() if isinstance(a, dict)}


def summary(report: dict[str, Any]) -> list[str]:
    marks = {True: "confirmed", False: "REFUTED", None: "not observed"}
    lines = [f"probe of {report['base_url']} bucket {report['bucket_id']} at {report['probed_at']}"]
    lines.append(f"matches emulator profile(s): {', '.join(report['matches'])}")
    for name, a in report["assumptions"].items():
        lines.append(
            f"  {marks[a['confirmed']]:<12} {name}: {a['assumed']}" + (f" — {a['evidence']}" if a["evidence"] else "")
        )
    if report.get("left_behind"):
        lines.append(f"  files NOT cleaned up (delete them by hand): {report['left_behind']}")
    return lines
