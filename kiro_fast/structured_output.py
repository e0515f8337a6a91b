"""Structured output (``output_config.format`` JSON schema): checking the model's answer.

The upstream has no structured-output mode, so :mod:`kiro_fast.convert` instructs the
model to answer with JSON matching the schema. This module checks what came back and
owns what is honest to do with it:

* Non-streaming answers (:class:`StructuredMessageSink`): the text is taken whole; a
  Markdown code fence around the JSON (```json … ```, the commonest deviation) is
  removed from the message, then the JSON is parsed and validated against the schema.
  A mismatch is logged and counted; the answer is delivered anyway (inventing a
  "valid" answer would be worse than a visible one), and never turned into an error.
* Streaming answers (:class:`StructuredSSESink`, :class:`StructuredBufferedSSESink`):
  text deltas reach the client as they arrive, so nothing can be rewritten; the text is
  collected and checked at the end, for the log and the counters only.

The validator covers the JSON Schema subset structured-output schemas use (what
Anthropic's own structured outputs accept): ``type`` (one or a list), ``enum``,
``const``, ``properties``, ``required``, ``additionalProperties`` (boolean or schema),
``items``, ``prefixItems``, ``minItems``/``maxItems``, ``minLength``/``maxLength``,
``pattern``, ``minimum``/``maximum`` and their exclusive forms, ``anyOf``/``oneOf``/
``allOf``, and local ``$ref`` (``#/$defs/…``, ``#/definitions/…``). Unknown keywords
(``format``, descriptions) are ignored, never a failure: a validator stricter than the
schema's author would report false mismatches. Written here rather than adding the
``jsonschema`` dependency (and its four transitive ones) for one check off the hot path.

Counter (exported as a metric): :data:`STRUCTURED_OUTPUT` — ``valid``, ``unfenced``
(a fence was removed), ``invalid_json``, ``schema_mismatch``.

Must not know HTTP or the upstream; it sees sink calls and the client's request.
"""

from __future__ import annotations

import logging
import operator
import re
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson

from . import metrics
from .anthropic_sse import AnthropicMessageSink, AnthropicSSESink, BufferedSSESink
from .stream import Usage

log = logging.getLogger("kiro_fast.structured_output")

STRUCTURED_OUTPUT: Counter[str] = metrics.CountedMap(metrics.STRUCTURED_OUTPUT)

VALID: Final = "valid"
UNFENCED: Final = "unfenced"
INVALID_JSON: Final = "invalid_json"
SCHEMA_MISMATCH: Final = "schema_mismatch"

#: Schemas nest a few levels; deeper recursion (or a $ref cycle) stops the check.
MAX_DEPTH: Final = 64
#: A fence around the whole answer: ```json\n...\n``` (language tag optional).
_FENCE = re.compile(r"\A\s*```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```\s*\Z", re.DOTALL)

_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
    "number": (int, float),
    "integer": (int,),
}


