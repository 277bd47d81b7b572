"""Channel URLs and secrets at rest: Fernet tokens under a key derived from the deployment secret.

A Slack incoming-webhook URL is itself a credential, so URLs are encrypted like secrets.
The key is derived with HKDF for this one purpose, so the PII-hashing use of the same
deployment secret never shares key material with it. What the API shows instead is a
hint: the scheme and host, never the path or query that carry the token.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from driftline.errors import DriftlineError

_INFO = b"driftline alerts: channel urls and secrets"


class SecretUnreadable(DriftlineError):
    """A stored token does not decrypt: the deployment secret changed since it was written."""

    status_code = 500


def _fernet(deployment_secret: bytes) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(deployment_secret)
    return Fernet(base64.urlsafe_b64encode(key))


class SecretBox:
    """Seals under the current deployment secret; opens what it or an earlier one sealed.

    Earlier secrets (DRIFTLINE_SECRET_KEY_PREVIOUS) keep a rotation from breaking delivery:
    tokens sealed before it still open until `driftline secrets rotate` seals them again.
    """

    def __init__(self, deployment_secret: bytes, previous: Sequence[bytes] = ()) -> None:
        self._current = _fernet(deployment_secret)
        self._fernet = MultiFernet([self._current, *(_fernet(p) for p in previous)])

    def seal(self, plaintext: str) -> str:
        return self._current.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, ValueError) as exc:
            raise SecretUnreadable(
                "a stored channel URL or secret does not decrypt: was DRIFTLINE_SECRET_KEY changed? "
                "Put the old value in DRIFTLINE_SECRET_KEY_PREVIOUS, or set the URL (and secret) again"
            ) from exc

    def reseal(self, token: str) -> str | None:
        """`token`'s content sealed under the current secret; None when it already is.

        SecretUnreadable when no configured secret opens it.
        """
        try:
            self._current.decrypt(token.encode("ascii"))
            return None
        except (InvalidToken, ValueError):
            return self.seal(self.open(token))


def url_hint(url: str) -> str:
    """What may be shown of a URL: scheme and host (the path and query may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def redact(text: str, *secrets: str | None) -> str:
    """Text with every given secret (and a URL's path, query and password) replaced, for errors
    that are stored or logged: a receiver may repeat any part of the URL it was called on."""
    out = text
    for secret in secrets:
        if secret:
            out = out.replace(secret, "[redacted]")
            parts = urlsplit(secret)
            if len(parts.path) > 1:
                out = out.replace(parts.path, "/[redacted]")
            for part in (parts.query, *(v for _, v in parse_qsl(parts.query)), parts.password):
                if part and len(part) >= 4:
                    out = out.replace(part, "[redacted]")
    return out
