"""Shared fixtures: every codec test runs against both event-stream implementations.

The ``eventstream_impl`` fixture is parametrized over the compiled decoder (``c``, marked
``c_extension``) and the pure-Python specification (``py``). The ``c`` param imports
``kiro_fast._eventstream`` directly, never through the selector, so a missing build is a
test error, not a silent fallback. ``--no-c-extensions`` deselects the ``c`` half; CI passes
it exactly when it builds with ``KIRO_FAST_NO_EXTENSIONS=1``.

Fixtures for other areas belong in their own test modules, not here.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import hypothesis
import pytest
from redis_server import redis_server  # noqa: F401 - the shared fixture, for every module

pytest_plugins = ["secret_scan"]

_MODULES = {"c": "kiro_fast._eventstream", "py": "kiro_fast._eventstream_py"}


@dataclass(frozen=True)
class EventStreamImplementation:
    """One implementation of the codec: its tag (``c``/``py``) and its module."""

    name: str
    is_pure_python: bool
    module: ModuleType

    def __str__(self) -> str:
        return self.name


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--c-extensions",
        action="store_true",
        default=True,
        dest="c_extensions",
        help="run the tests against the compiled decoder too (the default)",
    )
    parser.addoption(
        "--no-c-extensions",
        action="store_false",
        dest="c_extensions",
        help="deselect the tests marked c_extension (for KIRO_FAST_NO_EXTENSIONS=1 builds)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("c_extensions"):
        return
    selected = [item for item in items if item.get_closest_marker("c_extension") is None]
    deselected = [item for item in items if item.get_closest_marker("c_extension") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("c", marks=pytest.mark.c_extension, id="c"),
        pytest.param("py", id="py"),
    ],
)
def eventstream_impl(request: pytest.FixtureRequest) -> EventStreamImplementation:
    name: str = request.param
    return EventStreamImplementation(
        name=name,
        is_pure_python=name == "py",
        module=importlib.import_module(_MODULES[name]),
    )


@pytest.fixture(scope="session")
def decoder_cls(eventstream_impl: EventStreamImplementation) -> Any:
    return eventstream_impl.module.EventStreamDecoder


@pytest.fixture(scope="session")
def message_cls(eventstream_impl: EventStreamImplementation) -> Any:
    return eventstream_impl.module.Message


# Hypothesis: no per-example deadline (CI machines are shared and timing varies) and a
# derandomized, database-free run, so CI is deterministic. HYPOTHESIS_PROFILE=dev
# explores new examples on each run.
hypothesis.settings.register_profile("ci", deadline=None, derandomize=True, database=None)
hypothesis.settings.register_profile("dev", deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
