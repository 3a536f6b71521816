"""``migsync demo`` through its real console script: both parts, and each part alone."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

from dbtools import migsync_env, query, run

STEPS = [f"== {n}." for n in range(1, 12)]


def sections(stdout: str) -> dict[int, str]:
    """The output of each step, by its number (``== 7. ...`` up to the next step)."""
    parts = re.split(r"^== (\d+)\.", stdout, flags=re.MULTILINE)
    return {int(number): text for number, text in zip(parts[1::2], parts[2::2], strict=True)}


def fleet_rows(text: str) -> dict[str, dict[str, str]]:
    """The rows of the fleet table in ``text``, by client name, as {column: cell}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("id  name"))
    header = re.split(r"\s{2,}", lines[start])
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip() or not line[0].isdigit():
            break
        cells = dict(zip(header, re.split(r"\s{2,}", line.rstrip(), maxsplit=len(header) - 1), strict=True))
        rows[cells["name"]] = cells
    return rows


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = run("demo", "--dir", str(workdir))
    out = result.stdout
    assert result.returncode == 0, result.stderr

    positions = [out.find(step) for step in STEPS]
    assert -1 not in positions, [s for s, p in zip(STEPS, positions, strict=True) if p == -1]
    assert positions == sorted(positions), "the steps are out of order"
    step = sections(out)

    # part 1, one client on its own
    assert "migration_dead" in step[2]
    assert (workdir / "events.jsonl").stat().st_size > 0

    # 6: all three clients apply the three bundled migrations, ship-atlantic from the drop folder
    drop = workdir / "fleet" / "drop"
    for client in ("shop-berlin", "shop-paris", "ship-atlantic"):
        assert f"{client}: 3 offered, 3 verified and stored, applied 0001_create_customers" in step[6]
    assert f"exported to {drop}: wrote 0001_create_customers .. 0003_order_audit" in step[6]
    # the server learns what the ship did only from import-reports
    before, after = step[6].split("import-reports: 1 report file of ship-atlantic, versions 1, 2, 3 recorded")
    unknown = fleet_rows(before)["ship-atlantic"]
    assert (unknown["latest"], unknown["applied"], unknown["last seen"]) == ("-", "0", "never")
    assert "the fleet view now: ship-atlantic on version 3" in after
    assert fleet_rows(step[7])["ship-atlantic"]["latest"] == "3"
    # offline, it hears nothing of steps 7 to 9 (it only appears in step 7's fleet table)
    assert "ship-atlantic" not in step[7].split("id  name")[0] + step[8] + step[9]

    # 7: the broken migration is rolled out canary first: shop-berlin fails on it, the rollout pauses
    # itself, shop-paris (outside the canary stage) is never sent it; the fleet view says so
    assert "shop-berlin: FAILED apply 0004_add_customer_email (attempt 1 of 3)" in step[7]
    assert "no such table: customer" in step[7]
    assert "shop-paris: 0 offered" in step[7]
    assert "shop-paris: 0004_add_customer_email not sent yet (the rollout holds it back)" in step[7]
    assert "rollout 1: 4 paused (stage 1: 1 of 1 clients that reported failed" in step[7]
    failing = fleet_rows(step[7])
    assert failing["shop-berlin"]["failed"].startswith("4: migration 0004_add_customer_email")
    assert (failing["shop-paris"]["failed"], failing["shop-paris"]["latest"]) == ("-", "3")

    # 8: the fix is rolled out over it: the canary applies it, the rollout moves on, shop-paris too
    assert "replaced 0004_add_customer_email" in step[8]
    berlin, moved, paris, done = re.split(r"^   (rollout 2: .*)$", step[8], flags=re.MULTILINE)[:4]
    assert "shop-berlin: 1 offered, 1 verified and stored, applied 0004_add_customer_email" in berlin
    assert moved == "rollout 2: 4 running, stage 2 of 2 (all); stages canary, all"
    assert "shop-paris: 1 offered, 1 verified and stored, applied 0004_add_customer_email" in paris
    assert done.startswith("rollout 2: 4 completed")

    # 9: both refuse the rogue signature, nothing of it runs until the real key signs it
    assert step[9].count("re-signed 0005_add_customer_city") == 1, step[9]
    refused, resigned = step[9].split("re-signed 0005_add_customer_city")
    for shop in ("shop-berlin", "shop-paris"):
        assert f"{shop}: REFUSED 0005_add_customer_city (signature)" in refused
        assert f"{shop}: 1 offered, 1 verified and stored, applied 0005_add_customer_city" in resigned
    assert "does not match its content under any trusted key" in refused
    assert "applied" not in refused.split("added 0005_add_customer_city")[1]

    # 10: a revert request, then a re-apply, each carried out by shop-paris's next sync
    revert, reapply = step[10].split("reapply version 5 on shop-paris, by demo admin")
    assert "revert version 5 on shop-paris, by demo admin" in revert
    assert (
        "shop-paris: 0 offered, 0 verified and stored, 1 request from the admin, "
        "reverted 0005_add_customer_city, reported 1"
    ) in revert
    assert "done (reverted; held at version 5)" in revert
    assert (
        "shop-paris: 1 offered, 0 verified and stored, 1 request from the admin, "
        "applied 0005_add_customer_city, reported 1"
    ) in reapply
    assert "done (0005_add_customer_city applied)" in reapply
    assert "shop-berlin" not in step[10]

    # 11: ship-atlantic catches up from a fresh export, its reports are imported; the fleet view
    assert (
        f"exported to {drop}: wrote 0004_add_customer_email .. 0005_add_customer_city, 3 unchanged"
        in step[11]
    )
    assert (
        "ship-atlantic: 2 offered, 2 verified and stored, "
        "applied 0004_add_customer_email .. 0005_add_customer_city, reported 2"
    ) in step[11]
    assert "import-reports: 1 report file of ship-atlantic, versions 4, 5 recorded" in step[11]
    assert "REFUSED" not in step[11]
    ship_reports = drop / "reports" / "3"
    assert [p.suffix for p in ship_reports.iterdir()] == [".imported", ".imported"]
    final = fleet_rows(step[11])
    assert sorted(final) == ["ship-atlantic", "shop-berlin", "shop-paris"]
    for row in final.values():
        assert (row["latest"], row["applied"], row["pending"], row["drift"], row["failed"]) == (
            "5", "5", "-", "-", "-"
        )  # fmt: skip

    # the store and the client databases agree with what was printed
    fleet = run("fleet", "--store", f"sqlite:///{workdir / 'fleet' / 'server.db'}", "--json")
    assert fleet.returncode == 0, fleet.stderr
    clients = json.loads(fleet.stdout)["clients"]
    assert [(c["name"], c["latest_version"], c["failed"]) for c in clients] == [
        ("shop-berlin", "5", []),
        ("shop-paris", "5", []),
        ("ship-atlantic", "5", []),
    ]
    for shop in ("shop-berlin", "shop-paris", "ship-atlantic"):
        columns = query(f"sqlite:///{workdir / 'fleet' / shop}.db", "PRAGMA table_info(customers)")
        assert {"email", "city"} <= {c[1] for c in columns}


