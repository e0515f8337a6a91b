"""``kiro_fast.testing``: a faithful fake of the Kiro upstream, shipped with the package.

Nothing in kiro_fast's tests, benchmarks or ``kiro-fast demo`` can reach Kiro or AWS,
so this package serves every upstream endpoint on loopback (kiro-api.md §2, §11;
kiro-auth.md Appendix A): the chat event stream, token refresh (social and OIDC), the
Builder ID device flow, usage limits, the model list, profiles and MCP web search.

Use::

    async with FakeUpstream(settings=FakeSettings(seed=1)) as fake:
        account = fake.accounts.add_social("aorRefresh…")   # issues account.access_token
        fake.enqueue(Scenario.tool("get_weather", {"city": "Paris"}))
        ...  # point the proxy at fake.url
        assert fake.accounts.refresh_count == 0
        assert fake.requests[-1].json["conversationState"]["chatTriggerType"] == "MANUAL"

Scripting a chat answer, in order of precedence:

1. ``fake.enqueue(scenario, count=1)`` — the next accepted chat request(s).
2. A directive in the last user message's text (or in one of its tool results)::

       [[fake:{"scenario":"tool","name":"get_weather","input":{"city":"Paris"}}]]
       [[fake:{"scenario":"error","error":"monthly_limit"}]]
       [[fake:{"text":"hi","chunking":true,"headers_delay_ms":50}]]
       [[fake:thinking]]                      (short form: {"scenario":"thinking"})

   A directive is one JSON object: an optional ``"scenario"`` preset (see
   :mod:`kiro_fast.testing.scenarios`), any :class:`Scenario` field, ``name``/``input``/
   ``id`` for one tool call or ``calls`` for several. ``echo`` answers with the user's
   text minus the directive.
3. The mode's default: ``normal`` → a text answer (with a ``<thinking>`` block when the
   request carries ``<thinking_mode>enabled|adaptive</thinking_mode>``); ``fast`` /
   ``paced`` → the canned 50-frame benchmark answer.

Waiting (never sleep in tests): :meth:`FakeUpstream.wait_until`,
``wait_for_requests(n)``, ``wait_for_stalled(n)`` then ``release()``,
``wait_for_disconnects(n)``.

Command line: ``python -m kiro_fast.testing --port 0`` prints ``http://127.0.0.1:PORT``
as its first line and serves until SIGTERM/SIGINT (``--help`` for the flags).
"""

from __future__ import annotations

from .accounts import BUILDER_ID_START_URL, SOCIAL_PROFILE_ARN, Account, Accounts, RefreshFault
from .catalog import KNOWN_MODEL_IDS, MODELS, context_window
from .conversation import IMAGE_TOKENS, PROMPT_OVERHEAD_TOKENS, DirectiveError, prompt_tokens
from .routes import RecordedRequest
from .scenarios import ERRORS, EXCEPTION_MESSAGES, HttpError, McpError, Scenario, ToolCall
from .server import FakeUpstream
from .settings import FakeSettings, Mode
from .usage import Bonus, FreeTrial, Usage
from .validation import Rule, ValidationFailure, ValidationSettings, validate_request

__all__ = [
    "BUILDER_ID_START_URL",
    "ERRORS",
    "EXCEPTION_MESSAGES",
    "IMAGE_TOKENS",
    "KNOWN_MODEL_IDS",
    "MODELS",
    "PROMPT_OVERHEAD_TOKENS",
    "SOCIAL_PROFILE_ARN",
    "Account",
    "Accounts",
    "Bonus",
    "DirectiveError",
    "FakeSettings",
    "FakeUpstream",
    "FreeTrial",
    "HttpError",
    "McpError",
    "Mode",
    "RecordedRequest",
    "RefreshFault",
    "Rule",
    "Scenario",
    "ToolCall",
    "Usage",
    "ValidationFailure",
    "ValidationSettings",
    "context_window",
    "prompt_tokens",
    "validate_request",
]
