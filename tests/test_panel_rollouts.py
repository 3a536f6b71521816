"""The admin panel's rollouts pages (the home page, a rollout's page) and their controls, in-process
through httpx.ASGITransport on a real store (SQLite, and Postgres where the store's SQL matters):
the charts over time, the stage and error rate, pause / resume / advance / abort recorded with the
admin's name behind the session's CSRF token, and the live part panel.js fetches."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import httpx
import pytest
from test_panel import NAME, V1, V2, Panel, applied, failed, form_csrf, panel_on
from test_panel import admin as admin
from test_panel import any_admin as any_admin
from test_panel import panel as panel

from migsync.protocol.signing import load_private_key
from migsync.server import rollouts as r
from migsync.server.panel import rollout_views
from migsync.server.rollouts import Policy, parse_stages


async def start(
    admin: Panel, stages: str = "canary,all", **policy: float
) -> tuple[int, list[int], list[int]]:
    """A fleet of 4 canaries and 6 others, V1 published to all, V2 rolled out in ``stages``."""
    canary = [(await admin.store.add_client(f"canary{i}", {"group": "canary"}))[0] for i in range(4)]
    rest = [(await admin.store.add_client(f"plain{i}"))[0] for i in range(6)]
    await admin.publish(V1)
    result = await admin.store.publish(
        [V2],
        load_private_key(admin.key_path),
        rollout=(parse_stages(stages), Policy(soak=policy.get("soak", 3600.0)), "alice"),
    )
    assert result.rollout_id is not None
    return result.rollout_id, canary, rest


def chart_counts(html: str, rollout_id: int) -> list[tuple[int, int, int]]:
    """Per stage chart of a rollout's section: (applied, failed, pending) as its caption says."""
    section = html.split(f'id="rollout-{rollout_id}"', 1)[1].split("</section>", 1)[0]
    return [
        (int(a), int(f), int(p))
        for a, f, p in re.findall(
            r'data-count="applied">(\d+)<.*?data-count="failed">(\d+)<.*?data-count="pending">(\d+)<',
            section,
            re.S,
        )
    ]


async def operate(
    admin: Panel, rollout_id: int, op: str, back: str = "home", csrf: str | None = None
) -> httpx.Response:
    token = csrf if csrf is not None else form_csrf(await admin.page("/admin/"))
    return await admin.http.post(
        f"/admin/rollouts/{rollout_id}", data={"csrf": token, "op": op, "back": back}
    )


async def test_the_home_page_is_the_rollouts_with_charts_stage_and_error_rate(any_admin: Panel) -> None:
    admin = any_admin
    rollout_id, canary, _rest = await start(admin)
    html = await admin.page("/admin/")
    assert "<h1>Rollouts</h1>" in html
    section = html.split(f'id="rollout-{rollout_id}"', 1)[1].split("</section>", 1)[0]
    assert "1 of 2: canary" in section
    assert "none reported yet" in section
    assert section.count("<svg") == 2 and section.count('<polygon class="a-applied"') == 2
    assert chart_counts(html, rollout_id) == [(0, 0, 4), (0, 0, 6)]
    buttons = re.findall(r'<button type="submit" name="do" value="(\w+)"', section)
    assert buttons == ["pause", "advance", "abort"]
    # Clients report: the counts, the chart and the error rate follow.
    await admin.store.report(canary[0], [applied(V1), applied(V2)])
    await admin.store.report(canary[1], [applied(V1), applied(V2)])
    await admin.store.report(canary[2], [applied(V1), failed(V2, "boom")])
    html = await admin.page("/admin/")
    assert chart_counts(html, rollout_id)[0] == (2, 1, 1)
    section = html.split(f'id="rollout-{rollout_id}"', 1)[1].split("</section>", 1)[0]
    # 1 of 3 failed (33%) > 5%: the rollout paused itself, and the page says why.
    assert "33.3% of 3 that reported" in section and 'class="error-rate bad"' in section
    assert '<span class="rollout-state paused">paused</span>' in section
    assert re.findall(r'name="do" value="(\w+)"', section) == ["resume", "advance", "abort"]


async def test_pause_and_resume_from_the_home_page_are_recorded_with_the_admin(any_admin: Panel) -> None:
    admin = any_admin
    rollout_id, _canary, _rest = await start(admin)
    response = await operate(admin, rollout_id, "pause")
    assert response.status_code == 303
    assert response.headers["location"] == f"/admin/?done=pause#rollout-{rollout_id}"
    assert (await admin.store.rollouts())[0].state.state == r.PAUSED
    html = await admin.page("/admin/?done=pause")
    assert "Rollout paused: recorded with your name in its audit." in html
    response = await operate(admin, rollout_id, "resume", back="rollout")
    assert response.headers["location"] == f"/admin/rollouts/{rollout_id}?done=resume#rollout-{rollout_id}"
    status = await admin.store.rollout_status(rollout_id)
    assert status.rollout.state.state == r.RUNNING
    whats = [(a.who, a.what) for a in status.audit]
    assert (NAME, f"paused (by {NAME})") in whats and (NAME, f"resumed (by {NAME})") in whats
    # The rollout's own page shows the audit, newest first.
    page = await admin.page(f"/admin/rollouts/{rollout_id}")
    audit = page.split('<table class="audit">', 1)[1]
    assert audit.index(f"resumed (by {NAME})") < audit.index(f"paused (by {NAME})") < audit.index("started:")


