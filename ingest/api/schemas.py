"""Pydantic models of the ACRCloud Console API v2 bucket-file objects.

The vendor's own examples disagree with themselves (``duration`` is "78.524082" on upload and 79 in
lists, ``per_page`` is a string), so the models coerce rather than reject: one odd field must not make
a whole page of files unreadable.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class FileState(IntEnum):
    PROCESSING = 0
    READY = 1
    ERROR = -1


class BucketFile(BaseModel):
    # Extra keys (fp_id, and whatever the vendor adds later) are kept, not rejected.
    model_config = ConfigDict(extra="allow")

    id: int
    acr_id: str
    bucket_id: int
    # Not FileState: an unknown state (2, "Inactive" as the vendor CLI prints) must not fail parsing.
    # Numeric strings become ints; any other string is kept as the API sent it.
    state: int | str
    title: str = ""
    audio_id: str | None = None
    duration: float | None = None
    user_defined: dict[str, Any] = Field(default_factory=dict)
    uid: int | None = None
    created_at: str | None = None
    updated_at: str | None = None

    @field_validator("state", mode="before")
    @classmethod
    def _state(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v.strip())
        return v

    @field_validator("title", mode="before")
    @classmethod
    def _title(cls, v: Any) -> Any:
        return "" if v is None else v

    @field_validator("audio_id", mode="before")
    @classmethod
    def _audio_id(cls, v: Any) -> Any:
        # Echoed back as given; a numeric id must not fail a strict str field.
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        # "78.524082" on upload, 79 in lists, null/"" while processing.
        if isinstance(v, str):
            v = v.strip()
            return float(v) if v else None
        return v

    @field_validator("user_defined", mode="before")
    @classmethod
    def _user_defined(cls, v: Any) -> Any:
        if v is None:
            return {}
        if isinstance(v, str | bytes):
            text = v.strip()
            if not text:
                return {}
            try:
                v = json.loads(text)
            except ValueError:
                return {"_raw": v if isinstance(v, str) else v.decode("utf-8", "replace")}
        # PHP encodes an empty array as [] (Laravel returns user_defined: [] for "nothing").
        if isinstance(v, list) and not v:
            return {}
        if not isinstance(v, dict):
            # Keep whatever the API stored rather than fail the whole response over it.
            return {"_raw": v}
        return v

    @property
    def file_state(self) -> FileState | None:
        """The state if it is one of the documented three, else None (see ``is_known_state``)."""
        if isinstance(self.state, str):
            return None
        try:
            return FileState(self.state)
        except ValueError:
            return None

    @property
    def is_known_state(self) -> bool:
        return self.file_state is not None

    @property
    def is_ready(self) -> bool:
        return self.state == FileState.READY

    @property
    def is_processing(self) -> bool:
        return self.state == FileState.PROCESSING

    @property
    def is_error(self) -> bool:
        return self.state == FileState.ERROR


class Page(BaseModel):
    """One page of the list call, flattened from Laravel's ``{data, links, meta}`` envelope."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    files: list[BucketFile] = Field(default_factory=list)
    current_page: int = 1
    last_page: int = 1
    per_page: int = 0  # "20" in the vendor's example: coerced
    total: int = 0
    from_: int | None = Field(default=None, alias="from")
    to: int | None = None
    path: str | None = None
    first_url: str | None = None
    last_url: str | None = None
    prev_url: str | None = None
    next_url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, v: Any) -> Any:
        # Accept the raw response body ({data, links, meta}) as well as the flat field names.
        if not isinstance(v, dict) or "files" in v:
            return v
        if "data" not in v:
            return v
        data = v.get("data")
        if not isinstance(data, list):
            raise ValueError("'data' must be a list of files")
        raw_meta, raw_links = v.get("meta"), v.get("links")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        links: dict[str, Any] = raw_links if isinstance(raw_links, dict) else {}
        # Laravel's non-resource paginator puts the meta keys at the top level instead.
        flat: dict[str, Any] = {k: val for k, val in v.items() if k not in ("data", "meta", "links")}
        flat.update(meta)
        flat["files"] = data
        # An unpaginated answer (no meta): it is one page holding everything.
        flat.setdefault("total", len(data))
        flat.setdefault("per_page", len(data))
        for key in ("first", "last", "prev", "next"):
            if key in links:
                flat[f"{key}_url"] = links[key]
            elif f"{key}_page_url" in flat:
                flat[f"{key}_url"] = flat[f"{key}_page_url"]
        for key in ("current_page", "last_page", "per_page", "total", "from", "to"):
            if flat.get(key) is None:
                flat.pop(key, None)
        return flat

    @property
    def has_more(self) -> bool:
        return self.current_page < self.last_page
