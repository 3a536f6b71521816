"""The SQL of the migration history, built once per set of bookkeeping table names."""

from __future__ import annotations

import functools

from migsync.core.schema import QUEUE_FROM_KEY, Tables


class HistorySQL:
    """The history's statements for one set of table names."""

    def __init__(self, t: Tables):
        self.t = t
        #: Where the open changes start: a seq at or below every unprocessed change's, kept in
        #: ``migsync_meta`` (layout 6). The queue has no index on ``processed`` (an index the
        #: commit of every migration would write a page of); its open changes are found by a
        #: range of its key from here. Sound because a change is never reopened and a new one
        #: always gets a seq above every other: a bound once true stays true, however stale.
        self.open_from = (
            f"COALESCE((SELECT CAST(value AS BIGINT) FROM {t.meta} WHERE key = '{QUEUE_FROM_KEY}'), 0)"
        )
        #: After new changes are inserted: a bound above the newest change (possible only when
        #: changes were deleted by hand, so that seqs are handed out again) goes back to 0.
        self.lower_open_from = (
            f"UPDATE {t.meta} SET value = '0' WHERE key = '{QUEUE_FROM_KEY}' "
            # Not CAST(value ...) here: Postgres may test a condition on rows of other keys.
            f"AND {self.open_from} > (SELECT COALESCE(MAX(seq), 0) FROM {t.queue})"
        )
        #: Moves ``open_from`` up to the first open change (past the last one when none is open).
        #: In the commit of each batch's last change (and of an atomic apply), never per migration.
        self.settle_open_from = (
            f"UPDATE {t.meta} SET value = CAST(COALESCE("
            f"(SELECT MIN(seq) FROM {t.queue} WHERE seq >= {self.open_from} AND processed = FALSE), "
            f"(SELECT COALESCE(MAX(seq), 0) + 1 FROM {t.queue})) AS TEXT) WHERE key = '{QUEUE_FROM_KEY}'"
        )
        self.upsert_status = f"""
INSERT INTO {t.status}
    (migration_name, version, applied, applied_at, applied_checksum, error, attempts, dirty, updated_at)
VALUES ($1, $2, $3, $4, $5, NULL, $6, FALSE, $7)
ON CONFLICT (version) DO UPDATE SET
    migration_name = excluded.migration_name, applied = excluded.applied, applied_at = excluded.applied_at,
    applied_checksum = excluded.applied_checksum, error = NULL,
    attempts = excluded.attempts, dirty = FALSE, updated_at = excluded.updated_at
"""
        #: The same on SQLite: every column is written, so replacing the row is the upsert, and
        #: SQLite compiles it in about half the time. Each migration's own schema change makes
        #: SQLite compile its next statements again, so that cost is paid once per migration.
        self.replace_status = f"""
INSERT OR REPLACE INTO {t.status}
    (migration_name, version, applied, applied_at, applied_checksum, error, attempts, dirty, updated_at)
VALUES ($1, $2, $3, $4, $5, NULL, $6, FALSE, $7)
"""
        self.failed_status = f"""
INSERT INTO {t.status} (migration_name, version, applied, error, attempts, dirty, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (version) DO UPDATE SET
    error = excluded.error, attempts = excluded.attempts, dirty = excluded.dirty,
    updated_at = excluded.updated_at
"""
        # Before work outside a transaction: in progress until finish or repair.
        self.mark_dirty = f"""
INSERT INTO {t.status} (migration_name, version, applied, attempts, dirty, updated_at)
VALUES ($1, $2, $3, $4, TRUE, $5)
ON CONFLICT (version) DO UPDATE SET
    dirty = TRUE, attempts = excluded.attempts, updated_at = excluded.updated_at
"""
        self.known = (
            f"SELECT m.version, m.name, m.checksum, s.applied FROM {t.migrations} m "
            f"LEFT JOIN {t.status} s ON s.version = m.version"
        )
        self.unqueued = (
            f"SELECT m.version, m.name FROM {t.migrations} m "
            f"LEFT JOIN {t.status} s ON s.version = m.version "
            f"WHERE (s.applied IS NULL OR s.applied = FALSE) AND m.name NOT IN ("
            f"SELECT migration_name FROM {t.queue} WHERE seq >= {self.open_from} AND processed = FALSE) "
            f"ORDER BY m.version"
        )
        self.insert_change = f"""
INSERT INTO {t.queue} (id, seq, migration_name, operation, timestamp, max_attempts)
VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM {t.queue}), $2, $3, $4, $5)
"""
        self.status = (
            f"SELECT m.version, m.name, m.checksum, s.applied, s.applied_at, s.dirty, "
            f"s.error AS status_error, s.attempts AS status_attempts "
            f"FROM {t.migrations} m LEFT JOIN {t.status} s ON s.version = m.version "
            f"ORDER BY m.version"
        )
        self.dirty = f"SELECT migration_name FROM {t.status} WHERE dirty = TRUE LIMIT 1"
        self.open_changes = (
            f"SELECT migration_name, operation, attempts, max_attempts, error, next_attempt_at "
            f"FROM {t.queue} WHERE seq >= {self.open_from} AND processed = FALSE ORDER BY seq"
        )

    def open_named(self, n: int) -> str:
        """The condition on the queue for the open changes of the migration named by ``$n``."""
        return f"migration_name = ${n} AND seq >= {self.open_from} AND processed = FALSE"


@functools.lru_cache(maxsize=16)
def history_sql(tables: Tables) -> HistorySQL:
    return HistorySQL(tables)
