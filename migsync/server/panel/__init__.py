"""The admin panel: the published migrations and the fleet's status in a browser, and the
admin's requests to clients (re-apply, revert), recorded with who asked.

Server-rendered HTML (Jinja2 templates in ``templates/``, one stylesheet in ``static/``), no
JavaScript, no build step. :func:`migsync.server.app.create_app` mounts it at ``/admin``
(``panel=False`` leaves it out). Modules:

- :mod:`.app`: the Starlette app, its routes, the login, the cookies and the request forms;
- :mod:`.sessions`: signed, expiring session values (with the admin's name) and the CSRF
  tokens bound to them;
- :mod:`.views`: what the pages show, from the store's records (cell states, holds, counts).

See docs/panel.md.
"""

from __future__ import annotations

from migsync.server.panel.app import LOGIN_COOKIE, SESSION_COOKIE, PanelOptions, create_panel

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "PanelOptions", "create_panel"]
