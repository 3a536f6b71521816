"""Moved to ``migsync.protocol.wire``; this path is kept for plugins written against it."""

from migsync.protocol.wire import *  # noqa: F403
