"""The gateway seen through the official ``openai`` Python SDK.

Each test talks to a real gateway process (see conftest.py) exactly as an
application would: ``openai.OpenAI(base_url=<gateway>/v1)``.
"""

from __future__ import annotations

import json
from decimal import Decimal

import openai
import pytest

from scripted_upstream import CUT_PIECES
from sdk_helpers import MESSAGES, PLAIN_DECIMAL, USER_TEXT, metric_value, request_id


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
