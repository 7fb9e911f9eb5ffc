"""The official anthropic SDK (and LangChain's ChatAnthropic) against the
real gateway binary: POST /v1/messages served by an anthropic upstream (as
it came), by an OpenAI-compatible one after the anthropic tier answers 529
(translated), and by the mock; streams, tool round trips, errors."""

from __future__ import annotations

import base64
import uuid

import anthropic
import pytest

from scripted_tools import AFTER_TOOL, TOOL_INPUT, TOOL_PREAMBLE
from scripted_upstream import ANTHROPIC_KEY

SYSTEM = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["location"],
    },
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


@pytest.fixture()
def claude(gateway) -> anthropic.Anthropic:
    """An SDK client with its default retries (max_retries=2)."""
    c = anthropic.Anthropic(base_url=gateway.url, api_key="unused", timeout=30.0)
    yield c
    c.close()


def rid() -> str:
    return f"pytest-{uuid.uuid4()}"


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    ("model", "tier", "served_by"),
    [
        ("claude-sonnet-4-5", "anthropic", "/v1/messages"),  # passed through
        ("claude-opus-4-8", "tools", "/v1/chat/completions"),  # after a 529, translated
        ("claude-haiku-4-5", "fast", None),  # the mock
    ],
)
def test_create_text_with_system_blocks(claude, upstream, model: str, tier: str, served_by: str | None) -> None:
    request_id = rid()
    raw = claude.messages.with_raw_response.create(
        model=model,
        max_tokens=256,
        system=SYSTEM,
        messages=ask("Plan the deploy."),
        extra_headers={"x-request-id": request_id},
    )
    assert raw.headers["x-cascade-tier"] == tier
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.id.startswith("msg_")
    assert msg.stop_reason == "end_turn"
    text = "".join(b.text for b in msg.content if b.type == "text")
    assert "Plan the deploy." in text
    assert msg.usage.output_tokens > 0
    paths = [r.path.split("?")[0] for r in upstream.find(request_id)]
    if served_by == "/v1/messages":
        assert paths == ["/v1/messages"]
        sent = upstream.find(request_id)[0]
        assert sent.body["system"] == SYSTEM  # cache_control kept: passed through
        assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    elif served_by:
        assert paths == ["/v1/messages", "/v1/chat/completions"]
    else:
        assert paths == []


def test_an_image_passes_through_and_is_translated(claude, upstream) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    content = [image, {"type": "text", "text": "What is this?"}]
    for model in ("claude-sonnet-4-5", "claude-opus-4-8"):
        request_id = rid()
        msg = claude.messages.create(
            model=model,
            max_tokens=64,
            messages=[{"role": "user", "content": content}],
            extra_headers={"x-request-id": request_id},
        )
        assert msg.content[0].type == "text"
        sent = upstream.find(request_id)
        assert sent[0].body["messages"][0]["content"][0] == image
        if model == "claude-opus-4-8":
            part = sent[1].body["messages"][0]["content"][0]
            assert part == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-opus-4-8"])
def test_a_tool_round_trip(claude, model: str) -> None:
    first = claude.messages.create(
        model=model, max_tokens=256, tools=[WEATHER], messages=ask("Weather in Paris?")
    )
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert calls[0].input == TOOL_INPUT
    history = [
        *ask("Weather in Paris?"),
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "15 degrees"}]},
    ]
    second = claude.messages.create(model=model, max_tokens=256, tools=[WEATHER], messages=history)
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == AFTER_TOOL + "15 degrees"


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-opus-4-8", "claude-haiku-4-5"])
def test_stream_text_and_final_message(claude, model: str) -> None:
    with claude.messages.stream(model=model, max_tokens=256, system=SYSTEM, messages=ask("Stream it.")) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert "Stream it." in text
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-opus-4-8"])
def test_stream_tool_use(claude, model: str) -> None:
    with claude.messages.stream(model=model, max_tokens=256, tools=[WEATHER], messages=ask("Weather?")) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "text" and final.content[0].text == TOOL_PREAMBLE
    assert final.content[1].type == "tool_use" and final.content[1].input == TOOL_INPUT


def test_a_stream_that_stalls_before_its_first_token_falls_back(claude, gateway) -> None:
    raw = claude.messages.with_raw_response.create(
        model="stalling", max_tokens=64, messages=ask("Anyone there?"), stream=True
    )
    assert raw.headers["x-cascade-tier"] == "tools"
    events = list(raw.parse())
    assert [e.type for e in events].count("message_start") == 1
    assert events[-1].type == "message_stop"


def test_errors_raise_the_sdk_classes(claude) -> None:
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="claude-nope", max_tokens=10, messages=ask("hi"))
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "?"}]}],
        )
    assert "tool_use_id" in e.value.message


def test_a_gateway_502_is_not_retried_by_the_sdk(claude, upstream) -> None:
    request_id = rid()
    with pytest.raises(anthropic.InternalServerError) as e:
        claude.messages.create(
            model="all-failing", max_tokens=10, messages=ask("hi"), extra_headers={"x-request-id": request_id}
        )
    assert e.value.status_code == 502
    assert e.value.response.headers["x-should-retry"] == "false"
    assert e.value.body["error"]["type"] == "api_error"
    assert e.value.body["error"]["code"] == "all_models_failed"
    # one call to the anthropic tier, none repeated by the SDK's own retries
    assert len(upstream.find(request_id)) == 1


def test_count_tokens_is_a_local_estimate(claude, upstream) -> None:
    before = len(upstream.requests)
    n = claude.messages.count_tokens(model="claude-sonnet-4-5", messages=ask("How many tokens is this?"))
    assert n.input_tokens > 0
    assert len(upstream.requests) == before


def test_models_list_in_anthropic_shape(claude) -> None:
    ids = [m.id for m in claude.models.list()]
    assert "claude-sonnet-4-5" in ids and "anthropic" in ids


def test_langchain_chat_anthropic_invoke_and_stream(gateway) -> None:
    from langchain_anthropic import ChatAnthropic

    for model in ("claude-sonnet-4-5", "claude-opus-4-8"):
        llm = ChatAnthropic(model=model, base_url=gateway.url, api_key="unused", max_tokens=128, timeout=30)
        answer = llm.invoke("Say hello.")
        assert "Say hello." in answer.content
        streamed = "".join(str(c.content) if isinstance(c.content, str) else "" for c in llm.stream("Stream hello."))
        assert "Stream hello." in streamed
