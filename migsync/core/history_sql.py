"""The SQL of the migration history, built once per set of bookkeeping table names."""

from __future__ import annotations

import functools

from migsync.core.schema import Tables


class HistorySQL:
    """The history's statements for one set of table names."""

    def __init__(self, t: Tables):
        self.t = t
        self.upsert_status = f"""
INSERT INTO {t.status}
    (migration_name, version, applied, applied_at, applied_checksum, error, attempts, dirty, updated_at)
VALUES ($1, $2, $3, $4, $5, NULL, $6, FALSE, $7)
ON CONFLICT (version) DO UPDATE SET
    migration_name = excluded.migration_name, applied = excluded.applied, applied_at = excluded.applied_at,
    applied_checksum = excluded.applied_checksum, error = NULL,
    attempts = excluded.attempts, dirty = FALSE, updated_at = excluded.updated_at
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
            f"WHERE (s.applied IS NULL OR s.applied = FALSE) AND NOT EXISTS ("
            f"SELECT 1 FROM {t.queue} q WHERE q.migration_name = m.name AND q.processed = FALSE) "
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
            f"FROM {t.queue} WHERE processed = FALSE ORDER BY seq"
        )


@functools.lru_cache(maxsize=16)
def history_sql(tables: Tables) -> HistorySQL:
    return HistorySQL(tables)
