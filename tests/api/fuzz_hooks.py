"""Schemathesis hooks for tests/api/test_openapi_fuzz.py (``SCHEMATHESIS_HOOKS``): values its
generators never make put in place of one value of some JSON bodies and query strings, so
the fuzz covers what the API must refuse at its edge (api.validation)."""

import json
from typing import Any

import schemathesis
from hypothesis import strategies as st

# What JSON, UTF-8 or PostgreSQL cannot carry back or store; json.dumps writes the floats as
# NaN, Infinity and -Infinity and the surrogate as an escape.
HOSTILE_JSON: list[Any] = [float("nan"), float("inf"), float("-inf"), "\ud800", "a\x00b", 2**70]
# A URL carries neither surrogates nor numbers of its own, only text.
HOSTILE_QUERY = ["\x00", "1\x00"]


@schemathesis.serializer("application/json")
def _json_as_python_writes_it(context: schemathesis.SerializationContext, value: Any) -> bytes:
    # The built-in serializer (requests') refuses NaN and Infinity, which are the point here.
    if isinstance(value, bytes):
        return value
    return json.dumps(value, default=str).encode()


@st.composite
def _replace_one(draw: st.DrawFn, value: Any, hostile: list[Any]) -> Any:
    """``value`` with one value anywhere in it (or itself) replaced by one of ``hostile``."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        return {**value, key: draw(_replace_one(value[key], hostile))}
    if isinstance(value, list) and value and draw(st.booleans()):
        index = draw(st.integers(0, len(value) - 1))
        return [*value[:index], draw(_replace_one(value[index], hostile)), *value[index + 1 :]]
    return draw(st.sampled_from(hostile))


def _sometimes_replaced(value: Any, hostile: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(value), _replace_one(value, hostile))


@schemathesis.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    operation = context.operation
    if operation is None or any(b.media_type != "application/json" for b in operation.body):
        return st.just(body)
    return _sometimes_replaced(body, HOSTILE_JSON)


@schemathesis.hook
def flatmap_query(
    context: schemathesis.HookContext, query: dict[str, Any] | None
) -> st.SearchStrategy[Any]:
    if not query:
        return st.just(query)
    return st.one_of(
        st.just(query),
        st.builds(
            lambda key, value: {**query, key: value},
            st.sampled_from(sorted(query)), st.sampled_from(HOSTILE_QUERY),
        ),
    )  # fmt: skip
