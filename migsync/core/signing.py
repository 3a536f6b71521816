"""Moved to ``migsync.protocol.signing``; this path is kept for plugins written against it."""

from migsync.protocol.signing import *  # noqa: F403
