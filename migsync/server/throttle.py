"""Failed authentication, limited per source address: wrong bearer tokens on the API and wrong
admin tokens at the panel's login.

An address that failed ``limit`` times within the window (``"20/minute"`` by default, in the
notation of the `limits <https://limits.readthedocs.io>`_ library) is refused with ``429`` and
``Retry-After`` before its token is even looked at, until its oldest failure leaves the window
(a moving window: a guesser who keeps trying gets one more try per freed slot, never a burst).
Other addresses are not slowed at all: a real admin logs in at once while someone else guesses.

Built on ``limits`` (a maintained library, in-memory storage here) rather than on a sleep under a
global lock, which slowed every login while anyone guessed. The counts are per process: several
server processes each allow ``limit``. Behind a reverse proxy every request comes from the
proxy's address unless uvicorn is told to trust its ``X-Forwarded-For``
(``--forwarded-allow-ips``): then the limit is per real client.

One warning is logged when an address goes over the limit, and at most one per window while it
keeps at it: a log line per burst, not per attempt.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from migsync.core.errors import ConfigError

log = logging.getLogger("migsync.server")

#: The default: 20 failures a minute per address (the API's ~142 guesses a second become 1 in 3 s).
FAILED_AUTH_LIMIT = "20/minute"
#: Addresses remembered as logged; past this many, those whose line is older than the window go.
_MAX_LOGGED = 10_000


class AuthThrottle:
    """Counts failed authentications per address; says when one must wait, and for how long."""

    def __init__(self, limit: str = FAILED_AUTH_LIMIT) -> None:
        try:
            self.item: RateLimitItem = parse(limit)
        except ValueError:
            self.item = parse("0/second")
        if self.item.amount < 1:
            raise ConfigError(
                f"failed-authentication limit {limit!r} is not N/second, N/minute or N/hour "
                "with N >= 1 (e.g. '20/minute')"
            )
        self.limit = limit
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        #: address -> when its last "over the limit" line was logged (monotonic)
        self._logged: dict[str, float] = {}
        #: address -> when it last failed (epoch, the limiter's clock): an address not here, or
        #: not within the window, may try without asking the limiter (every poll asks)
        self._failed_at: dict[str, float] = {}

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again, or None when it may try now."""
        last = self._failed_at.get(address)
        if last is None or time.time() - last >= self.item.get_expiry():
            return None  # no failure within the window: the limiter would say the same
        if self._limiter.test(self.item, address):
            return None
        stats = self._limiter.get_window_stats(self.item, address)
        return max(1, math.ceil(stats.reset_time - time.time()))

    def failed(self, address: str, what: str) -> None:
        """Count a failure of ``address`` (``what``: "wrong bearer tokens on the API", ...)."""
        self._limiter.hit(self.item, address)
        if len(self._failed_at) >= _MAX_LOGGED:
            horizon = time.time() - self.item.get_expiry()
            self._failed_at = {a: t for a, t in self._failed_at.items() if t > horizon}
        self._failed_at[address] = time.time()
        if self._limiter.test(self.item, address):
            return
        now = time.monotonic()
        window = self.item.get_expiry()
        last = self._logged.get(address)
        if last is not None and now - last < window:
            return  # this burst is logged already
        if len(self._logged) >= _MAX_LOGGED:
            self._logged = {a: t for a, t in self._logged.items() if now - t < window}
        self._logged[address] = now
        log.warning(
            "%s from %s: over the limit of %s failures; refused with 429 for %d s",
            what,
            address,
            self.limit,
            self.retry_after(address) or 1,
        )
