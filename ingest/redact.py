"""Credentials out of text that is shown: a URL's password (``scheme://user:password@host``) becomes ``***``.

Imports nothing of ours, so every layer may use it (settings printout, health, input errors)."""

from __future__ import annotations

import re

# scheme://[user]:password@ — the password is whatever stands between the first ':' of the userinfo and '@'.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@/\s]+)@")


def mask_url_credentials(text: str) -> str:
    """``redis://:s3cret@host/0`` -> ``redis://:***@host/0``; text without such a URL is returned unchanged."""
    return _URL_PASSWORD.sub(r"\g<head>:***@", text)


def has_url_credentials(url: str) -> bool:
    return bool(_URL_PASSWORD.search(url))
