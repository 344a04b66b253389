"""Emulator profiles: how the emulator answers where the vendor page is silent.

Our client and this emulator were written together, so where the page says nothing they made the same
guesses. Each strict profile breaks one guess the real API may break (issue 8); ``lenient`` is what the
emulator always did. A profile is chosen at start (``--profile``) and never changes while serving.

| profile              | what differs from lenient                                                      |
|----------------------|--------------------------------------------------------------------------------|
| lenient              | (audio_id kept, unknown ids skipped in batches, the files listed after delete/move) |
| audio-id-ignored     | the upload's ``audio_id`` field is dropped: files show ``audio_id: ""``        |
| batch-404-any        | a delete/move/get of several ids answers 404 if ANY of them is missing         |
| body-empty           | delete/move answer 200 with an empty body                                      |
| body-204             | delete/move answer 204 No Content                                              |
| body-true            | delete/move answer ``{"data": true}``                                          |
| body-object          | delete/move answer ``{"data": {"affected": n}}`` (an object, not files)        |
| body-count           | delete/move answer the bare number of files affected                           |
| user-defined-string  | PUT refuses ``user_defined`` as a JSON object (422): only a JSON string works  |
| odd-states           | processed files report state 2 (instead of 1) and "Inactive" (instead of -1)   |
| upload-no-ids        | the upload answer has ``id`` and ``acr_id`` null (the file is stored)          |
| fingerprint-unchecked| a data_type=fingerprint upload that is not one is taken (201), then state -1   |
| strict               | all of the above at once where they combine (body-count, odd states excluded)  |
"""

from __future__ import annotations

from dataclasses import dataclass, replace

#: How delete and move answer a success: the files (lenient), or one of the undocumented shapes.
BODY_SHAPES = ("files", "empty", "204", "true", "object", "count")


@dataclass(frozen=True)
class Profile:
    name: str
    audio_id_ignored: bool = False
    batch_404_if_any_missing: bool = False
    batch_body: str = "files"
    user_defined_string_only: bool = False
    odd_states: bool = False
    upload_without_ids: bool = False
    # The page does not say whether bytes that are not a fingerprint are refused at once (lenient: 422, read
    # with the vendor's library when it is installed) or taken and failed while processing (this).
    fingerprint_unchecked: bool = False

    def __post_init__(self) -> None:
        if self.batch_body not in BODY_SHAPES:
            raise ValueError(f"batch_body must be one of {BODY_SHAPES}, not {self.batch_body!r}")

    def state_shown(self, state: int) -> int | str:
        """A file's state as this profile reports it (0 stays 0: processing is never odd)."""
        if not self.odd_states:
            return state
        odd: dict[int, int | str] = {1: 2, -1: "Inactive"}
        return odd.get(state, state)


LENIENT = Profile("lenient")
PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        LENIENT,
        Profile("audio-id-ignored", audio_id_ignored=True),
        Profile("batch-404-any", batch_404_if_any_missing=True),
        Profile("body-empty", batch_body="empty"),
        Profile("body-204", batch_body="204"),
        Profile("body-true", batch_body="true"),
        Profile("body-object", batch_body="object"),
        Profile("body-count", batch_body="count"),
        Profile("user-defined-string", user_defined_string_only=True),
        Profile("odd-states", odd_states=True),
        Profile("upload-no-ids", upload_without_ids=True),
        Profile("fingerprint-unchecked", fingerprint_unchecked=True),
    )
}
PROFILES["strict"] = replace(
    LENIENT,
    name="strict",
    audio_id_ignored=True,
    batch_404_if_any_missing=True,
    batch_body="count",
    user_defined_string_only=True,
    upload_without_ids=True,
    fingerprint_unchecked=True,
)


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown emulator profile {name!r}; choose one of {', '.join(PROFILES)}") from None
