/* The migsync admin panel: refresh a page's live part in place, every data-refresh seconds.
   Hand-written, no dependencies. Without JavaScript the page is whole as served: reload it.
   The part is fetched from the same URL with fragment=1 (the server renders only that block,
   its forms with this session's CSRF token) and swapped in, unless the admin is typing in it. */
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch) { return; }
  var seconds = parseFloat(live.getAttribute("data-refresh"));
  if (!(seconds > 0)) { return; }
  function typing() {
    var el = document.activeElement;
    return !!el && live.contains(el) && /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName);
  }
  function schedule() { window.setTimeout(refresh, seconds * 1000); }
  function refresh() {
    if (document.hidden || typing()) { schedule(); return; }
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    url.hash = "";
    fetch(url.toString(), { credentials: "same-origin", redirect: "error" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        if (!typing()) {
          live.innerHTML = html;
          live.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () { /* a session ended or the server is away: try again later */ })
      .then(schedule);
  }
  schedule();
}());
