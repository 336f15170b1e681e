"""Credentials never leave the process in text: one helper for every URL the project prints,
logs, returns to a client or exports.

`redact_url` replaces the password of any `scheme://user:password@host` it finds in a text
(a bare URL or a message that quotes one) and the value of secret-looking query parameters
(`password=`, `token=`, ...), keeping everything else readable for debugging.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "redact_url"]

REDACTED = "***"
"""What stands in for a removed secret."""

# userinfo with a password: everything between "scheme://user:" and the last "@" before the
# host's end (a "/" or whitespace), so a password that itself holds "@" is removed whole.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*:)[^\s/]*@")
_SECRET_PARAM = re.compile(
    r"(?i)(?P<head>[?&;](?:password|passwd|pwd|token|access_token|secret|api_key|apikey"
    r"|sslpassword)=)[^&;#\s'\"]*"
)


def redact_url(text: str) -> str:
    """`text` with the password of every URL in it and secret query values replaced by
    `***`. Thread-safe; never raises."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: m.group("head") + REDACTED + "@", text)
    return _SECRET_PARAM.sub(lambda m: m.group("head") + REDACTED, text)
