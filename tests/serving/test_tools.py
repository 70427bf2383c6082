"""Forced tool calls come back complete and valid against the tool's JSON schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.serving.conftest import Stack

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Berlin", "Beijing"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Forecast", "strict": True, "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "strict": True,
            "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}},
        },
    },
]
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]


def test_forced_tool_call_is_complete_and_schema_valid(stack: Stack) -> None:
    r = stack.client().chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=FORCE_WEATHER, max_tokens=300, temperature=0
    )
    calls = r.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].id
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER)
    assert r.usage and r.usage.completion_tokens < 300  # finished, not cut off


def test_forced_tool_call_streams_the_same_call(stack: Stack) -> None:
    client = stack.client()
    full = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=FORCE_WEATHER, max_tokens=300, temperature=0
    )
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=FORCE_WEATHER, max_tokens=300, temperature=0, stream=True
    )
    name, arguments = "", ""
    for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name += call.function.name or "" if call.function else ""
            arguments += call.function.arguments or "" if call.function else ""
    assert name == "get_weather"
    assert json.loads(arguments) == json.loads(full.choices[0].message.tool_calls[0].function.arguments)  # type: ignore[index]


def test_tool_result_round_trip(stack: Stack) -> None:
    """A tool result fed back in an <|observation|> turn is accepted and answered."""
    client = stack.client()
    call = (
        client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice=FORCE_WEATHER, max_tokens=300, temperature=0
        )
        .choices[0]
        .message
    )
    assert call.tool_calls
    follow_up = [
        *ASK,
        call.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.tool_calls[0].id, "content": '{"forecast": "sunny"}'},
    ]
    r = client.chat.completions.create(model=MODEL, messages=follow_up, tools=TOOLS, max_tokens=5, temperature=0)
    assert r.usage and r.usage.prompt_tokens > 0
