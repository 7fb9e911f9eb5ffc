"""OpenTelemetry traces against a real OTLP/HTTP receiver: a request with a
client ``traceparent`` that falls back twice is one trace (the request span
under the client's span, three attempt spans under it, in order), with the
GenAI attributes and no message text; each upstream attempt carried its own
``traceparent`` of that trace. The receiver decodes with the
``opentelemetry-proto`` package."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from conftest import spawn_gateway

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SECRET = "the secret words of the prompt"


class Receiver:
    def __init__(self) -> None:
        self.spans: list = []
        self.posts = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                with receiver.lock:
                    receiver.posts += 1
                    for rs in req.resource_spans:
                        service = {a.key: a.value.string_value for a in rs.resource.attributes}
                        for ss in rs.scope_spans:
                            for s in ss.spans:
                                receiver.spans.append((service, s))
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, n: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.spans) >= n:
                    return list(self.spans)
            if time.monotonic() > deadline:
                pytest.fail(f"the receiver got {len(self.spans)} spans, not {n}")
            time.sleep(0.05)  # bounded polling for the batch


def _config(upstream_port: int, endpoint: str, sample_ratio: float = 1.0) -> str:
    return f"""
[ledger]
path = ""
[circuit_breaker]
failure_threshold = 0
[telemetry]
otlp_endpoint = "{endpoint}"
sample_ratio = {sample_ratio}
[providers.scripted]
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
auth = "none"
[models.broken-a]
provider = "scripted"
model = "always-500"
[models.broken-b]
provider = "scripted"
model = "always-500"
[models.good]
provider = "scripted"
model = "traced-ok"
[tiers.first]
models = ["broken-a"]
max_retries = 0
fallback = ["second", "third"]
[tiers.second]
models = ["broken-b"]
max_retries = 0
[tiers.third]
models = ["good"]
[tasks.plan]
tier = "first"
"""


def _ask(url: str, headers: dict[str, str], model: str = "plan") -> tuple[int, dict[str, str], dict]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": SECRET}]}).encode()
    req = urllib.request.Request(
        url + "/v1/chat/completions", data=body, headers={"content-type": "application/json", **headers}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, dict(r.headers), json.loads(r.read())


def _attrs(span) -> dict:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def test_a_request_that_falls_back_twice_is_one_trace(upstream, tmp_path) -> None:
    receiver = Receiver()
    with spawn_gateway(tmp_path, _config(upstream.port, receiver.url), {"OTEL_SERVICE_NAME": "cascade-test"}) as url:
        status, headers, _ = _ask(url, {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "x-request-id": "trace-me-1"})
        assert status == 200 and headers["x-cascade-attempts"] == "3"
        spans = receiver.wait_for(4)
    assert len(spans) == 4, spans
    service = spans[0][0]
    assert service["service.name"] == "cascade-test"
    spans = [s for _, s in spans]
    assert {s.trace_id.hex() for s in spans} == {CLIENT_TRACE}
    (request,) = [s for s in spans if s.parent_span_id.hex() == CLIENT_SPAN]
    assert request.kind == request.SPAN_KIND_SERVER
    attempts = sorted((s for s in spans if s is not request), key=lambda s: s.start_time_unix_nano)
    assert all(s.parent_span_id == request.span_id for s in attempts)
    assert all(s.kind == s.SPAN_KIND_CLIENT for s in attempts)
    a = [_attrs(s) for s in attempts]
    assert [x["cascade.attempt"] for x in a] == [1, 2, 3]
    assert [x["cascade.tier"] for x in a] == ["first", "second", "third"]
    assert [x["cascade.attempt.reason"] for x in a] == ["first", "fallback", "fallback"]
    assert [x["cascade.outcome"] for x in a] == ["upstream_error", "upstream_error", "success"]
    assert a[0]["error.type"] == "upstream_error" and a[0]["http.response.status_code"] == 500
    # an OpenAI-compatible server that is not OpenAI: the provider's own name
    assert all(x["gen_ai.operation.name"] == "chat" and x["gen_ai.provider.name"] == "scripted" for x in a)
    assert [x["gen_ai.request.model"] for x in a] == ["always-500", "always-500", "traced-ok"]
    assert a[2]["gen_ai.response.model"] == "traced-ok" and a[2]["server.address"] == "127.0.0.1"
    r = _attrs(request)
    assert r["gen_ai.operation.name"] == "chat" and r["gen_ai.request.model"] == "plan"
    assert r["gen_ai.response.model"] == "traced-ok" and r["gen_ai.provider.name"] == "scripted"
    assert r["gen_ai.usage.input_tokens"] > 0 and r["gen_ai.usage.output_tokens"] > 0
    assert r["cascade.request_id"] == "trace-me-1" and r["cascade.tier"] == "third"
    assert r["cascade.attempts"] == 3 and r["http.response.status_code"] == 200
    assert attempts[0].start_time_unix_nano >= request.start_time_unix_nano
    assert attempts[2].end_time_unix_nano <= request.end_time_unix_nano
    # no message text anywhere in the spans
    assert all(SECRET not in str(_attrs(s)) for s in spans)
    # each attempt sent its own traceparent upstream: the same trace, its span
    sent = [r.headers["traceparent"] for r in upstream.find("trace-me-1")]
    assert len(sent) == 3
    assert [tp.split("-")[1] for tp in sent] == [CLIENT_TRACE] * 3
    assert [tp.split("-")[2] for tp in sent] == [s.span_id.hex() for s in attempts]


def test_a_dead_collector_changes_nothing_for_requests(upstream, tmp_path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with spawn_gateway(tmp_path, _config(upstream.port, dead)) as url:
        for i in range(5):
            status, headers, body = _ask(url, {"x-request-id": f"dead-collector-{i}"})
            assert status == 200 and body["choices"][0]["message"]["content"]
        # the spans that could not go are counted
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                text = r.read().decode()
            dropped = [float(line.split()[1]) for line in text.splitlines() if line.startswith("cascade_spans_dropped_total ")]
            if dropped and dropped[0] >= 20:
                break
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.1)  # bounded polling: the export task batches for 0.5 s


def test_sampling_and_propagation(upstream, gateway, tmp_path) -> None:
    # telemetry off (the session's gateway): the client's traceparent passes through
    client_tp = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    _ask(gateway.url, {"traceparent": client_tp, "x-request-id": "untraced-1"}, model="scripted")
    (sent,) = upstream.find("untraced-1")
    assert sent.headers["traceparent"] == client_tp
    # sample_ratio 0: a new trace is not kept, yet the upstream gets its own
    # traceparent (not sampled); a client's sampled trace is kept all the same
    receiver = Receiver()
    with spawn_gateway(tmp_path, _config(upstream.port, receiver.url, sample_ratio=0.0)) as url:
        _ask(url, {"x-request-id": "unsampled-1"})
        _ask(url, {"traceparent": client_tp, "x-request-id": "sampled-1"})
        spans = receiver.wait_for(4)
    unsampled = [r.headers["traceparent"] for r in upstream.find("unsampled-1")]
    assert len(unsampled) == 3 and all(tp.endswith("-00") for tp in unsampled)
    assert unsampled[0].split("-")[1] != CLIENT_TRACE
    # batches go in order: had the first request been exported, it would be here
    assert {s.trace_id.hex() for _, s in spans} == {CLIENT_TRACE}
    assert {_attrs(s).get("cascade.request_id") for _, s in spans} >= {"sampled-1"}


def test_capture_content_is_opt_in(upstream, tmp_path) -> None:
    receiver = Receiver()
    config = _config(upstream.port, receiver.url).replace(
        "sample_ratio = 1.0", "sample_ratio = 1.0\ncapture_content = true"
    )
    with spawn_gateway(tmp_path, config) as url:
        _, _, body = _ask(url, {"x-request-id": "captured-1"})
        spans = receiver.wait_for(4)
    (request,) = [s for _, s in spans if _attrs(s).get("cascade.request_id") == "captured-1"]
    a = _attrs(request)
    assert SECRET in a["gen_ai.input.messages"]
    assert body["choices"][0]["message"]["content"] in a["gen_ai.output.messages"]
