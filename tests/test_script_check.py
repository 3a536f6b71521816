"""What a transactional migration script may hold: the check and the wrapper it unwraps."""

from __future__ import annotations

import pytest

from migsync.core.script_check import ScriptRefused, problems, runnable

ALL = ["sqlite", "postgresql", "*"]


def lines(sql: str, dialect: str) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in problems(sql, dialect)]


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN;\nCREATE TABLE a (x int);\nCOMMIT;",
        "begin transaction;\n-- note\ncreate table a (x int);\nend transaction;\n",
        "START TRANSACTION;\nCREATE TABLE a (x int);\nCOMMIT WORK;",
        "BEGIN IMMEDIATE;\nCREATE TABLE a (x int);\nEND;",
        "BEGIN;\nCOMMIT;",
    ],
)
def test_a_wrapper_is_accepted_and_blanked_keeping_lines(dialect: str, sql: str) -> None:
    assert problems(sql, dialect) == []
    if dialect == "*":
        return
    ran = runnable(sql, dialect, autocommit=False)
    assert len(ran) == len(sql) and ran.count("\n") == sql.count("\n")
    assert "BEGIN" not in ran.upper().replace("BEGIN ATOMIC", "") and "COMMIT" not in ran.upper()
    body = [line for line in sql.split("\n")[1:-1] if "TABLE" in line.upper()]
    assert [line for line in ran.split("\n") if "TABLE" in line.upper()] == body


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize(
    ("sql", "found"),
    [
        ("BEGIN;\nINSERT INTO t VALUES (1);\nCOMMIT;\nINSERT INTO t VALUES (2);", [1, 3]),
        ("INSERT INTO t VALUES (1);\nCOMMIT;", [2]),
        ("CREATE TABLE r1 (x int);\nROLLBACK;\nCREATE TABLE r2 (x int);", [2]),
        ("SAVEPOINT a;\nINSERT INTO t VALUES (1);\nROLLBACK TO SAVEPOINT a;\nRELEASE a;", [1, 3, 4]),
        ("BEGIN;\nBEGIN;\nSELECT 1;\nCOMMIT;\nCOMMIT;", [1, 2, 4, 5]),
        ("BEGIN;\nSELECT 1;\nROLLBACK;", [1, 3]),
        ("INSERT INTO t VALUES (1);\nEND;", [2]),
        ("VACUUM;", [1]),
    ],
)
def test_other_transaction_control_is_a_problem_at_its_line(dialect: str, sql: str, found: list[int]) -> None:
    assert [line for line, _ in lines(sql, dialect)] == found
    if dialect != "*" and any(p.control for p in problems(sql, dialect)):
        with pytest.raises(ScriptRefused) as caught:
            runnable(sql, dialect, autocommit=False)
        assert caught.value.line == found[0]
        assert "transaction:false" in str(caught.value)


def test_begin_with_options_is_not_a_plain_wrapper() -> None:
    sql = "BEGIN ISOLATION LEVEL SERIALIZABLE;\nSELECT 1;\nCOMMIT;"
    assert [line for line, _ in lines(sql, "postgresql")] == [1, 3]


def test_a_script_outside_a_transaction_runs_as_written() -> None:
    sql = "BEGIN;\nINSERT INTO t VALUES (1);\nCOMMIT;\nVACUUM;"
    assert runnable(sql, "sqlite", autocommit=True) == sql


@pytest.mark.parametrize(
    ("sql", "dialect", "found"),
    [
        ("PRAGMA foreign_keys=OFF;\nCREATE TABLE x (y int);\nPRAGMA foreign_keys=ON;", "sqlite", []),
        ("PRAGMA journal_mode=WAL;", "sqlite", [1]),
        ("ATTACH 'other.db' AS other;", "sqlite", [1]),
        ("CREATE INDEX CONCURRENTLY i ON t (x);", "postgresql", [1]),
        ("CREATE INDEX CONCURRENTLY i ON t (x);", "sqlite", []),
        ("CREATE INDEX CONCURRENTLY i ON t (x);", "*", [1]),  # refused in one dialect, broken in the other
        ("CREATE DATABASE other;", "postgresql", [1]),
        ("ALTER SYSTEM SET work_mem = '1MB';", "postgresql", [1]),
        ("PREPARE TRANSACTION 'x';", "postgresql", [1]),
        ("PREPARE q AS SELECT 1;", "postgresql", []),
    ],
)
def test_dialect_specific_statements(sql: str, dialect: str, found: list[int]) -> None:
    assert [line for line, _ in lines(sql, dialect)] == found


def test_statements_the_database_refuses_are_left_to_it_at_run_time() -> None:
    # The loader reports them; at run time only transaction control is refused before running.
    sql = "CREATE INDEX CONCURRENTLY i ON t (x);"
    assert runnable(sql, "postgresql", autocommit=False) == sql


SQLITE_TRIGGER = "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  UPDATE b SET x = 1;\nEND;\nSELECT 1;"
PG_ATOMIC = "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\nEND;"
PG_DOLLAR = "CREATE FUNCTION f() RETURNS int AS $$\nBEGIN\n  RETURN 1;\nEND;\n$$ LANGUAGE plpgsql;"


@pytest.mark.parametrize(
    ("sql", "sqlite", "postgresql"),
    [(SQLITE_TRIGGER, [], [3]), (PG_ATOMIC, [4], []), (PG_DOLLAR, [4], [])],
)
def test_bodies_are_read_by_each_dialect_and_a_generic_script_by_both(
    sql: str, sqlite: list[int], postgresql: list[int]
) -> None:
    assert [line for line, _ in lines(sql, "sqlite")] == sqlite
    assert [line for line, _ in lines(sql, "postgresql")] == postgresql
    assert problems(sql, "*") == []  # transaction control only where both dialects agree


def test_the_quick_look_misses_no_keyword_the_full_regex_finds() -> None:
    # The word-set lookup stands in for the case-insensitive regex: on ASCII text it finds every
    # suspect word the regex finds, in any case and beside any punctuation, quotes or digits.
    import random

    from migsync.core import script_check

    rng = random.Random(18)
    words = sorted(script_check._SUSPECT_WORDS)
    glue = ["", " ", ";", "\n", "_", "1", "x", "(", "'", '"', "--", "/*", "é"]
    for _ in range(20000):
        pieces = [
            rng.choice(words) if rng.random() < 0.3 else rng.choice(["t", "ab", "end_", "2"])
            for _ in range(4)
        ]
        sql = "".join(rng.choice(glue) + (p.upper() if rng.random() < 0.3 else p) for p in pieces)
        if script_check._SUSPECT.search(sql):
            assert script_check._suspect(sql), sql
    assert not script_check._suspect("CREATE TABLE beginning (ends INT, committed TEXT)")
    assert script_check._suspect("CREATE TABLE t (a INT);\nCOMMIT;")
    # A long script is searched with the regex: no list of its every word.
    long = "INSERT INTO t VALUES (1);\n" * 5000
    assert not script_check._suspect(long)
    assert script_check._suspect(long + "VACUUM;")