async def test_advance_and_abort(any_admin: Panel) -> None:
    admin = any_admin
    rollout_id, _canary, rest = await start(admin)
    _, items = await admin.store.pending(rest[0])
    assert [i.version for i in items] == [V1.version]  # not in the canary stage: not offered V2
    assert (await operate(admin, rollout_id, "advance")).status_code == 303
    _, items = await admin.store.pending(rest[0])
    assert [i.version for i in items] == [V1.version, V2.version]
    html = await admin.page("/admin/")
    assert "2 of 2: all" in html
    assert (await operate(admin, rollout_id, "abort")).status_code == 303
    assert (await admin.store.rollouts())[0].state.state == r.ABORTED
    html = await admin.page("/admin/")
    section = html.split(f'id="rollout-{rollout_id}"', 1)[1].split("</section>", 1)[0]
    assert "aborted" in section and "<button" not in section  # nothing left to do on it


async def test_an_operation_the_state_refuses_is_a_409_page_and_changes_nothing(admin: Panel) -> None:
    rollout_id, _canary, _rest = await start(admin)
    response = await operate(admin, rollout_id, "resume")
    assert response.status_code == 409
    assert "was not changed: the rollout is running: there is nothing to resume" in response.text
    assert (await admin.store.rollouts())[0].state.state == r.RUNNING
    response = await operate(admin, rollout_id, "explode")
    assert response.status_code == 400 and "Unknown operation" in response.text
    response = await operate(admin, 999, "pause")
    assert response.status_code == 409 and "no rollout 999" in response.text


async def test_an_operation_needs_a_session_and_its_csrf_token(admin: Panel) -> None:
    rollout_id, _canary, _rest = await start(admin)
    response = await operate(admin, rollout_id, "pause", csrf="not-the-token")
    assert response.status_code == 403
    assert (await admin.store.rollouts())[0].state.state == r.RUNNING
    csrf = form_csrf(await admin.page("/admin/"))
    admin.http.cookies.clear()
    response = await operate(admin, rollout_id, "pause", csrf=csrf)
    assert response.status_code == 303 and response.headers["location"] == "/admin/login"
    assert (await admin.store.rollouts())[0].state.state == r.RUNNING


async def test_a_rollouts_page_shows_stages_counts_and_audit(admin: Panel) -> None:
    rollout_id, canary, _rest = await start(admin, "canary,50%,all")
    await admin.store.report(canary[0], [applied(V1), applied(V2)])
    html = await admin.page(f"/admin/rollouts/{rollout_id}")
    assert f"<h1>Rollout {rollout_id}" in html
    stages = re.findall(r'<tr id="stage-(\d)">(.*?)</tr>', html, re.S)
    assert [n for n, _ in stages] == ["1", "2", "3"]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for _n, row in stages]
    assert cells[0][1:] == ["canary", "clients labelled group=canary", "4", "1", "0", "3", "current"]
    assert cells[1][2] == "clients whose id hashes into 0% to 50%" and cells[1][7] == "waiting"
    assert cells[2][2] == "every client"
    assert "started: 2 in stages canary, 50%, all" in html
    assert (await admin.http.get("/admin/rollouts/77")).status_code == 404
    assert (await admin.http.get("/admin/rollouts/x" + "9" * 30)).status_code == 404


