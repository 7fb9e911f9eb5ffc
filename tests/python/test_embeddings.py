"""POST /v1/embeddings and model aliases through the openai SDK."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from sdk_helpers import MESSAGES, metric_value


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
