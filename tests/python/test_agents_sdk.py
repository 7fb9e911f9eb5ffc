"""The OpenAI Agents SDK through the gateway, offline: its default model
class (Responses API) on a client whose base URL is the gateway, an agent
with one function tool; the scripted model calls the tool, the SDK runs it
and sends the result back, the model quotes it. Plain and streamed."""

from __future__ import annotations

import asyncio

import pytest
from agents import Agent, Runner, function_tool, set_default_openai_client, set_tracing_disabled
from openai import AsyncOpenAI

from scripted_tools import AFTER_TOOL

CALLS: list[tuple[str, str]] = []


@function_tool
def get_weather(location: str, unit: str) -> str:
    """The current weather in a city."""
    CALLS.append((location, unit))
    return f"15 degrees {unit} in {location}"


@pytest.fixture()
def agent(gateway) -> Agent:
    set_tracing_disabled(True)
    set_default_openai_client(AsyncOpenAI(base_url=gateway.base_url, api_key="unused", timeout=30), use_for_tracing=False)
    CALLS.clear()
    # "gpt-4.1" is an alias of the tools tier (conftest)
    return Agent(name="weather", instructions="Use the tool.", tools=[get_weather], model="gpt-4.1")


def test_an_agent_runs_its_tool_through_the_gateway(agent: Agent) -> None:
    result = Runner.run_sync(agent, "Weather in Paris?")
    assert CALLS == [("Paris", "celsius")]
    assert result.final_output == AFTER_TOOL + "15 degrees celsius in Paris"


def test_a_streamed_agent_run(agent: Agent) -> None:
    async def run() -> tuple[str, list[str]]:
        streamed = Runner.run_streamed(agent, "Weather in Paris?")
        kinds = [e.type async for e in streamed.stream_events()]
        return streamed.final_output, kinds

    final, kinds = asyncio.run(run())
    assert CALLS == [("Paris", "celsius")]
    assert final == AFTER_TOOL + "15 degrees celsius in Paris"
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
