"""The panel's sessions: signed, expiring cookie values, and the CSRF tokens bound to them.

A session cookie holds ``v2.<sid>.<expires>.<name>.<mac>``: a random session id, when the
session ends (seconds since the epoch), the name the admin logged in with (UTF-8,
base64url without padding) and an HMAC-SHA256 of all three under the panel's secret.
The server keeps no session table: a value is valid when its MAC checks out and it has
not expired (a ``v1`` value, from before sessions had a name, is refused: log in again).
The only state is the ids of sessions logged out before they expired, kept until they
would have expired, so a logged-out cookie stays dead.

Every form of a session carries ``csrf(sid)``, an HMAC of the session id: a page of
another site can neither read it nor compute it. The login form has no session yet: it
is bound the same way to a random *login nonce* that the login page sets in a cookie of
its own (a signed double submit).

Each MAC names its purpose, so no value made for one purpose passes for another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import attrs

__all__ = ["MAX_NAME", "Session", "Sessions", "clean_name"]

_VERSION = "v2"
#: The longest name an admin may log in with, in characters (after collapsing whitespace).
MAX_NAME = 100
#: base64 of MAX_NAME characters of up to 4 UTF-8 bytes each, and the rest of the value
_MAX_VALUE = 1024


def clean_name(name: str) -> str | None:
    """``name`` with its whitespace collapsed, or None unless it is 1 to MAX_NAME printable characters."""
    cleaned = " ".join(name.split())
    if not cleaned or len(cleaned) > MAX_NAME or not cleaned.isprintable():
        return None
    return cleaned


@attrs.frozen
class Session:
    """A logged-in admin's session."""

    sid: str
    #: when it ends, seconds since the epoch
    expires: float
    #: who logged in (what they typed in the login form): requests to clients are recorded with it
    name: str


class Sessions:
    """Issues and checks session values and CSRF tokens under one secret."""

    def __init__(self, secret: bytes, lifetime: float, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.lifetime = lifetime
        self._clock = clock
        #: sid -> when it would have expired: sessions logged out early
        self._revoked: dict[str, float] = {}

    def _mac(self, purpose: str, *parts: str) -> str:
        message = "\0".join((purpose, *parts)).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    # -- sessions --------------------------------------------------------------------------------

    def issue(self, name: str) -> tuple[Session, str]:
        """A new session of ``name`` and its cookie value. ``name`` must pass :func:`clean_name`."""
        if clean_name(name) != name:
            raise ValueError(f"not a name to log in with: {name!r}")
        session = Session(secrets.token_urlsafe(18), float(int(self._clock() + self.lifetime)), name)
        expires = str(int(session.expires))
        encoded = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
        mac = self._mac("session", session.sid, expires, encoded)
        return session, ".".join((_VERSION, session.sid, expires, encoded, mac))

    def verify(self, value: str | None) -> Session | None:
        """The session ``value`` holds, or None if it is malformed, forged, expired or logged out."""
        if not value or len(value) > _MAX_VALUE or not value.isascii():  # compare_digest wants ASCII
            return None
        parts = value.split(".")
        if len(parts) != 5 or parts[0] != _VERSION or not parts[2].isdigit():
            return None
        _, sid, expires, encoded, mac = parts
        if not hmac.compare_digest(mac, self._mac("session", sid, expires, encoded)):
            return None
        if int(expires) <= self._clock() or sid in self._revoked:
            return None
        try:
            name = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):  # signed by us, so never: but never trust a parse
            return None
        if clean_name(name) != name:
            return None
        return Session(sid, float(expires), name)

    def revoke(self, session: Session) -> None:
        """Log ``session`` out: its cookie value is refused from now on, even if a copy survives."""
        now = self._clock()
        self._revoked = {sid: until for sid, until in self._revoked.items() if until > now}
        self._revoked[session.sid] = session.expires

    # -- CSRF ------------------------------------------------------------------------------------

    def csrf(self, session: Session) -> str:
        """The token every form of ``session`` carries."""
        return self._mac("csrf", session.sid)

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf(session))

    @staticmethod
    def login_nonce() -> str:
        """A fresh value for the login page's own cookie."""
        return secrets.token_urlsafe(18)

    def login_csrf(self, nonce: str) -> str:
        """The token of the login form shown with the login cookie ``nonce``."""
        return self._mac("login", nonce)

    def check_login_csrf(self, nonce: str | None, token: str | None) -> bool:
        return bool(nonce) and bool(token) and hmac.compare_digest(str(token), self.login_csrf(str(nonce)))
