"""The admin web UI's files: ``GET /admin`` and ``GET /admin/static/<file>``.

What this module owns: serving the three files of ``kiro_fast/admin_ui`` (plain HTML,
CSS and JavaScript — nothing is built at install time) with their content types and
headers. The files are read once, from the installed package, into a fixed map; a
request names a key of that map and nothing else, so no request path ever reaches the
file system (no traversal is possible by construction).

Headers: ``index.html`` is never cached (it names the others with the package version,
so an upgrade is picked up at once); the assets may be cached for a day. Every answer
forbids framing and content sniffing and carries a Content-Security-Policy that allows
only this origin's scripts, styles and API calls (no inline script, no eval).
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from .. import __version__
from ..app import App, path_param
from ..errors import NotFound
from ..protocol import Exchange, Request

#: name → content type; the only files ever served.
FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: name → the package file it is read from (the page is a template: ``{{version}}``).
SOURCES: Final = {"index.html": "index.html.tmpl", "app.js": "app.js", "style.css": "style.css"}
#: The UI's assets may be cached this long (seconds); their links carry the version.
ASSET_MAX_AGE: Final = 86400
SECURITY_HEADERS: Final = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
]


class StaticUI:
    """The UI files, loaded once."""

    def __init__(self) -> None:
        folder = resources.files("kiro_fast").joinpath("admin_ui")
        self.files = {name: folder.joinpath(SOURCES[name]).read_bytes() for name in FILES}
        self.files["index.html"] = self.files["index.html"].replace(
            b"{{version}}", __version__.encode()
        )

    def install(self, app: App) -> None:
        for method in ("GET", "HEAD"):
            app.route(method, "/admin", self.index, auth=False)
            app.route(method, "/admin/", self.index, auth=False)
            app.route(method, "/admin/static/{file}", self.asset, auth=False)

    async def index(self, request: Request, exchange: Exchange) -> None:
        self._send(exchange, "index.html", b"no-store")

    async def asset(self, request: Request, exchange: Exchange) -> None:
        name = path_param("file")
        if name not in FILES or name == "index.html":
            raise NotFound(f"no such file: {name[:100]}")
        self._send(exchange, name, b"public, max-age=%d" % ASSET_MAX_AGE)

    def _send(self, exchange: Exchange, name: str, cache: bytes) -> None:
        headers = [
            (b"content-type", FILES[name].encode()),
            (b"cache-control", cache),
            *SECURITY_HEADERS,
        ]
        exchange.send(200, headers, self.files[name])
