"""POST /v1/responses with the official openai SDK against the real binary:
string and item inputs, a function tool round trip, a json_schema format,
streams (``stream=True`` and ``responses.stream``), errors, and the same
through fallback (a first tier answering 500, an anthropic tier stalling
before its first delta) and through an anthropic upstream with tools."""

from __future__ import annotations

import json
import uuid

import openai
import pytest

from scripted_tools import AFTER_TOOL, TOOL_INPUT

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["location"],
    },
}
STREAM_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def rid() -> str:
    return f"pytest-{uuid.uuid4()}"


def test_string_input(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model="fast", input="Plan the deploy.", store=False)
    assert raw.headers["x-cascade-tier"] == "fast"
    assert float(raw.headers["x-cascade-cost-usd"]) > 0
    r = raw.parse()
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert "Plan the deploy." in r.output_text
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens > 0


def test_items_input(client: openai.OpenAI, upstream) -> None:
    request_id = rid()
    r = client.responses.create(
        model="scripted",
        instructions="You are terse.",
        input=[
            {"role": "developer", "content": "Answer in English."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What next?"}]},
        ],
        extra_headers={"x-request-id": request_id},
    )
    assert r.output_text == "echo: What next?" or r.output_text.startswith("echo:")
    sent = upstream.find(request_id)[0].body
    assert sent["messages"][:2] == [
        {"role": "system", "content": "You are terse."},
        {"role": "system", "content": "Answer in English."},
    ]


@pytest.mark.parametrize("model", ["tools", "claude-sonnet-4-5"])
def test_a_function_tool_round_trip(client: openai.OpenAI, model: str) -> None:
    first = client.responses.create(model=model, input="Weather in Paris?", tools=[WEATHER])
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == TOOL_INPUT
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        *[o.model_dump(exclude_none=True) for o in first.output],
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "15 degrees"},
    ]
    second = client.responses.create(model=model, input=history, tools=[WEATHER])
    assert second.output_text == AFTER_TOOL + "15 degrees"


def test_a_json_schema_format_reaches_the_upstream(client: openai.OpenAI, upstream) -> None:
    request_id = rid()
    schema = {"type": "object", "properties": {"step": {"type": "string"}}, "required": ["step"]}
    client.responses.create(
        model="scripted",
        input="Next step?",
        text={"format": {"type": "json_schema", "name": "plan", "schema": schema, "strict": True}},
        extra_headers={"x-request-id": request_id},
    )
    sent = upstream.find(request_id)[0].body
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "plan", "schema": schema, "strict": True}}


@pytest.mark.parametrize("model", ["fast", "failing-first", "stalling"])
def test_stream_events_and_final_text(client: openai.OpenAI, model: str) -> None:
    raw = client.responses.with_raw_response.create(model=model, input="Stream it.", stream=True)
    if model != "fast":
        assert raw.headers["x-cascade-tier"] == "tools"  # fell back before a byte was sent
    events = list(raw.parse())
    types = [e.type for e in events]
    assert [t for t in STREAM_EVENTS if t in types] == STREAM_EVENTS
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text and "Stream it." in text


@pytest.mark.parametrize("model", ["tools", "claude-sonnet-4-5"])
def test_the_stream_helper_with_a_tool_call(client: openai.OpenAI, model: str) -> None:
    with client.responses.stream(model=model, input="Weather?", tools=[WEATHER]) as stream:
        types = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in types
    assert "response.function_call_arguments.done" in types
    call = next(o for o in final.output if o.type == "function_call")
    assert json.loads(call.arguments) == TOOL_INPUT


def test_errors_raise_the_sdk_classes(client: openai.OpenAI, upstream) -> None:
    before = len(upstream.requests)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tools", input="hi", previous_response_id="resp_123")
    assert e.value.code == "unsupported_parameter" and e.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tools", input=[{"type": "item_reference", "id": "msg_1"}])
    assert e.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tools", input=[{"type": "banana"}])
    assert e.value.param == "input[0].type"
    assert len(upstream.requests) == before  # nothing forwarded
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_123")


def test_a_gateway_502_is_not_retried_by_the_sdk(client: openai.OpenAI, upstream) -> None:
    request_id = rid()
    with pytest.raises(openai.InternalServerError) as e:
        client.responses.create(model="all-failing", input="hi", extra_headers={"x-request-id": request_id})
    assert e.value.status_code == 502
    assert e.value.response.headers["x-should-retry"] == "false"
    assert len(upstream.find(request_id)) == 1


def test_langchain_chat_openai_with_the_responses_api(gateway) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="fast", base_url=gateway.base_url, api_key="unused", use_responses_api=True, timeout=30)
    answer = llm.invoke("Say hello.")
    assert "Say hello." in answer.text
    streamed = "".join(c.text for c in llm.stream("Stream hello."))
    assert "Stream hello." in streamed
