"""The panel's sessions: signed, expiring cookie values, and the CSRF tokens bound to them.

A session cookie holds ``v1.<sid>.<expires>.<mac>``: a random session id, when the
session ends (seconds since the epoch) and an HMAC-SHA256 of both under the panel's
secret. The server keeps no session table: a value is valid when its MAC checks out
and it has not expired. The only state is the ids of sessions logged out before they
expired, kept until they would have expired, so a logged-out cookie stays dead.

Every form of a session carries ``csrf(sid)``, an HMAC of the session id: a page of
another site can neither read it nor compute it. The login form has no session yet: it
is bound the same way to a random *login nonce* that the login page sets in a cookie of
its own (a signed double submit).

Each MAC names its purpose, so no value made for one purpose passes for another.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import attrs

__all__ = ["Session", "Sessions"]

_VERSION = "v1"


@attrs.frozen
class Session:
    """A logged-in admin's session."""

    sid: str
    #: when it ends, seconds since the epoch
    expires: float


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

    def issue(self) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_urlsafe(18), float(int(self._clock() + self.lifetime)))
        expires = str(int(session.expires))
        return session, ".".join((_VERSION, session.sid, expires, self._mac("session", session.sid, expires)))

    def verify(self, value: str | None) -> Session | None:
        """The session ``value`` holds, or None if it is malformed, forged, expired or logged out."""
        if not value or len(value) > 256:
            return None
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[2].isdigit():
            return None
        _, sid, expires, mac = parts
        if not hmac.compare_digest(mac, self._mac("session", sid, expires)):
            return None
        if int(expires) <= self._clock() or sid in self._revoked:
            return None
        return Session(sid, float(expires))

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
