"""Chat Completions served by an ``anthropic`` provider, through the openai
SDK: the translation to Messages and back (text, usage and cache tokens,
tool calls, streams).
"""

from __future__ import annotations

import json

import openai

from scripted_tools import TOOL_INPUT, TOOL_PREAMBLE
from scripted_upstream import ANTHROPIC_KEY, ANTHROPIC_USAGE
from sdk_helpers import MESSAGES, USER_TEXT, request_id


# --------------------------------------------------------------------------
# the Anthropic provider: Messages API upstream, OpenAI for the client
# --------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
        },
    },
}

# Anthropic's input_tokens exclude cache reads and writes; prompt_tokens include them.
ANTHROPIC_PROMPT = (
    ANTHROPIC_USAGE["input_tokens"]
    + ANTHROPIC_USAGE["cache_read_input_tokens"]
    + ANTHROPIC_USAGE["cache_creation_input_tokens"]
)


def test_anthropic_text_and_usage(client: openai.OpenAI, upstream) -> None:
    rid = request_id()
    raw = client.chat.completions.with_raw_response.create(
        model="anthropic", messages=MESSAGES, temperature=0.5, extra_headers={"x-request-id": rid}
    )
    assert raw.headers.get("x-cascade-tier") == "anthropic"
    assert raw.headers.get("x-cascade-provider") == "claude"
    # 20 input at $3, 100 cache reads at $0.30, 10 cache writes at $3.75, 5 output at $15 per Mtok
    assert raw.headers.get("x-cascade-cost-usd") == "0.0002025"
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == f"echo: {USER_TEXT}"
    assert resp.choices[0].message.tool_calls is None
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == ANTHROPIC_PROMPT
    assert resp.usage.completion_tokens == ANTHROPIC_USAGE["output_tokens"]
    assert resp.usage.total_tokens == ANTHROPIC_PROMPT + ANTHROPIC_USAGE["output_tokens"]
    assert resp.usage.prompt_tokens_details.cached_tokens == ANTHROPIC_USAGE["cache_read_input_tokens"]

    seen = upstream.find(rid)
    assert len(seen) == 1
    req = seen[0]
    assert req.path == "/v1/messages"
    assert req.headers.get("x-api-key") == ANTHROPIC_KEY
    assert req.headers.get("anthropic-version") == "2023-06-01"
    assert "authorization" not in req.headers
    assert req.body == {
        "model": "claude-scripted",
        "max_tokens": 4096,
        "temperature": 0.5,
        "system": [{"type": "text", "text": MESSAGES[0]["content"]}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": USER_TEXT}]}],
    }


def test_anthropic_tool_calls_round_trip(client: openai.OpenAI, upstream) -> None:
    resp = client.chat.completions.create(
        model="anthropic", messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == TOOL_PREAMBLE
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].id == "toolu_01A09q90qw90lq917835lq9"
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == TOOL_INPUT

    # the next turn: the call and its result go back as tool_use / tool_result
    rid = request_id()
    follow_up = [
        *MESSAGES,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "15 degrees, sunny"},
    ]
    client.chat.completions.create(
        model="anthropic", messages=follow_up, tools=[WEATHER_TOOL], extra_headers={"x-request-id": rid}
    )
    sent = upstream.find(rid)[0].body
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "The current weather in a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": TOOL_PREAMBLE},
                {"type": "tool_use", "id": calls[0].id, "name": "get_weather", "input": TOOL_INPUT},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "15 degrees, sunny"}],
        },
    ]


def test_anthropic_stream_text_and_usage(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="anthropic", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers.get("x-cascade-tier") == "anthropic"
    assert raw.headers.get("content-type", "").startswith("text/event-stream")
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo: {USER_TEXT}"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == ANTHROPIC_PROMPT
    assert last.usage.completion_tokens == ANTHROPIC_USAGE["output_tokens"]
    assert all(c.usage is None for c in chunks[:-1])


def test_anthropic_stream_without_usage_request(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="anthropic", messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in chunks), "usage reaches the client only when it asked for it"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"echo: {USER_TEXT}"


def test_anthropic_stream_tool_calls(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="anthropic",
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    text: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    finish = None
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                if tc.id:
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    call["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    assert "".join(text) == TOOL_PREAMBLE
    assert list(calls) == [0]
    assert calls[0]["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == TOOL_INPUT
    assert finish == "tool_calls"
    assert usage is not None and usage.prompt_tokens == ANTHROPIC_PROMPT