def test_demo_runs_one_part_alone(tmp_path: Path) -> None:
    local = run("demo", "--dir", str(tmp_path / "local"), "--part", "local")
    assert local.returncode == 0, local.stderr
    assert "== 4." in local.stdout and "== 5." not in local.stdout
    assert not (tmp_path / "local" / "fleet").exists()

    fleet = run("demo", "--dir", str(tmp_path / "fleet"), "--part", "fleet")
    assert fleet.returncode == 0, fleet.stderr
    assert "== 1." not in fleet.stdout and "== 10." in fleet.stdout
    assert not (tmp_path / "fleet" / "client.db").exists()


def test_demo_runs_with_its_default_relative_folder(tmp_path: Path) -> None:
    # `make demo` runs `migsync demo` with the default --dir demo-output, relative to the cwd.
    fleet = run("demo", "--part", "fleet", cwd=tmp_path)
    assert fleet.returncode == 0, fleet.stderr
    assert "== 10." in fleet.stdout and "ship-atlantic" in fleet.stdout
    assert (tmp_path / "demo-output" / "fleet" / "drop" / "manifest.json").is_file()


def test_the_demos_hints_run_as_pasted_where_migsync_is_not_on_the_path(tmp_path: Path) -> None:
    """After ``make demo`` a newcomer has no ``migsync`` on the PATH: the hints name the script."""
    local = run("demo", "--part", "local", cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert local.returncode == 0, local.stderr
    [hint] = [line for line in local.stdout.splitlines() if line.startswith("try: ")]
    command = shlex.split(hint.removeprefix("try: "))
    assert command[0] != "migsync" and command[1:3] == ["status", "--db"]
    pasted = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env=migsync_env() | {"PATH": "/usr/bin:/bin"}
    )
    assert pasted.returncode == 0, pasted.stderr
    assert "applied" in pasted.stdout
