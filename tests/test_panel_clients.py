"""The admin panel's clients page in-process through httpx.ASGITransport on a real store (SQLite
and Postgres: its search, filters, sorts and cursors are SQL): pages that follow each other
through their cursors, search by name, sorting by name and last seen, the filters (failing,
stale, held by app version, app version, label), the newest migrations first, and bad queries."""

from __future__ import annotations

import re
import time

import pytest
from test_panel import DAY, V1, V2, Panel, applied, count, failed, shown_clients
from test_panel import any_admin as any_admin

from migsync.core.errors import ConfigError
from migsync.server.client_list import decode_cursor, encode_cursor
from migsync.testing.backend_suite import migration

NEEDS_APP_2 = migration(3, "0003_needs_app", "-- migsync:requires app>=2\nCREATE TABLE t (x INTEGER)")


@pytest.fixture
def admin(any_admin: Panel) -> Panel:
    """The panel, logged in, on a store of each kind: the clients page's SQL runs on both."""
    return any_admin


def next_link(html: str) -> str | None:
    match = re.search(r'<a href="([^"]+)" rel="next">next page</a>', html)
    return match.group(1).replace("&amp;", "&") if match else None


async def test_pages_follow_each_other_through_their_cursors(admin: Panel) -> None:
    await admin.publish(V1)
    ids = [await admin.client(f"c{i:02d}", applied(V1)) for i in range(60)]
    html = await admin.page("/admin/clients?size=25")
    seen = shown_clients(html)
    assert seen == ids[:25] and count(html, "matching") == 60
    assert "25 shown of 60" in html and "first page" not in html
    pages = 1
    while (link := next_link(html)) is not None:
        assert "size=25" in link
        html = await admin.page(link)
        seen += shown_clients(html)
        pages += 1
        assert 'href="/admin/clients?size=25">first page</a>' in html
        # Each page counts every match, not those after its cursor.
        assert ("25 shown of 60" if pages == 2 else "11 shown of 61") in html
        # A client registered meanwhile (its name sorts last) turns up at the end, once.
        if pages == 2:
            ids.append(await admin.client("zz-late"))
    assert pages == 3 and seen == ids  # every client exactly once, in name order
    assert "50" in await admin.page("/admin/clients")  # the default page size holds 50
    assert len(shown_clients(await admin.page("/admin/clients"))) == 50


async def test_search_by_name_is_a_case_insensitive_substring(admin: Panel) -> None:
    paris = await admin.client("shop-Paris")
    lyon = await admin.client("shop-lyon")
    await admin.client("warehouse")
    assert shown_clients(await admin.page("/admin/clients?q=SHOP")) == [lyon, paris]
    assert shown_clients(await admin.page("/admin/clients?q=paris")) == [paris]
    # LIKE's wildcards are plain text in a search.
    assert shown_clients(await admin.page("/admin/clients?q=%25")) == []
    assert shown_clients(await admin.page("/admin/clients?q=shop_")) == []
    html = await admin.page("/admin/clients?q=nothing")
    assert "No client matches." in html and 'value="nothing"' in html


async def test_sorting_by_last_seen_both_ways_and_by_name(admin: Panel) -> None:
    now = time.time()
    a = await admin.client("a")
    b = await admin.client("b")
    c = await admin.client("c")  # never seen
    await admin.store.touch(a, now - 3600)
    await admin.store.touch(b, now - 60)
    assert shown_clients(await admin.page("/admin/clients")) == [a, b, c]
    assert shown_clients(await admin.page("/admin/clients?sort=seen")) == [b, a, c]
    assert shown_clients(await admin.page("/admin/clients?sort=unseen")) == [c, a, b]
    # A cursor holds the sort it was made for; the next page of a sort continues it.
    first = await admin.page("/admin/clients?sort=seen&size=25")
    assert next_link(first) is None
    cursor = encode_cursor("seen", now - 60, b)
    assert shown_clients(await admin.page(f"/admin/clients?sort=seen&after={cursor}")) == [a, c]
    refused = await admin.http.get(f"/admin/clients?sort=name&after={cursor}")
    assert refused.status_code == 400 and "is not one this panel gave out for this sort" in refused.text


async def test_filters_failing_stale_label_and_app_version(admin: Panel) -> None:
    await admin.publish(V1, V2)
    ok = await admin.client("ok", applied(V1), applied(V2))
    bad = await admin.client("bad", applied(V1), failed(V2, "boom"))
    eu, _ = await admin.store.add_client("eu", {"region": "eu", "group": "canary"})
    us, _ = await admin.store.add_client("us", {"region": "us"})
    await admin.store.set_app_version(eu, "2.1")
    await admin.store.set_app_version(us, "1.0")
    await admin.store.touch(ok, time.time())
    await admin.store.touch(bad, time.time())
    await admin.store.touch(us, time.time() - 3 * DAY)
    assert shown_clients(await admin.page("/admin/clients?failing=1")) == [bad]
    assert shown_clients(await admin.page("/admin/clients?label=region%3Deu")) == [eu]
    assert shown_clients(await admin.page("/admin/clients?label=group%3Dcanary")) == [eu]
    assert shown_clients(await admin.page("/admin/clients?label=region%3De")) == []  # the value whole
    assert shown_clients(await admin.page("/admin/clients?app=1.0")) == [us]
    assert shown_clients(await admin.page("/admin/clients?app=-")) == [bad, ok]  # never said
    stale = await admin.page("/admin/clients?stale=1")
    assert shown_clients(stale) == [us] and count(stale, "stale") == 1
    html = await admin.page("/admin/clients")
    # The app-version filter offers the versions clients run.
    assert re.findall(
        r'<option value="([^"]*)"', html.split('name="app"', 1)[1].split("</select>", 1)[0]
    ) == [
        "",
        "1.0",
        "2.1",
        "-",
    ]
    assert "<code>group=canary</code> <code>region=eu</code>" in html
    bad_label = await admin.http.get("/admin/clients?label=nokey")
    assert (
        bad_label.status_code == 400
        and "Label filter: label &#39;nokey&#39; is not key=value" in bad_label.text
    )


