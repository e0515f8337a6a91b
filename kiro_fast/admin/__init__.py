"""The admin surface: the ``/api/admin/`` API, the ``/admin`` web UI, sign-in flows.

Modules: :mod:`.api` (routes and shapes), :mod:`.auth` (admin key, passwords, login
tokens, login rate limit), :mod:`.credential_ops` (add, import, delete, views),
:mod:`.login_flows` (AWS device sign-in), :mod:`.static` (the UI files),
:mod:`.announce` (the address printed at an interactive start).

:func:`install` is what the runtime calls; nothing below the application layer imports
this package.
"""

from __future__ import annotations

from .api import AdminAPI, AdminContext, install

__all__ = ["AdminAPI", "AdminContext", "install"]
