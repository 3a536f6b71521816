"""The SQL statement splitter: where statements end, and on which line they start."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migsync.core.sources import load_directory
from migsync.core.splitter import Statement, is_blank, split

DEMO = Path(__file__).resolve().parent.parent / "migsync" / "demo" / "migrations"
ALL_DIALECTS = ["sqlite", "postgresql", "mysql", "cockroachdb"]


def sqls(sql: str, dialect: str) -> list[str]:
    return [s.sql for s in split(sql, dialect)]


# -- shared behaviour ------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
@pytest.mark.parametrize(
    "sql",
    ["", "   \n\t\n", ";", ";;\n;", "-- just a comment", "-- a;\n-- b;\n", "/* x; */", "/* a */ ; -- b\n;"],
)
def test_nothing_but_comments_gives_no_statements(dialect: str, sql: str) -> None:
    assert split(sql, dialect) == []
    assert is_blank(sql, dialect)


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_basic_cut_and_final_statement_without_semicolon(dialect: str) -> None:
    sql = "CREATE TABLE a (x INTEGER);\nINSERT INTO a VALUES (1);\n\nSELECT x FROM a"
    assert split(sql, dialect) == [
        Statement("CREATE TABLE a (x INTEGER)", 1),
        Statement("INSERT INTO a VALUES (1)", 2),
        Statement("SELECT x FROM a", 4),
    ]
    assert not is_blank(sql, dialect)


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_comment_only_statements_between_real_ones_are_dropped(dialect: str) -> None:
    sql = "SELECT 1;\n-- nothing here;\n;\n/* nor; here */;\nSELECT 2;\n-- trailing comment\n"
    assert split(sql, dialect) == [Statement("SELECT 1", 1), Statement("SELECT 2", 5)]


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_line_is_that_of_the_first_code_character(dialect: str) -> None:
    sql = (
        "\n\n-- leading comment\n/* block\n   comment */\n   SELECT 1;"  # SELECT on line 6
        " SELECT 2;\n"  # same line as the previous statement's end
        "\n-- x\n\nSELECT\n3"  # SELECT on line 10
    )
    assert [s.line for s in split(sql, dialect)] == [6, 6, 10]
    assert sqls(sql, dialect)[0].startswith("-- leading comment")
    assert sqls(sql, dialect)[0].endswith("SELECT 1")


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_crlf_line_numbers(dialect: str) -> None:
    sql = "SELECT 1;\r\n\r\nSELECT 2;\r\n"
    assert split(sql, dialect) == [Statement("SELECT 1", 1), Statement("SELECT 2", 3)]


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("INSERT INTO t VALUES ('a;b'); SELECT 2", ["INSERT INTO t VALUES ('a;b')", "SELECT 2"]),
        ("SELECT 'it''s; fine'; SELECT 2", ["SELECT 'it''s; fine'", "SELECT 2"]),
        ("SELECT ''; SELECT ''''; SELECT 3", ["SELECT ''", "SELECT ''''", "SELECT 3"]),
        ("SELECT 1 -- no; cut\n; SELECT 2", ["SELECT 1 -- no; cut", "SELECT 2"]),
        ("SELECT /* no; cut */ 1; SELECT 2", ["SELECT /* no; cut */ 1", "SELECT 2"]),
        ("SELECT '--'; SELECT '/*'; SELECT 3", ["SELECT '--'", "SELECT '/*'", "SELECT 3"]),
        ("SELECT '/* '; SELECT ' */'", ["SELECT '/* '", "SELECT ' */'"]),
        ('SELECT "a;b" FROM t; SELECT 2', ['SELECT "a;b" FROM t', "SELECT 2"]),
        ('SELECT "a"";b" FROM t; SELECT 2', ['SELECT "a"";b" FROM t', "SELECT 2"]),
        ("SELECT `a;b` FROM t; SELECT 2", ["SELECT `a;b` FROM t", "SELECT 2"]),
        ("SELECT 1 /* ' */; SELECT 2", ["SELECT 1 /* ' */", "SELECT 2"]),
        ("SELECT 1 -- don't\n; SELECT 2", ["SELECT 1 -- don't", "SELECT 2"]),
    ],
)
def test_semicolons_inside_tokens_do_not_cut(dialect: str, sql: str, expected: list[str]) -> None:
    assert sqls(sql, dialect) == expected


# -- Postgres --------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["postgresql", "postgres", "cockroachdb"])
@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql; SELECT 2",
            ["CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql", "SELECT 2"],
        ),
        (
            "DO $body$ BEGIN PERFORM 'x;'; END $body$; SELECT 2",
            ["DO $body$ BEGIN PERFORM 'x;'; END $body$", "SELECT 2"],
        ),
        (
            "DO $b$ BEGIN EXECUTE $a$ SELECT 1; $a$; RAISE NOTICE '$b'; END $b$; SELECT 2",
            ["DO $b$ BEGIN EXECUTE $a$ SELECT 1; $a$; RAISE NOTICE '$b'; END $b$", "SELECT 2"],
        ),
        (  # $$ inside a tagged body does not close it
            "SELECT $x$ a $$ ; $$ b $x$; SELECT 2",
            ["SELECT $x$ a $$ ; $$ b $x$", "SELECT 2"],
        ),
        (  # $1 and $2 are parameters, not dollar quotes
            "PREPARE p AS SELECT $1 + $2; EXECUTE p(1, 2); SELECT 3",
            ["PREPARE p AS SELECT $1 + $2", "EXECUTE p(1, 2)", "SELECT 3"],
        ),
        ("SELECT $1; SELECT $1$2; SELECT 3", ["SELECT $1", "SELECT $1$2", "SELECT 3"]),
        (  # $ inside an identifier is not a dollar quote either
            "SELECT a$b$ FROM t; SELECT 2",
            ["SELECT a$b$ FROM t", "SELECT 2"],
        ),
        (r"SELECT E'it\'s; ok'; SELECT 2", [r"SELECT E'it\'s; ok'", "SELECT 2"]),
        (r"SELECT e'\\'; SELECT 2", [r"SELECT e'\\'", "SELECT 2"]),
        # '' and \' both escape a quote in E'': "x'\'; y" is one string
        (r"SELECT E'x''\'; y'; SELECT 2", [r"SELECT E'x''\'; y'", "SELECT 2"]),
        (r"SELECT E'\\\'; x'; SELECT 2", [r"SELECT E'\\\'; x'", "SELECT 2"]),
        (  # a plain string keeps its backslash literally (standard_conforming_strings)
            r"SELECT 'C:\'; SELECT 2",
            [r"SELECT 'C:\'", "SELECT 2"],
        ),
        (  # an identifier ending in e before a quote is not an E'' prefix
            r"SELECT name'\'; SELECT 2",
            [r"SELECT name'\'", "SELECT 2"],
        ),
        (
            "SELECT 1 /* outer /* inner; */ still comment; */; SELECT 2",
            ["SELECT 1 /* outer /* inner; */ still comment; */", "SELECT 2"],
        ),
        (
            'CREATE TABLE "we;ird" ("a""b;" int); SELECT 2',
            ['CREATE TABLE "we;ird" ("a""b;" int)', "SELECT 2"],
        ),
    ],
)
def test_postgres_lexing(dialect: str, sql: str, expected: list[str]) -> None:
    assert sqls(sql, dialect) == expected


def test_postgres_statement_lines_after_multiline_bodies() -> None:
    sql = (
        "CREATE FUNCTION f() RETURNS trigger AS $fn$\n"
        "BEGIN\n"
        "  NEW.x := 'a;\nb';\n"
        "  RETURN NEW;\n"
        "END;\n"
        "$fn$ LANGUAGE plpgsql;\n"
        "/* multi\n line; */\n"
        "CREATE INDEX CONCURRENTLY i ON t (x);\n"
    )
    result = split(sql, "postgresql")
    assert [s.line for s in result] == [1, 10]
    assert result[1].sql.endswith("CREATE INDEX CONCURRENTLY i ON t (x)")


def test_postgres_comment_only_with_nested_comments_is_blank() -> None:
    sql = "/* a /* b; */ c; */ -- d;\n"
    assert split(sql, "postgresql") == []
    assert is_blank(sql, "postgresql")


def test_unterminated_tokens_swallow_the_rest() -> None:
    assert sqls("SELECT 'open; SELECT 2", "postgresql") == ["SELECT 'open; SELECT 2"]
    assert sqls("SELECT $$ open; SELECT 2", "postgresql") == ["SELECT $$ open; SELECT 2"]
    assert sqls("SELECT 1 /* open; SELECT 2", "postgresql") == ["SELECT 1 /* open; SELECT 2"]


# -- MySQL -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            r"INSERT INTO t VALUES ('it\'s; ok'); SELECT 2",
            [r"INSERT INTO t VALUES ('it\'s; ok')", "SELECT 2"],
        ),
        (r"SELECT 'C:\\'; SELECT 2", [r"SELECT 'C:\\'", "SELECT 2"]),
        (r"SELECT 'a''\\'; SELECT 2", [r"SELECT 'a''\\'", "SELECT 2"]),
        (r'SELECT "say \"hi;\""; SELECT 2', [r'SELECT "say \"hi;\""', "SELECT 2"]),
        ("SELECT 1 # no; cut\n; SELECT 2", ["SELECT 1 # no; cut", "SELECT 2"]),
        ("# only a comment;\n", []),
        # MySQL block comments do not nest: the first */ closes.
        ("SELECT 1 /* a /* b */; SELECT 2", ["SELECT 1 /* a /* b */", "SELECT 2"]),
        # no dollar quoting in MySQL
        ("SELECT 1 AS $a$; SELECT 2", ["SELECT 1 AS $a$", "SELECT 2"]),
    ],
)
def test_mysql_lexing(sql: str, expected: list[str]) -> None:
    assert sqls(sql, "mysql") == expected


# -- SQLite ----------------------------------------------------------------------------------


TRIGGER_SCRIPT = """\
-- schema for the order log
CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER NOT NULL, note TEXT);
CREATE TABLE log (order_id INTEGER, size TEXT, note TEXT);

