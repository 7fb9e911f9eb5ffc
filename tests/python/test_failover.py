"""Failover without seams, through the openai SDK: streams that end well
without [DONE], malformed events after commit, timeouts that fall back,
buffered and continued streams.
"""

from __future__ import annotations


import openai

from scripted_upstream import CONTINUATION, CUT_PIECES
from sdk_helpers import MESSAGES, USER_TEXT, metric_value


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