def requested_schema(request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema the client asked the answer to follow, if any."""
    config = request.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is None:
        fmt = request.get("output_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = fmt.get("schema")
    return schema if isinstance(schema, dict) else {}


def strip_fence(text: str) -> str:
    """``text`` without a Markdown code fence around all of it."""
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text.strip()


def check(text: str, schema: dict[str, Any]) -> tuple[str, str, str | None]:
    """(outcome, the text to deliver, problem): outcome is one of the counter keys."""
    cleaned = strip_fence(text)
    fenced = cleaned != text.strip()
    try:
        value = orjson.loads(cleaned)
    except orjson.JSONDecodeError as exc:
        return INVALID_JSON, text, f"not JSON: {exc}"
    problem = validate(value, schema)
    if problem is not None:
        return SCHEMA_MISMATCH, cleaned, problem
    return (UNFENCED if fenced else VALID), cleaned, None


def validate(value: Any, schema: Any) -> str | None:
    """The first way ``value`` breaks ``schema`` (as a ``$.path: reason``), or None."""
    return _Validator(schema).check(value, schema, "$", 0)


class _Validator:
    __slots__ = ("root",)

    def __init__(self, root: Any) -> None:
        self.root = root

    def check(self, value: Any, schema: Any, path: str, depth: int) -> str | None:
        if not isinstance(schema, dict) or depth > MAX_DEPTH:
            return None  # true / {} / unreadable: anything goes
        ref = schema.get("$ref")
        if isinstance(ref, str):
            problem = self.check(value, self._resolve(ref), path, depth + 1)
            if problem:
                return problem
        for check in (self._type, self._choices, self._combinators):
            problem = check(value, schema, path, depth)
            if problem:
                return problem
        if isinstance(value, dict):
            return self._object(value, schema, path, depth)
        if isinstance(value, list):
            return self._array(value, schema, path, depth)
        if isinstance(value, str):
            return _string(value, schema, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _number(value, schema, path)
        return None

    def _resolve(self, ref: str) -> Any:
        node = self.root
        if not ref.startswith("#"):
            return {}
        for part in ref[1:].split("/"):
            if not part:
                continue
            key = part.replace("~1", "/").replace("~0", "~")
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}

    @staticmethod
    def _type(value: Any, schema: dict[str, Any], path: str, depth: int) -> str | None:
        wanted = schema.get("type")
        if wanted is None:
            return None
        names = wanted if isinstance(wanted, list) else [wanted]
        if any(_is_type(value, name) for name in names if isinstance(name, str)):
            return None
        return f"{path}: expected {' or '.join(map(str, names))}, got {_type_name(value)}"

    @staticmethod
    def _choices(value: Any, schema: dict[str, Any], path: str, depth: int) -> str | None:
        if "const" in schema and not _equal(value, schema["const"]):
            return f"{path}: must be {schema['const']!r}"
        options = schema.get("enum")
        if isinstance(options, list) and not any(_equal(value, o) for o in options):
            return f"{path}: must be one of {options!r}"
        return None

    def _combinators(self, value: Any, schema: dict[str, Any], path: str, depth: int) -> str | None:
        for sub in _list(schema.get("allOf")):
            problem = self.check(value, sub, path, depth + 1)
            if problem:
                return problem
        for key in ("anyOf", "oneOf"):
            options = _list(schema.get(key))
            if options and all(self.check(value, s, path, depth + 1) for s in options):
                return f"{path}: matches none of the {key} schemas"
        return None

    def _object(
        self, value: dict[str, Any], schema: dict[str, Any], path: str, depth: int
    ) -> str | None:
        for name in _list(schema.get("required")):
            if isinstance(name, str) and name not in value:
                return f"{path}: missing required property {name!r}"
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            where = f"{path}.{name}"
            if name in properties:
                problem = self.check(item, properties[name], where, depth + 1)
            elif extra is False:
                problem = f"{path}: unexpected property {name!r}"
            else:
                problem = self.check(item, extra, where, depth + 1)
            if problem:
                return problem
        return None

    def _array(self, value: list[Any], schema: dict[str, Any], path: str, depth: int) -> str | None:
        low, high = schema.get("minItems"), schema.get("maxItems")
        if isinstance(low, int) and len(value) < low:
            return f"{path}: fewer than {low} items"
        if isinstance(high, int) and len(value) > high:
            return f"{path}: more than {high} items"
        prefix = _list(schema.get("prefixItems"))
        items = schema.get("items")
        for index, item in enumerate(value):
            sub = prefix[index] if index < len(prefix) else items
            problem = self.check(item, sub, f"{path}[{index}]", depth + 1)
            if problem:
                return problem
        return None


def _string(value: str, schema: dict[str, Any], path: str) -> str | None:
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(value) < low:
        return f"{path}: shorter than {low} characters"
    if isinstance(high, int) and len(value) > high:
        return f"{path}: longer than {high} characters"
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            if re.search(pattern, value) is None:
                return f"{path}: does not match {pattern!r}"
        except re.error:
            return None  # an ECMA-only pattern Python cannot read: not the answer's fault
    return None


def _number(value: float, schema: dict[str, Any], path: str) -> str | None:
    for key, sign in (
        ("minimum", ">="),
        ("maximum", "<="),
        ("exclusiveMinimum", ">"),
        ("exclusiveMaximum", "<"),
    ):
        bound = schema.get(key)
        if isinstance(bound, int | float) and not isinstance(bound, bool):
            if not _COMPARE[sign](value, bound):
                return f"{path}: must be {sign} {bound}"
    return None


_COMPARE: Final = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return name == "boolean"
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    kinds = _TYPES.get(name)
    return kinds is not None and isinstance(value, kinds)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    for name in ("null", "object", "array", "string", "integer", "number"):
        if _is_type(value, name):
            return name
    return type(value).__name__


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _record(outcome: str, problem: str | None, request_id: str) -> None:
    STRUCTURED_OUTPUT[outcome] += 1
    if problem is not None:
        log.warning("request %s: structured output %s: %s", request_id or "-", outcome, problem)


# --------------------------------------------------------------------------- sinks


class StructuredMessageSink(AnthropicMessageSink):
    """Non-streaming: unfence, check and count the answer's text (one text block)."""

    __slots__ = ("_schema", "_request_id")

    def __init__(
        self,
        model: str,
        message_id: str,
        *,
        input_estimate: int,
        schema: dict[str, Any],
        request_id: str = "",
    ) -> None:
        super().__init__(model, message_id, input_estimate=input_estimate)
        self._schema = schema
        self._request_id = request_id

    def finish(self, stop_reason: str, usage: Usage) -> None:
        super().finish(stop_reason, usage)
        texts = [block for block in self._content if block["type"] == "text"]
        if not texts or stop_reason != "end_turn":
            return  # a cut or tool-calling answer is not the final JSON
        whole = "".join(block["text"] for block in texts)
        outcome, cleaned, problem = check(whole, self._schema)
        _record(outcome, problem, self._request_id)
        if outcome != INVALID_JSON and len(texts) == 1:
            texts[0]["text"] = cleaned


if TYPE_CHECKING:  # the mixin's super() calls land on an SSE sink
    _SSEBase = AnthropicSSESink
else:
    _SSEBase = object


class _CheckedAtEnd(_SSEBase):
    """Streamed text has left already: it is checked once the answer ends, and counted.

    No ``__slots__`` here (mypy would then refuse the assignments below); the concrete
    sinks declare the three slots, so the attributes still live in slots."""

    _schema: dict[str, Any]
    _request_id: str
    _texts: list[str]

    def __init__(
        self,
        model: str,
        message_id: str,
        *,
        input_estimate: int,
        schema: dict[str, Any],
        request_id: str = "",
    ) -> None:
        super().__init__(model, message_id, input_estimate=input_estimate)
        self._schema = schema
        self._request_id = request_id
        self._texts = []

    def text(self, index: int, text: str) -> None:
        self._texts.append(text)
        super().text(index, text)

    def finish(self, stop_reason: str, usage: Usage) -> None:
        if stop_reason == "end_turn" and self._texts:
            outcome, _, problem = check("".join(self._texts), self._schema)
            _record(outcome, problem, self._request_id)
        super().finish(stop_reason, usage)


class StructuredSSESink(_CheckedAtEnd, AnthropicSSESink):
    """Streaming with a schema."""

    __slots__ = ("_schema", "_request_id", "_texts")


class StructuredBufferedSSESink(_CheckedAtEnd, BufferedSSESink):
    """``/cc/v1/messages`` with a schema: checked and counted like streaming answers."""

    __slots__ = ("_schema", "_request_id", "_texts")
