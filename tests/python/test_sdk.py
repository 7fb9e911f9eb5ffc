"""The gateway seen through the official ``openai`` Python SDK.

Each test talks to a real gateway process (see conftest.py) exactly as an
application would: ``openai.OpenAI(base_url=<gateway>/v1)``.
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal

import openai
import pytest

from conftest import ANTHROPIC_KEY, ANTHROPIC_USAGE, CONTINUATION, CUT_PIECES, TOOL_INPUT, TOOL_PREAMBLE

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Plan the next step for the deploy."},
]
USER_TEXT = MESSAGES[-1]["content"]
PLAIN_DECIMAL = re.compile(r"^\d+(\.\d{1,9})?$")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` (label order free); 0 if absent."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        found = dict(_LABEL.findall(m.group(2) or ""))
        if found == labels:
            return float(m.group(3))
    return 0.0


def request_id() -> str:
    return f"pytest-{uuid.uuid4()}"


# --------------------------------------------------------------------------
# a. a plain completion
# --------------------------------------------------------------------------


def test_completion_echoes_and_reports_usage(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="plan", messages=MESSAGES)
    assert resp.object == "chat.completion"
    assert len(resp.choices) == 1
    content = resp.choices[0].message.content
    assert content == f"[fast-model] {USER_TEXT}"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


# --------------------------------------------------------------------------
# b. the x-cascade-* headers
# --------------------------------------------------------------------------


def test_cascade_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="plan", messages=MESSAGES)
    h = raw.headers
    assert raw.http_response.status_code == 200
    assert h.get("x-cascade-tier") == "fast"
    assert h.get("x-cascade-model") == "fast-model"
    assert h.get("x-cascade-provider") == "mock"
    assert h.get("x-cascade-attempts") == "1"
    assert h.get("x-cascade-retries") == "0"
    assert h.get("x-cascade-fallback") == "false"
    assert h.get("x-cascade-chain") == "fast"
    assert h.get("x-request-id"), "the gateway must assign a request id"

    cost = h.get("x-cascade-cost-usd")
    assert cost is not None and PLAIN_DECIMAL.match(cost), f"not a plain decimal: {cost!r}"
    assert Decimal(cost) > 0

    # the cost is exact: fast-model costs $1/Mtok in and $2/Mtok out
    completion = raw.parse()
    assert completion.usage is not None
    expected = (
        Decimal(completion.usage.prompt_tokens) * Decimal("1.0")
        + Decimal(completion.usage.completion_tokens) * Decimal("2.0")
    ) / Decimal(1_000_000)
    assert Decimal(cost) == expected

    # the baseline (the priciest model of a one-model chain) is the model itself
    savings = h.get("x-cascade-savings-usd")
    assert savings is not None and PLAIN_DECIMAL.match(savings), f"not a plain decimal: {savings!r}"
    assert Decimal(savings) == 0


def test_client_request_id_is_echoed(client: openai.OpenAI) -> None:
    rid = request_id()
    raw = client.chat.completions.with_raw_response.create(
        model="plan", messages=MESSAGES, extra_headers={"x-request-id": rid}
    )
    assert raw.headers.get("x-request-id") == rid
    assert raw.parse().choices[0].message.content == f"[fast-model] {USER_TEXT}"


def test_fresh_request_ids_differ(client: openai.OpenAI) -> None:
    ids = {
        client.chat.completions.with_raw_response.create(model="plan", messages=MESSAGES).headers.get(
            "x-request-id"
        )
        for _ in range(3)
    }
    assert None not in ids
    assert len(ids) == 3


# --------------------------------------------------------------------------
# c. routing by header
# --------------------------------------------------------------------------


def test_tier_header_wins_over_body_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="anything-not-configured",
        messages=MESSAGES,
        extra_headers={"x-cascade-tier": "fast"},
    )
    assert raw.headers.get("x-cascade-tier") == "fast"
    assert raw.headers.get("x-cascade-model") == "fast-model"
    assert raw.parse().choices[0].message.content == f"[fast-model] {USER_TEXT}"


def test_task_header_wins_over_body_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="dead",  # a tier that always fails: the header must win
        messages=MESSAGES,
        extra_headers={"x-cascade-task": "plan"},
    )
    assert raw.headers.get("x-cascade-tier") == "fast"
    assert raw.parse().choices[0].message.content == f"[fast-model] {USER_TEXT}"


@pytest.mark.parametrize("model", ["tier:fast", "model:fast-model", "fast-model", "task:plan"])
def test_prefixed_and_model_names_route(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    assert raw.headers.get("x-cascade-model") == "fast-model"
    assert raw.parse().choices[0].message.content == f"[fast-model] {USER_TEXT}"


def test_models_list(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    # one entry per task, tier and model name a client may send
    assert {"plan", "fast", "dead", "cutting", "fast-model", "dead-model", "cutter"} <= ids


# --------------------------------------------------------------------------
# d. unknown model
# --------------------------------------------------------------------------


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    err = exc.value
    assert err.status_code == 404
    assert err.code == "model_not_found"
    assert isinstance(err.body, dict) and err.body.get("code") == "model_not_found"
    assert err.response.headers.get("x-should-retry") == "false"
    assert err.response.headers.get("x-request-id")
    assert "x-cascade-tier" not in err.response.headers


# --------------------------------------------------------------------------
# e. everything failed: 502, and the SDK does not retry it
# --------------------------------------------------------------------------


def test_all_models_failed_is_502_and_not_retried(gateway, client: openai.OpenAI) -> None:
    assert client.max_retries == 2, "the point is that the SDK's default retries do not kick in"
    before = gateway.metrics()

    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="dead", messages=MESSAGES)
    err = exc.value
    assert err.status_code == 502
    assert isinstance(err, openai.InternalServerError)
    assert err.code == "all_models_failed"
    assert isinstance(err.body, dict)
    attempts = err.body.get("attempts")
    assert isinstance(attempts, list) and len(attempts) == 1, attempts
    a = attempts[0]
    assert a.get("tier") == "dead"
    assert a.get("model") == "dead-model"
    assert a.get("provider") == "broken"
    assert a.get("status") == 503
    assert err.response.headers.get("x-should-retry") == "false"
    assert "x-cascade-tier" not in err.response.headers

    after = gateway.metrics()
    labels = {"tier": "none", "outcome": "failed"}
    delta = metric_value(after, "cascade_requests_total", **labels) - metric_value(
        before, "cascade_requests_total", **labels
    )
    assert delta == 1, f"the SDK sent the request {delta} times"
    attempt_labels = {"tier": "dead", "model": "dead-model", "outcome": "upstream_error"}
    attempts_delta = metric_value(after, "cascade_attempts_total", **attempt_labels) - metric_value(
        before, "cascade_attempts_total", **attempt_labels
    )
    assert attempts_delta == 1


# --------------------------------------------------------------------------
# f. streaming
# --------------------------------------------------------------------------


def test_stream_reassembles_the_same_text(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="plan", messages=MESSAGES)
    expected = plain.choices[0].message.content

    pieces: list[str] = []
    finish = None
    chunks = 0
    for chunk in client.chat.completions.create(model="plan", messages=MESSAGES, stream=True):
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        assert chunk.usage is None, "usage reaches the client only when it asked for it"
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    assert chunks > 1
    assert "".join(pieces) == expected
    assert finish == "stop"


def test_stream_include_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="plan",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks, "no chunks"
    last = chunks[-1]
    assert last.usage is not None, "the final chunk must carry usage"
    assert last.choices == []
    assert last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"[fast-model] {USER_TEXT}"


def test_stream_raw_response_headers(client: openai.OpenAI) -> None:
    rid = request_id()
    raw = client.chat.completions.with_raw_response.create(
        model="plan", messages=MESSAGES, stream=True, extra_headers={"x-request-id": rid}
    )
    assert raw.headers.get("x-cascade-tier") == "fast"
    assert raw.headers.get("x-cascade-model") == "fast-model"
    assert raw.headers.get("x-cascade-attempts") == "1"
    assert raw.headers.get("x-request-id") == rid
    assert raw.headers.get("content-type", "").startswith("text/event-stream")
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == f"[fast-model] {USER_TEXT}"


def test_stream_wire_format_ends_with_cost_comment_and_done(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="plan", messages=MESSAGES, stream=True
    ) as resp:
        lines = [line for line in resp.iter_lines() if line]
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]", lines[-5:]
    comments = [line for line in lines if line.startswith(": cascade ")]
    assert len(comments) == 1, lines
    # the cost comment comes just before [DONE]
    assert lines.index(comments[0]) == len(lines) - 2, lines[-5:]
    info = json.loads(comments[0][len(": cascade "):])
    assert info["prompt_tokens"] > 0
    assert info["completion_tokens"] > 0
    expected = (Decimal(info["prompt_tokens"]) * 1 + Decimal(info["completion_tokens"]) * 2) / Decimal(
        1_000_000
    )
    assert Decimal(str(info["cost_usd"])) == expected
    assert not any('"error"' in d for d in data)


# --------------------------------------------------------------------------
# g. a stream cut mid-way is an error, not a silently short answer
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tier",
    [
        "cutting",  # upstream's body just ends (clean EOF) without [DONE]
        "cutting-abort",  # upstream's chunked body is broken off
    ],
)
def test_mid_stream_failure_raises(client: openai.OpenAI, tier: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=tier, messages=MESSAGES, stream=True)
    assert raw.http_response.status_code == 200
    assert raw.headers.get("x-cascade-tier") == tier
    received: list[str] = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in raw.parse():
            for choice in chunk.choices:
                if choice.delta.content:
                    received.append(choice.delta.content)
    # what arrived before the cut was forwarded as it came
    assert "".join(received) == "".join(CUT_PIECES)
    err = exc.value
    assert not isinstance(err, openai.APIConnectionError), (
        "the gateway must end the stream with an SSE error event, not a broken connection"
    )
    assert err.message


@pytest.mark.parametrize("tier", ["cutting", "cutting-abort"])
def test_mid_stream_failure_wire_format(client: openai.OpenAI, tier: str) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=tier, messages=MESSAGES, stream=True
    ) as resp:
        lines = [line for line in resp.iter_lines() if line]
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert "[DONE]" not in data, "[DONE] means success"
    last = json.loads(data[-1])
    assert isinstance(last.get("error"), dict), lines[-5:]
    assert last["error"].get("message")


# --------------------------------------------------------------------------
# attempt accounting: one upstream attempt is one cascade_attempts_total count
# --------------------------------------------------------------------------

ATTEMPT_OUTCOMES = ("success", "timeout", "rate_limited", "upstream_error", "connect_error", "client_error")

# A streamed attempt is counted once, when the stream ends (success, or the
# failure that cut it), never also when it starts.


def attempt_deltas(before: str, after: str, tier: str, model: str) -> dict[str, float]:
    return {
        o: metric_value(after, "cascade_attempts_total", tier=tier, model=model, outcome=o)
        - metric_value(before, "cascade_attempts_total", tier=tier, model=model, outcome=o)
        for o in ATTEMPT_OUTCOMES
    }


def upstream_duration_delta(before: str, after: str, tier: str, model: str) -> float:
    name = "cascade_upstream_duration_seconds_count"
    return metric_value(after, name, tier=tier, model=model) - metric_value(before, name, tier=tier, model=model)


def test_attempt_metrics_non_stream(gateway, client: openai.OpenAI) -> None:
    before = gateway.metrics()
    client.chat.completions.create(model="plan", messages=MESSAGES)
    after = gateway.metrics()
    deltas = attempt_deltas(before, after, "fast", "fast-model")
    assert deltas == {**dict.fromkeys(ATTEMPT_OUTCOMES, 0.0), "success": 1.0}
    assert upstream_duration_delta(before, after, "fast", "fast-model") == 1


def test_attempt_metrics_stream_success(gateway, client: openai.OpenAI) -> None:
    # request: POST /v1/chat/completions {"model": "plan", "stream": true}
    # expected: cascade_attempts_total{tier="fast",model="fast-model",outcome="success"} +1
    before = gateway.metrics()
    for _ in client.chat.completions.create(model="plan", messages=MESSAGES, stream=True):
        pass
    after = gateway.metrics()
    deltas = attempt_deltas(before, after, "fast", "fast-model")
    assert deltas == {**dict.fromkeys(ATTEMPT_OUTCOMES, 0.0), "success": 1.0}
    assert upstream_duration_delta(before, after, "fast", "fast-model") == 1


def test_mid_stream_failure_counts_as_failed_attempt(gateway, client: openai.OpenAI) -> None:
    # request: POST /v1/chat/completions {"model": "cutting", "stream": true}, the
    #   upstream sends two content chunks and closes without [DONE]
    # expected: cascade_attempts_total{tier="cutting",model="cutter"}: upstream_error +1, success +0
    before = gateway.metrics()
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="cutting", messages=MESSAGES, stream=True):
            pass
    after = gateway.metrics()
    # the request itself is failed (this part holds)
    failed = metric_value(after, "cascade_requests_total", tier="cutting", outcome="failed") - metric_value(
        before, "cascade_requests_total", tier="cutting", outcome="failed"
    )
    assert failed == 1
    deltas = attempt_deltas(before, after, "cutting", "cutter")
    assert deltas == {**dict.fromkeys(ATTEMPT_OUTCOMES, 0.0), "upstream_error": 1.0}, (
        "one cut stream is one failed attempt, not also a successful one"
    )
    assert upstream_duration_delta(before, after, "cutting", "cutter") == 1


# --------------------------------------------------------------------------
# what reaches the upstream (SPEC 4.1: passed-on fields and headers)
# --------------------------------------------------------------------------


def test_upstream_sees_body_fields_and_only_allowed_headers(client: openai.OpenAI, upstream) -> None:
    rid = request_id()
    resp = client.chat.completions.create(
        model="scripted",
        messages=MESSAGES,
        temperature=0.25,
        extra_body={"custom_field": {"kept": True}},
        extra_headers={
            "x-request-id": rid,
            "x-cascade-session": "sess-1",
            "cookie": "a=b",
        },
    )
    assert resp.choices[0].message.content == f"echo: {USER_TEXT}"
    seen = upstream.find(rid)
    assert len(seen) == 1, seen
    req = seen[0]
    assert req.path == "/v1/chat/completions"
    assert req.body["model"] == "echo-1", "the upstream gets the upstream model name"
    assert req.body["temperature"] == 0.25
    assert req.body["custom_field"] == {"kept": True}
    assert req.body["messages"] == MESSAGES
    assert "authorization" not in req.headers, "the client's key must never be forwarded"
    assert "cookie" not in req.headers
    assert not [k for k in req.headers if k.startswith("x-cascade-")]


def test_upstream_stream_asks_for_usage(client: openai.OpenAI, upstream) -> None:
    rid = request_id()
    chunks = list(
        client.chat.completions.create(
            model="scripted", messages=MESSAGES, stream=True, extra_headers={"x-request-id": rid}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo: {USER_TEXT}"
    # the client did not ask for usage, so none reaches it ...
    assert all(c.usage is None for c in chunks)
    # ... but the gateway asked the upstream for it, to price the stream
    seen = upstream.find(rid)
    assert len(seen) == 1
    assert seen[0].body.get("stream") is True
    assert (seen[0].body.get("stream_options") or {}).get("include_usage") is True


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


# --------------------------------------------------------------------------
# embeddings: /v1/embeddings through the same chains
# --------------------------------------------------------------------------


def test_embeddings_one_and_several_inputs_base64_and_float(client: openai.OpenAI, upstream) -> None:
    # the SDK asks for base64 by default and decodes it
    one = client.embeddings.with_raw_response.create(model="embed", input="hello")
    assert one.headers.get("x-cascade-tier") == "embed"
    assert one.headers.get("x-cascade-model") == "embed-scripted"
    # 5 prompt tokens at $0.02 per million
    assert Decimal(one.headers["x-cascade-cost-usd"]) == Decimal("0.0000001")
    parsed = one.parse()
    assert len(parsed.data) == 1 and len(parsed.data[0].embedding) == 16
    assert parsed.data[0].embedding[1] == pytest.approx(0.5)
    assert parsed.usage.prompt_tokens == 5
    sent = [r for r in upstream.requests if r.path == "/v1/embeddings"][-1]
    assert sent.body["model"] == "embed-ok"
    assert sent.body["encoding_format"] == "base64"

    several = client.embeddings.create(model="embed", input=["a", "b", "c"], encoding_format="float")
    assert [len(d.embedding) for d in several.data] == [16, 16, 16]
    assert several.data[2].embedding[0] == pytest.approx(3.0)


def test_embeddings_fall_back_within_the_space(client: openai.OpenAI) -> None:
    # the first model answers 500: the same space at another provider
    resp = client.embeddings.with_raw_response.create(model="embed-failing", input=["x", "y"])
    assert resp.headers.get("x-cascade-tier") == "embed-backup"
    assert resp.headers.get("x-cascade-fallback") == "true"
    assert resp.headers.get("x-cascade-chain") == "embed-failing,embed-backup"
    data = resp.parse().data
    assert [len(d.embedding) for d in data] == [16, 16]
    # the mock's vectors are unit vectors
    assert sum(v * v for v in data[0].embedding) == pytest.approx(1.0, rel=1e-5)


def test_embeddings_of_the_wrong_length_are_a_failed_attempt(gateway, client: openai.OpenAI) -> None:
    before = gateway.metrics()
    resp = client.embeddings.with_raw_response.create(model="embed-short", input="x", encoding_format="float")
    assert resp.headers.get("x-cascade-tier") == "embed-backup"
    assert len(resp.parse().data[0].embedding) == 16
    labels = {"tier": "embed-short", "model": "embed-short-model", "outcome": "upstream_error"}
    after = gateway.metrics()
    assert metric_value(after, "cascade_attempts_total", **labels) - metric_value(
        before, "cascade_attempts_total", **labels
    ) == 1


def test_chat_and_embeddings_never_cross(client: openai.OpenAI, upstream) -> None:
    count = len(upstream.requests)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="embed", messages=MESSAGES)
    assert exc.value.code == "invalid_request"
    assert exc.value.param == "model"
    assert "/v1/embeddings" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="plan", input="x")
    assert exc.value.param == "model"
    assert "/v1/chat/completions" in exc.value.message
    # a chain that would mix vector spaces
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="embed", input="x", extra_headers={"x-cascade-chain": "embed,fast"})
    assert exc.value.param == "model"
    assert len(upstream.requests) == count, "nothing may go upstream"


# --------------------------------------------------------------------------
# aliases: the model strings clients are built with
# --------------------------------------------------------------------------


def test_aliases_route_chat_and_embeddings_and_are_listed(client: openai.OpenAI) -> None:
    chat = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert chat.headers.get("x-cascade-tier") == "fast"  # task plan -> tier fast
    emb = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="x")
    assert emb.headers.get("x-cascade-tier") == "embed"
    listed = {m.id: m for m in client.models.list()}
    assert "gpt-4o-mini" in listed and "text-embedding-3-small" in listed
    # the alias is the exact string: another case is unknown
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="GPT-4o-mini", messages=MESSAGES)


# --------------------------------------------------------------------------
# failover without seams
# --------------------------------------------------------------------------


def _stream_text(client: openai.OpenAI, model: str) -> str:
    stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    return "".join((c.choices[0].delta.content or "") for c in stream if c.choices)


def test_streams_without_done_are_complete_successes(gateway, client: openai.OpenAI) -> None:
    before = gateway.metrics()
    for _ in range(5):
        assert _stream_text(client, "no-done") == f"echo: {USER_TEXT}"
    after = gateway.metrics()
    labels = {"tier": "no-done", "model": "no-done-model", "outcome": "success"}
    assert metric_value(after, "cascade_attempts_total", **labels) - metric_value(
        before, "cascade_attempts_total", **labels
    ) == 5


def test_a_malformed_event_after_commit_is_dropped(gateway, client: openai.OpenAI) -> None:
    before = gateway.metrics()
    assert _stream_text(client, "malformed") == f"echo: {USER_TEXT}"
    after = gateway.metrics()
    labels = {"tier": "malformed", "model": "malformed-model"}
    assert metric_value(after, "cascade_stream_events_dropped_total", **labels) - metric_value(
        before, "cascade_stream_events_dropped_total", **labels
    ) == 1


def test_a_silent_primary_is_left_after_one_timeout(client: openai.OpenAI) -> None:
    once = client.chat.completions.with_raw_response.create(model="silent", messages=MESSAGES)
    assert once.headers["x-cascade-tier"] == "fast"
    assert once.headers["x-cascade-attempts"] == "2"  # one timeout, then the fallback
    thrice = client.chat.completions.with_raw_response.create(model="silent-retrying", messages=MESSAGES)
    assert thrice.headers["x-cascade-tier"] == "fast"
    assert thrice.headers["x-cascade-attempts"] == "4"  # three timeouts, then the fallback


def test_a_buffered_stream_that_is_cut_falls_back_unseen(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="buffered", messages=MESSAGES, stream=True)
    assert raw.headers["x-cascade-tier"] == "fast"
    text = "".join((c.choices[0].delta.content or "") for c in raw.parse() if c.choices)
    # nothing of the cut attempt ("Hello ", "world") reached the client
    assert CUT_PIECES[0].strip() not in text, text
    assert text == f"[fast-model] {USER_TEXT}", text


def test_a_cut_stream_is_continued_in_the_same_stream(client: openai.OpenAI, upstream) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="continued", messages=MESSAGES, stream=True, extra_headers={"x-request-id": "continue-1"}
    )
    assert raw.headers["x-cascade-tier"] == "continued"
    chunks = [c for c in raw.parse() if c.choices]
    text = "".join((c.choices[0].delta.content or "") for c in chunks)
    # what the first attempt sent, then the continuation, one stream, no error
    assert text == "".join(CUT_PIECES) + CONTINUATION, text
    assert {c.model for c in chunks} == {"cut-stream"}
    # the continuing model was given the partial answer to continue
    asked = [r for r in upstream.find("continue-1") if r.body.get("model") == "continues"]
    assert asked[0].body["messages"][-1] == {"role": "assistant", "content": "".join(CUT_PIECES)}