/* the trigger body has statements of its own; and a CASE ... END */
CREATE TRIGGER orders_log AFTER INSERT ON orders
BEGIN
    INSERT INTO log (order_id, size, note)
    VALUES (new.id, CASE WHEN new.total > 100 THEN 'big;' ELSE 'small' END, 'end;');
    UPDATE orders SET note = CASE new.total WHEN 0 THEN 'free' END
    WHERE id = new.id;
END;
CREATE INDEX "log;order" ON log (order_id);
INSERT INTO orders (total) VALUES (150);
INSERT INTO orders (total, note) VALUES (0, 'it''s; -- not a comment');
INSERT INTO orders (total) VALUES (5)  -- the last one has no semicolon
"""


def test_sqlite_trigger_bodies_stay_whole() -> None:
    result = split(TRIGGER_SCRIPT, "sqlite")
    assert [s.line for s in result] == [2, 3, 6, 13, 14, 15, 16]
    trigger = result[2].sql
    assert trigger.startswith("/* the trigger body")
    assert trigger.endswith("WHERE id = new.id;\nEND")
    assert result[3].sql == 'CREATE INDEX "log;order" ON log (order_id)'
    assert result[5].sql == "INSERT INTO orders (total, note) VALUES (0, 'it''s; -- not a comment')"
    assert result[6].sql == "INSERT INTO orders (total) VALUES (5)  -- the last one has no semicolon"


@pytest.mark.parametrize("dialect", ["sqlite", "sqlite3"])
def test_sqlite_statements_execute_one_by_one(dialect: str) -> None:
    db = sqlite3.connect(":memory:")
    try:
        for statement in split(TRIGGER_SCRIPT, dialect):
            assert sqlite3.complete_statement(statement.sql + "\n;")
            db.execute(statement.sql)
        objects = db.execute("SELECT type, name FROM sqlite_master ORDER BY type, name").fetchall()
        assert objects == [
            ("index", "log;order"),
            ("table", "log"),
            ("table", "orders"),
            ("trigger", "orders_log"),
        ]
        assert db.execute("SELECT order_id, size, note FROM log ORDER BY order_id").fetchall() == [
            (1, "big;", "end;"),
            (2, "small", "end;"),
            (3, "small", "end;"),
        ]
        assert db.execute("SELECT id, note FROM orders ORDER BY id").fetchall() == [
            (1, None),
            (2, "free"),
            (3, None),
        ]
    finally:
        db.close()


def test_sqlite_demo_migrations_execute_up_and_down() -> None:
    db = sqlite3.connect(":memory:")
    try:
        migrations = load_directory(DEMO)
        for migration in migrations:
            for statement in split(migration.script("up", "sqlite").sql, "sqlite"):
                db.execute(statement.sql)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"customers", "orders", "order_audit"}
        db.execute("INSERT INTO customers (name) VALUES ('a')")
        db.execute("INSERT INTO orders (customer_id, total_cents) VALUES (1, 10)")
        assert db.execute("SELECT order_id, action FROM order_audit").fetchall() == [(1, "insert")]
        for migration in reversed(migrations):
            for statement in split(migration.script("down", "sqlite").sql, "sqlite"):
                db.execute(statement.sql)
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    finally:
        db.close()


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT [a;b] FROM t; SELECT 2", ["SELECT [a;b] FROM t", "SELECT 2"]),
        # SQLite block comments do not nest: the first */ closes.
        ("SELECT 1 /* a /* b */; SELECT 2", ["SELECT 1 /* a /* b */", "SELECT 2"]),
        # a backslash is an ordinary character in an SQLite string
        (r"SELECT 'C:\'; SELECT 2", [r"SELECT 'C:\'", "SELECT 2"]),
        (
            "CREATE TRIGGER t1 AFTER DELETE ON a BEGIN DELETE FROM b; END; SELECT 2",
            ["CREATE TRIGGER t1 AFTER DELETE ON a BEGIN DELETE FROM b; END", "SELECT 2"],
        ),
        (
            "CREATE TEMP TRIGGER t1 AFTER DELETE ON a BEGIN SELECT CASE WHEN 1 THEN 2 END; END; SELECT 2",
            ["CREATE TEMP TRIGGER t1 AFTER DELETE ON a BEGIN SELECT CASE WHEN 1 THEN 2 END; END", "SELECT 2"],
        ),
    ],
)
def test_sqlite_lexing(sql: str, expected: list[str]) -> None:
    assert sqls(sql, "sqlite") == expected


# -- property: joining and re-splitting is stable ------------------------------------------------

# Fragments that are complete tokens on their own: each may hold a ';' that must not cut.
COMMON_FRAGMENTS = [
    "x",
    "42",
    "'a;b'",
    "'it''s;'",
    "''",
    '"q;id"',
    '"a"";b"',
    "/* c; */",
    "-- line; comment\n",
    "(1, 2)",
    "\n",
    "\r\n",
]
POSTGRES_FRAGMENTS = [
    *COMMON_FRAGMENTS,
    "$$ a; b $$",
    "$tag$ $$; $x$ ; $tag$",
    "$1",
    "$2::int",
    r"E'\';x'",
    "/* a /* b; */ c; */",
    "`b;t`",
]
SQLITE_FRAGMENTS = [
    *COMMON_FRAGMENTS,
    "[br;acket]",
    "`b;t`",
    "CASE WHEN 1 THEN 'x;' ELSE 2 END",
    r"'C:\'",
]
MYSQL_FRAGMENTS = [*COMMON_FRAGMENTS, r"'it\'s;'", "# hash; comment\n", "`b;t`"]


def statement_texts(fragments: list[str]) -> st.SearchStrategy[list[str]]:
    statement = st.lists(st.sampled_from(fragments), max_size=6).map(
        lambda parts: " ".join(["SELECT", *parts])
    )
    return st.lists(statement, max_size=5)


def check_round_trip(statements: list[str], dialect: str) -> None:
    separators = [";\n", "; ", ";\n-- between;\n", ";\n\n/* gap; */ "]
    script = ""
    starts = []
    expected = []
    carry = ""  # what follows the previous ';': it opens the next statement's text
    for index, text in enumerate(statements):
        starts.append(script.count("\n") + 1)
        expected.append((carry + text).strip())
        separator = separators[index % len(separators)]
        script += text + separator
        carry = separator[1:]
    result = split(script, dialect)
    assert [s.sql for s in result] == expected
    assert [s.line for s in result] == starts
    # Joining the output again and re-splitting gives the same statements. The
    # separator starts with a newline: a statement may end in a "--" comment.
    again = split("\n;\n".join(s.sql for s in result), dialect)
    assert [s.sql for s in again] == [s.sql for s in result]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statements=statement_texts(POSTGRES_FRAGMENTS))
def test_property_round_trip_postgres(statements: list[str]) -> None:
    check_round_trip(statements, "postgresql")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statements=statement_texts(SQLITE_FRAGMENTS))
def test_property_round_trip_sqlite(statements: list[str]) -> None:
    check_round_trip(statements, "sqlite")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statements=statement_texts(MYSQL_FRAGMENTS))
def test_property_round_trip_mysql(statements: list[str]) -> None:
    check_round_trip(statements, "mysql")


@settings(max_examples=300, deadline=None)
@given(sql=st.text(alphabet=st.sampled_from(list("ab;'\"$/*-\n\\ E[]`#")), max_size=40))
@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_property_arbitrary_text_never_crashes_and_resplits_stably(sql: str, dialect: str) -> None:
    result = split(sql, dialect)
    for statement in result:
        assert statement.sql == statement.sql.strip()
        assert statement.sql
        assert 1 <= statement.line <= sql.count("\n") + 1
        assert statement.sql in sql
    assert [s.line for s in result] == sorted(s.line for s in result)


# -- offsets, BEGIN ATOMIC, brackets ------------------------------------------------------------


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_offsets_point_at_each_statement_and_its_terminator(dialect: str) -> None:
    sql = "-- head\nSELECT 1;\n\n  SELECT 'a;b' ;\nSELECT 3"
    for statement in split(sql, dialect):
        assert sql[statement.start : statement.end] == statement.sql
        assert statement.terminator == len(sql) or sql[statement.terminator] == ";"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (  # a SQL-standard body keeps its semicolons (psql's rule)
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; SELECT 3",
            ["CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END", "SELECT 3"],
        ),
        (  # CASE ... END inside the body does not close it
            "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC "
            "SELECT CASE WHEN true THEN 1 END; END; SELECT 2",
            [
                "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC "
                "SELECT CASE WHEN true THEN 1 END; END",
                "SELECT 2",
            ],
        ),
        (  # words in strings, comments and parentheses do not count
            "CREATE FUNCTION g(x text DEFAULT 'begin') RETURNS int LANGUAGE sql "
            "BEGIN ATOMIC SELECT 'end'; /* end */ SELECT 1; END; SELECT 2",
            [
                "CREATE FUNCTION g(x text DEFAULT 'begin') RETURNS int LANGUAGE sql "
                "BEGIN ATOMIC SELECT 'end'; /* end */ SELECT 1; END",
                "SELECT 2",
            ],
        ),
        (  # outside a routine, BEGIN is transaction control and ends at its semicolon
            "BEGIN; SELECT 1; END; SELECT 2",
            ["BEGIN", "SELECT 1", "END", "SELECT 2"],
        ),
    ],
)
def test_postgres_begin_atomic_bodies(sql: str, expected: list[str]) -> None:
    assert sqls(sql, "postgresql") == expected


def test_sqlite_brackets_may_hold_quotes() -> None:
    assert sqls("SELECT [it's] FROM t; SELECT 'x'; SELECT 2", "sqlite") == [
        "SELECT [it's] FROM t",
        "SELECT 'x'",
        "SELECT 2",
    ]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_string_with_many_semicolons_is_one_statement(dialect: str) -> None:
    sql = "INSERT INTO t VALUES ('" + "a;" * 20_000 + "'); SELECT 2"
    result = split(sql, dialect)
    assert [s.line for s in result] == [1, 1]
    assert result[1].sql == "SELECT 2"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_many_statements_keep_their_lines(dialect: str) -> None:
    sql = "".join(f"INSERT INTO t VALUES ({i}, 'x;y');\n-- note\n" for i in range(5000))
    result = split(sql, dialect)
    assert len(result) == 5000
    assert [s.line for s in result[:3]] == [1, 3, 5]
    assert result[-1].line == 9999
