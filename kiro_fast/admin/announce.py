"""Telling a local user where the admin UI is: one printed line, and the browser.

Owns what ``kiro-fast serve`` does for a person at a terminal (the CLI decides when: a
TTY and no ``--no-browser``): print the admin UI's address to stdout once the server
listens, and open it when a display exists. With no admin key and no admin password
configured, :meth:`Announcement.prepare` makes a one-time admin key for this run; the
printed address carries it in its fragment (``#key=…``), which browsers never send to
a server and which the UI moves into its session storage. The key goes to stdout only,
never into a log line.

Never opens a browser under CI (``CI`` set) or without a display.
"""

from __future__ import annotations

import os
import secrets
import sys
import webbrowser
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Final, TextIO

from ..config import Config

#: The variable the one-time key is put into (workers and reloads read it).
ADMIN_KEY_ENV: Final = "KIRO_FAST_ADMIN_API_KEY"
#: Random bytes in a one-time admin key.
KEY_BYTES: Final = 24


def admin_url(host: str, port: int) -> str:
    """The address a local browser reaches the admin UI at (wildcards become loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/admin"


def has_display() -> bool:
    if os.environ.get("CI"):
        return False
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@dataclass(slots=True)
class Announcement:
    """What to print once the server listens."""

    #: the one-time admin key of this run, if one was made
    one_time_key: str | None = None
    open_browser: bool = False
    out: TextIO = sys.stdout
    shown: bool = False

    @classmethod
    def prepare(
        cls, config: Config, environ: MutableMapping[str, str]
    ) -> tuple[Announcement, Config]:
        """The announcement, and ``config`` with the one-time key when one was needed."""
        announcement = cls(open_browser=has_display())
        if not config.admin_api_key and not config.admin_password:
            key = "kf-admin-" + secrets.token_urlsafe(KEY_BYTES)
            environ[ADMIN_KEY_ENV] = key
            announcement.one_time_key = key
            config = config.replace(admin_api_key=key)
        return announcement, config

    def show(self, host: str, port: int) -> None:
        """Print the address (once) and open it if a display exists."""
        if self.shown or not port:
            return
        self.shown = True
        url = admin_url(host, port)
        target = f"{url}#key={self.one_time_key}" if self.one_time_key else url
        if self.one_time_key:
            note = "(a one-time admin key for this run is in the link)"
        else:
            note = "(log in with the admin key or the admin user's password)"
        print(f"kiro-fast admin UI: {target}\n  {note}", file=self.out, flush=True)
        if self.open_browser:
            try:
                webbrowser.open(target, new=2)
            except webbrowser.Error:
                pass