async def test_the_live_part_alone_with_fragment(admin: Panel) -> None:
    """What panel.js fetches: the page's live block, its forms with the session's CSRF token."""
    rollout_id, _canary, _rest = await start(admin)
    page = await admin.page("/admin/")
    assert '<div id="live" data-refresh="5.0">' in page and '<script src="/admin/panel.js" defer>' in page
    part = await admin.page("/admin/?fragment=1")
    assert not part.lstrip().startswith("<!doctype") and "<header>" not in part
    assert f'id="rollout-{rollout_id}"' in part and form_csrf(part) == form_csrf(page)
    rollout_part = await admin.page(f"/admin/rollouts/{rollout_id}?fragment=1")
    assert '<table class="audit">' in rollout_part and "<h1>" not in rollout_part
    script = await admin.http.get("/admin/panel.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "fragment" in script.text
    csp = (await admin.http.get("/admin/")).headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp


async def test_without_a_session_the_rollout_pages_and_fragments_go_to_the_login(panel: Panel) -> None:
    for path in ("/admin/rollouts/1", "/admin/?fragment=1"):
        response = await panel.http.get(path)
        assert response.status_code == 303 and response.headers["location"].startswith("/admin/login?next=")


async def test_the_refresh_interval_is_an_option(tmp_path: Path) -> None:
    async with panel_on(tmp_path, refresh_seconds=0.25) as panel:
        await panel.login()
        assert 'data-refresh="0.25"' in await panel.page("/admin/")
    with pytest.raises(Exception, match="refresh_seconds"):
        async with panel_on(tmp_path / "bad", refresh_seconds=-1):
            pass


async def test_what_a_rollout_names_is_escaped(admin: Panel) -> None:
    await admin.store.add_client("x", {"group": "<b>g</b>"})
    await admin.publish(V1)
    await admin.store.start_rollout([V1.version], parse_stages("all"), Policy(), "<script>x</script>")
    html = await admin.page("/admin/")
    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html


def test_a_chart_stacks_applied_failed_and_pending_over_time() -> None:
    history = [r.Counts(10, 0, 0), r.Counts(10, 5, 1), r.Counts(10, 10, 0)]
    c = rollout_views.chart("all", True, history, history[-1])
    h, w = rollout_views.CHART_H, rollout_views.CHART_W
    assert c.scale == 10 and c.points == 3
    # applied: from 0 to 5 to 10 of 10 (the top edge), over the bottom edge
    assert (
        c.applied
        == f"0.0,{h:.1f} {w / 2:.1f},{h / 2:.1f} {w:.1f},0.0 {w:.1f},{h:.1f} {w / 2:.1f},{h:.1f} 0.0,{h:.1f}"
    )
    assert c.failed.split()[1] == f"{w / 2:.1f},{h * 0.4:.1f}"  # 6 of 10 at the middle time
    assert c.pending.split()[0] == "0.0,0.0"  # all pending at first
    empty = rollout_views.chart("none", False, [], r.Counts())
    assert empty.scale == 0 and empty.points == 2


async def start_form(admin: Panel, csrf: str | None = None, **fields: str) -> httpx.Response:
    """The home page's "Start a rollout" form, posted with ``fields`` over its defaults."""
    token = csrf if csrf is not None else form_csrf(await admin.page("/admin/"))
    return await admin.http.post("/admin/rollouts", data={"csrf": token, **fields})


async def test_a_rollout_is_started_from_the_home_page_with_the_admins_name(any_admin: Panel) -> None:
    admin = any_admin
    canary = (await admin.store.add_client("canary0", {"group": "canary"}))[0]
    other = (await admin.store.add_client("plain0"))[0]
    await admin.publish(V1)
    await admin.publish(V2)  # published to everyone: the rollout holds V2 back from now on
    home = await admin.page("/admin/")
    assert 'action="/admin/rollouts"' in home and 'value="canary,10%,all"' in home
    assert f'<option value="{V2.version}">' in home  # the published versions to choose from
    response = await start_form(
        admin, versions=str(V2.version), stages="canary,all", soak="0", on_failure="revert"
    )
    assert response.status_code == 303, response.text
    [rollout] = await admin.store.rollouts()
    assert response.headers["location"] == f"/admin/rollouts/{rollout.id}?done=start"
    assert rollout.versions == (V2.version,) and [s.name for s in rollout.stages] == ["canary", "all"]
    assert (rollout.created_by, rollout.policy.soak, rollout.policy.on_failure) == (NAME, 0.0, "revert")
    assert (rollout.policy.success_threshold, rollout.policy.error_threshold) == (0.95, 0.05)
    _, offered = await admin.store.pending(other)
    assert [i.version for i in offered] == [V1.version]  # outside the canary stage: held back
    _, offered = await admin.store.pending(canary)
    assert [i.version for i in offered] == [V1.version, V2.version]
    page = await admin.page(f"/admin/rollouts/{rollout.id}?done=start")
    assert "Rollout started: recorded with your name in its audit." in page


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"versions": ""}, "give the versions to roll out"),
        ({"versions": "not-a-version"}, "not-a-version"),
        ({"versions": "99"}, "99"),
        ({"stages": "10%,5%"}, "percentages must grow"),
        ({"error_threshold": "150%"}, "error threshold '150%' must be from 0% to 100%"),
        ({"soak": "soon"}, "duration 'soon'"),
        ({"on_failure": "explode"}, "explode"),
    ],
)
async def test_a_bad_start_form_is_one_message_and_starts_nothing(
    admin: Panel, fields: dict[str, str], says: str
) -> None:
    await admin.publish(V1)
    response = await start_form(admin, **{"versions": str(V1.version), "stages": "canary,all", **fields})
    assert response.status_code == 422, response.text
    text = unescape(response.text)
    assert "No rollout was started:" in text and says in text
    assert await admin.store.rollouts() == []


async def test_starting_a_rollout_needs_a_session_and_its_csrf_token(admin: Panel) -> None:
    await admin.publish(V1)
    response = await start_form(admin, csrf="not-the-token", versions=str(V1.version), stages="all")
    assert response.status_code == 403
    csrf = form_csrf(await admin.page("/admin/"))
    admin.http.cookies.clear()
    response = await start_form(admin, csrf=csrf, versions=str(V1.version), stages="all")
    assert response.status_code == 303 and response.headers["location"] == "/admin/login"
    assert await admin.store.rollouts() == []