async def test_held_by_app_version(admin: Panel) -> None:
    await admin.publish(V1, V2, NEEDS_APP_2)
    old = await admin.client("old-app")
    new = await admin.client("new-app")
    done = await admin.client("done-old", applied(V1), applied(V2), applied(NEEDS_APP_2))
    await admin.store.set_app_version(old, "1.4")
    await admin.store.set_app_version(new, "2.0")
    await admin.store.set_app_version(done, "1.4")  # it applied it before: not held
    none = await admin.client("no-app")  # never said: cannot satisfy app>=2
    html = await admin.page("/admin/clients?held=1")
    assert shown_clients(html) == [none, old] and count(html, "held") == 2
    row = html.split(f'<tr id="client-{old}"', 1)[1].split("</tr>", 1)[0]
    assert '<span class="problem app">3 needs app&gt;=2; its app: 1.4</span>' in row
    page = await admin.page(f"/admin/clients/{old}")
    assert "3 needs app&gt;=2; its app: 1.4" in page.split('id="attention"', 1)[1]


async def test_the_newest_migrations_come_first_and_only_the_three_newest(admin: Panel) -> None:
    versions = [migration(v, f"{v:04d}_m{v}", "SELECT 1") for v in range(1, 6)]
    await admin.publish(*versions)
    client_id = await admin.client("c", *[applied(m) for m in versions[:4]])
    html = await admin.page("/admin/clients")
    heads = re.findall(r'<th scope="col" class="version"><a [^>]*>(\d+)</a>', html)
    assert heads == ["5", "4", "3"]
    row = html.split(f'<tr id="client-{client_id}"', 1)[1].split("</tr>", 1)[0]
    assert re.findall(r'<td class="cell (\w+)"', row) == ["pending", "applied", "applied"]
    assert '<span class="behind">1 pending</span>' in row


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("sort=age", "Unknown sort &#39;age&#39;: use one of name, seen, unseen."),
        ("size=7", "Page size &#39;7&#39;: use one of 25, 50, 100, 200."),
        ("size=-1", "Page size"),
        ("after=garbage", "is not one this panel gave out"),
        ("q=" + "x" * 300, "A search or filter is too long."),
    ],
)
async def test_a_bad_query_is_a_400_page_that_says_what(admin: Panel, query: str, message: str) -> None:
    response = await admin.http.get(f"/admin/clients?{query}")
    assert response.status_code == 400 and message in response.text
    assert "<h1>Bad request</h1>" in response.text


def test_a_cursor_round_trips_and_a_forged_one_is_refused() -> None:
    assert decode_cursor(encode_cursor("name", "shop", 7), "name") == ("shop", 7)
    assert decode_cursor(encode_cursor("seen", 12.5, 3), "seen") == (12.5, 3)
    for forged in ("", "abc", encode_cursor("seen", 1.0, 3) + "x", encode_cursor("name", 1.0, 3)):
        with pytest.raises(ConfigError):
            decode_cursor(forged, "name")


async def test_the_live_part_of_the_clients_page(admin: Panel) -> None:
    await admin.publish(V1)
    client_id = await admin.client("c", failed(V1, "boom"))
    part = await admin.page("/admin/clients?failing=1&fragment=1")
    assert "<header>" not in part and "<form" not in part  # the filters stay put
    assert shown_clients(part) == [client_id] and 'id="count-failing">1<' in part


async def test_the_migrations_pages_counts_from_the_store_are_the_cells_counts(admin: Panel) -> None:
    """The migrations page counts in SQL (and works out the few held clients itself): the same
    numbers as tallying every client's cells, in every state."""
    from test_panel import V2_OTHER, V3, dead, not_applied

    from migsync.protocol.wire import ActionResult
    from migsync.server.panel import views

    await admin.publish(V1, V2_OTHER, V3)
    await admin.client("latest", applied(V1), applied(V2_OTHER), applied(V3))
    await admin.client("drift", applied(V1), applied(V2_OTHER, checksum=V2.checksum))
    await admin.client("failing", applied(V1), failed(V2_OTHER, "boom"))
    await admin.client("dead", applied(V1), dead(V3, "no"))
    await admin.client("new")
    held = await admin.client("held", applied(V1), applied(V2_OTHER), applied(V3))
    [revert] = await admin.store.request_action("revert", 2, [held], "Bob")
    await admin.store.record_answers(held, [ActionResult(revert.id, "done", "reverted")])
    await admin.store.report(held, [not_applied(V2_OTHER), not_applied(V3)])
    published = await admin.store.migrations()
    entries, requests = await admin.store.fleet_view()
    expected = views.migration_rows(views.client_rows(entries, published, requests), published)
    tallies, counted, held_entries, held_requests = await admin.store.migration_tallies()
    assert counted == 5 and [e.client.client_id for e in held_entries] == [held]
    got = views.migration_rows_from(
        published, tallies, counted, views.client_rows(held_entries, published, held_requests)
    )
    assert got == expected
    assert [(r.applied, r.failed, r.dead, r.drift, r.held, r.pending) for r in got] == [
        (5, 0, 0, 0, 0, 1),
        (1, 1, 0, 1, 1, 2),
        (1, 0, 1, 0, 1, 3),
    ]
