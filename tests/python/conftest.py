"""Fixtures for the OpenAI-SDK client tests.

A session starts:

* a scripted upstream (``ScriptedUpstream``), a ``ThreadingHTTPServer`` on
  127.0.0.1:0 speaking the OpenAI Chat Completions API
  (``/v1/chat/completions``, behaviour chosen by the request body's
  ``model``) and Anthropic's Messages API (``/v1/messages``: an echo of the
  last user text, or a tool call when the request has tools; streaming and
  not);
* the gateway binary (``$CASCADE_BIN``, default ``target/debug/cascade``
  relative to the repository root) with a config written from
  ``GATEWAY_CONFIG`` into a temporary directory, listening on a free port
  given through ``CASCADE__SERVER__LISTEN``.

The gateway's stdout/stderr go to ``gateway.log`` in that temporary
directory; a failing test gets the log's tail appended to its report.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 20.0

# Loopback traffic must never go through a proxy from the environment, for
# the SDK (httpx), urllib or the gateway (reqwest) alike.
for _var in ("NO_PROXY", "no_proxy"):
    _hosts = [h for h in os.environ.get(_var, "").split(",") if h]
    for _h in ("127.0.0.1", "localhost"):
        if _h not in _hosts:
            _hosts.append(_h)
    os.environ[_var] = ",".join(_hosts)


# The gateway config. Only keys from SPEC.md section 2: unknown keys are a
# startup error. {upstream_port} is the scripted upstream's runtime port.
GATEWAY_CONFIG = """\
[server]
request_timeout_ms = 20000

[ledger]
path = ""

[policy]
backoff_base_ms = 10
backoff_max_ms = 50

[circuit_breaker]
failure_threshold = 0

[providers.mock]
kind = "mock"

[providers.broken]
kind = "mock"
fail_rate = 1.0
fail_status = 503

[providers.scripted]
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
auth = "none"

[providers.claude]
kind = "anthropic"
base_url = "http://127.0.0.1:{upstream_port}"
api_key_env = "SCRIPTED_ANTHROPIC_KEY"

[models.claude]
provider = "claude"
model = "claude-scripted"
input_usd_per_mtok = 3.0
output_usd_per_mtok = 15.0
cache_read_usd_per_mtok = 0.30
cache_write_usd_per_mtok = 3.75

[models.fast-model]
provider = "mock"
model = "mock-1"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[models.dead-model]
provider = "broken"
model = "dead"

[models.cutter]
provider = "scripted"
model = "cut-stream"

[models.cutter-abort]
provider = "scripted"
model = "cut-stream-abort"

[models.echo]
provider = "scripted"
model = "echo-1"

[tiers.fast]
models = ["fast-model"]

[tiers.dead]
models = ["dead-model"]
max_retries = 0

[tiers.cutting]
models = ["cutter"]
max_retries = 0

[tiers.cutting-abort]
models = ["cutter-abort"]
max_retries = 0

[tiers.scripted]
models = ["echo"]
max_retries = 0

[tiers.anthropic]
models = ["claude"]
max_retries = 0

[tasks.plan]
tier = "fast"

# embeddings: one space at two providers (the scripted upstream, then the
# mock); a model that always fails (500) and one that answers short vectors
[models.embed-scripted]
provider = "scripted"
model = "embed-ok"
kind = "embedding"
dimensions = 16
embedding_space = "te-16"
input_usd_per_mtok = 0.02

[models.embed-500]
provider = "scripted"
model = "embed-500"
kind = "embedding"
dimensions = 16
embedding_space = "te-16"
input_usd_per_mtok = 0.02

[models.embed-short-model]
provider = "scripted"
model = "embed-short"
kind = "embedding"
dimensions = 16
embedding_space = "te-16"

[models.embed-mock]
provider = "mock"
model = "te-16"
kind = "embedding"
dimensions = 16
embedding_space = "te-16"

[tiers.embed]
models = ["embed-scripted"]
max_retries = 0
fallback = ["embed-backup"]

[tiers.embed-failing]
models = ["embed-500"]
max_retries = 0
fallback = ["embed-backup"]

[tiers.embed-short]
models = ["embed-short-model"]
max_retries = 0
fallback = ["embed-backup"]

[tiers.embed-backup]
models = ["embed-mock"]

# failover: streams without [DONE], malformed events, a silent primary,
# a buffered tier whose stream is cut
[models.no-done-model]
provider = "scripted"
model = "no-done"

[models.malformed-model]
provider = "scripted"
model = "malformed-mid"

[models.silent-model]
provider = "scripted"
model = "hang"

[models.cutter-buffered]
provider = "scripted"
model = "cut-stream"

[tiers.no-done]
models = ["no-done-model"]
max_retries = 0

[tiers.malformed]
models = ["malformed-model"]
max_retries = 0

[tiers.silent]
models = ["silent-model"]
max_retries = 2
timeout_ms = 300
fallback = ["fast"]

[tiers.silent-retrying]
models = ["silent-model"]
max_retries = 2
timeout_ms = 300
retry_on_timeout = true
fallback = ["fast"]

[tiers.buffered]
models = ["cutter-buffered"]
max_retries = 0
mid_stream = "buffer"
fallback = ["fast"]

# mid_stream = "continue": a cut stream continued by a model that takes a prefill
[models.cutter-continued]
provider = "scripted"
model = "cut-stream"

[models.continuer]
provider = "scripted"
model = "continues"
prefill = true

[tiers.continued]
models = ["cutter-continued"]
max_retries = 0
mid_stream = "continue"
fallback = ["continuing"]

[tiers.continuing]
models = ["continuer"]
max_retries = 0

# Anthropic clients: an anthropic tier that is overloaded (529) or stalls
# before its first token, in front of an OpenAI-compatible tier that calls
# tools; a mock tier; a chain where every tier fails
[models.claude-overloaded]
provider = "claude"
model = "claude-overloaded"

[models.claude-stall]
provider = "claude"
model = "claude-stall"

[models.tooler]
provider = "scripted"
model = "tooler"
input_usd_per_mtok = 0.5
output_usd_per_mtok = 1.0

[tiers.tools]
models = ["tooler"]
max_retries = 0

[models.five-hundred]
provider = "scripted"
model = "always-500"

[tiers.failing-first]
models = ["five-hundred"]
max_retries = 0
fallback = ["tools"]

[tiers.overloaded]
models = ["claude-overloaded"]
max_retries = 0
fallback = ["tools"]

[tiers.stalling]
models = ["claude-stall"]
max_retries = 0
first_token_timeout_ms = 400
fallback = ["tools"]

[tiers.all-failing]
models = ["claude-overloaded"]
max_retries = 0
fallback = ["dead"]

# the model strings clients are built with
[aliases]
"gpt-4o-mini" = "plan"
"text-embedding-3-small" = "embed"
"claude-sonnet-4-5" = "anthropic"
"claude-opus-4-8" = "overloaded"
"claude-haiku-4-5" = "fast"
"gpt-4.1" = "tools"
"""


# --------------------------------------------------------------------------
# The scripted upstream
# --------------------------------------------------------------------------

#: What the scripted upstream streams before it cuts a ``cut-stream*`` answer.
CUT_PIECES = ["Hello ", "world"]

#: What the ``continues`` model streams after a final assistant message.
CONTINUATION = " and the rest"

#: The key the gateway's Anthropic provider sends as ``x-api-key``.
ANTHROPIC_KEY = "sk-ant-scripted-0000"

#: The usage of every Anthropic answer (input excludes the cache tokens).
ANTHROPIC_USAGE = {
    "input_tokens": 20,
    "output_tokens": 5,
    "cache_read_input_tokens": 100,
    "cache_creation_input_tokens": 10,
}

#: The tool call of an Anthropic answer to a request with tools: its text,
#: then a call of the request's first tool with these arguments.
from scripted_tools import TOOL_INPUT, TOOL_PREAMBLE, anthropic_blocks, chat_message, chat_stream_deltas  # noqa: E402,F401


@dataclass
class Recorded:
    """One request the scripted upstream received."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class ScriptedUpstream:
    server: ThreadingHTTPServer
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def record(self, rec: Recorded) -> None:
        with self.lock:
            self.requests.append(rec)

    def find(self, request_id: str) -> list[Recorded]:
        """The requests that carried ``x-request-id: request_id``."""
        with self.lock:
            return [r for r in self.requests if r.headers.get("x-request-id") == request_id]


def _chunk(model: str, delta: dict, finish: str | None = None, seq: int = 0) -> dict:
    return {
        "id": f"chatcmpl-scripted-{seq}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _last_user_text(body: Any) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: ScriptedUpstream  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # keep pytest output clean

    # -- helpers -----------------------------------------------------------
    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, obj: Any) -> bytes:
        data = obj if isinstance(obj, str) else json.dumps(obj)
        return f"data: {data}\n\n".encode()

    # -- routes ------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        self._send_json(404, {"error": {"message": "not here", "type": "invalid_request_error"}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        self.upstream.record(
            Recorded(
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
        )
        if self.path.split("?")[0] == "/v1/messages" and isinstance(body, dict):
            self._anthropic(body)
            return
        if self.path.split("?")[0] == "/v1/embeddings" and isinstance(body, dict):
            self._embeddings(body)
            return
        if self.path.split("?")[0] != "/v1/chat/completions" or not isinstance(body, dict):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return

        model = body.get("model", "")
        stream = body.get("stream") is True
        if stream and model == "cut-stream":
            self._cut_stream(model, chunked=False)
        elif stream and model == "cut-stream-abort":
            self._cut_stream(model, chunked=True)
        elif model == "hang":
            time.sleep(3)  # past the tier's 300 ms timeout
            self._completion(model, body)
        elif stream and model == "no-done":
            self._full_stream(model, body, done=False)
        elif stream and model == "malformed-mid":
            self._full_stream(model, body, malformed=True)
        elif model == "always-500":
            self._send_json(500, {"error": {"message": "the upstream is down", "type": "server_error"}})
        elif model == "tooler":
            self._tooler(model, body, stream)
        elif stream and model == "continues":
            self._full_stream(model, body, text=CONTINUATION)
        elif stream:
            self._full_stream(model, body)
        else:
            self._completion(model, body)

    def _tooler(self, model: str, body: dict, stream: bool) -> None:
        """Calls the first tool offered (``Read`` when offered), then quotes
        the tool's result (``scripted_tools``)."""
        message, finish = chat_message(body, f"echo: {_last_user_text(body)}")
        usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
        if not stream:
            self._send_json(
                200,
                {
                    "id": "chatcmpl-tooler",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        events: list[Any] = [_chunk(model, d) for d in chat_stream_deltas(message)]
        events.append(_chunk(model, {}, finish))
        events.append({**_chunk(model, {}), "choices": [], "usage": usage})
        events.append("[DONE]")
        for e in events:
            self.wfile.write(self._sse(e))
            self.wfile.flush()
        self.close_connection = True

    def _embeddings(self, body: dict) -> None:
        """``embed-500``: a 500; ``embed-short``: vectors of 3 values; else
        one vector of 16 values per input, in the encoding asked for."""
        model = body.get("model", "")
        if model == "embed-500":
            self._send_json(500, {"error": {"message": "embeddings are down", "type": "server_error"}})
            return
        inputs = body.get("input")
        n = len(inputs) if isinstance(inputs, list) and not all(isinstance(i, int) for i in inputs) else 1
        dims = 3 if model == "embed-short" else 16
        data = []
        for i in range(n):
            vec = [float(i + 1) / (j + 1) for j in range(dims)]
            if body.get("encoding_format") == "base64":
                emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
            else:
                emb = vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        self._send_json(
            200,
            {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 5 * n, "total_tokens": 5 * n}},
        )

    def _completion(self, model: str, body: dict) -> None:
        text = f"echo: {_last_user_text(body)}"
        self._send_json(
            200,
            {
                "id": "chatcmpl-scripted",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            },
        )

    def _full_stream(
        self, model: str, body: dict, done: bool = True, malformed: bool = False, text: str | None = None
    ) -> None:
        """A well-formed stream: role, content pieces, finish, usage, [DONE]
        (``done=False``: no [DONE], the body just ends; ``malformed=True``: an
        unreadable event after the first piece; ``text``: this answer instead
        of the echo)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        text = text or f"echo: {_last_user_text(body)}"
        events: list[Any] = [_chunk(model, {"role": "assistant", "content": ""})]
        events += [_chunk(model, {"content": p}) for p in re.findall(r"\S+\s*|\s+", text)]
        events.append(_chunk(model, {}, "stop"))
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        events.append({**_chunk(model, {}), "choices": [], "usage": usage})
        if malformed:
            events.insert(2, "{not json")
        if done:
            events.append("[DONE]")
        for e in events:
            self.wfile.write(self._sse(e))
            self.wfile.flush()
        self.close_connection = True

    def _cut_stream(self, model: str, *, chunked: bool) -> None:
        """Two content chunks, then the connection closes without [DONE].

        ``chunked=False``: a close-delimited body that simply ends (a clean
        EOF, only the missing [DONE] tells it was cut).
        ``chunked=True``: chunked transfer encoding closed without the final
        zero-length chunk (the HTTP body itself is broken).
        """
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        events = [_chunk(model, {"role": "assistant", "content": ""})]
        events += [_chunk(model, {"content": p}, seq=i) for i, p in enumerate(CUT_PIECES)]
        for e in events:
            data = self._sse(e)
            if chunked:
                data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
            self.wfile.write(data)
            self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


    # -- Anthropic's Messages API --------------------------------------------
    def _anthropic(self, body: dict) -> None:
        """A text echo; with tools, a text block and a tool_use block; after a
        tool result, a text quoting it (``scripted_tools``).
        ``claude-overloaded``: 529; ``claude-stall``: a stream that stalls
        after message_start."""
        model = body.get("model", "")
        if model == "claude-overloaded":
            self._send_json(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
            return
        blocks, stop = anthropic_blocks(body, f"echo: {_anthropic_last_user_text(body)}")
        if body.get("stream") is True:
            self._anthropic_stream(model, blocks, stop, stall=model == "claude-stall")
            return
        self._send_json(
            200,
            {
                "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": ANTHROPIC_USAGE,
            },
        )

    def _anthropic_stream(self, model: str, blocks: list[dict], stop: str, stall: bool = False) -> None:
        """The Messages event sequence, as in Anthropic's streaming docs."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        start_usage = {**ANTHROPIC_USAGE, "output_tokens": 1}
        events: list[dict] = [
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": model,
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
            {"type": "ping"},
        ]
        for i, b in enumerate(blocks):
            if b["type"] == "text":
                events.append({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
                for piece in re.findall(r"\S+\s*|\s+", b["text"]):
                    events.append(
                        {"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": piece}}
                    )
            else:
                events.append(
                    {"type": "content_block_start", "index": i, "content_block": {**b, "input": {}}}
                )
                args = json.dumps(b["input"])
                for piece in (args[:10], args[10:]):
                    events.append(
                        {
                            "type": "content_block_delta",
                            "index": i,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        }
                    )
            events.append({"type": "content_block_stop", "index": i})
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": ANTHROPIC_USAGE["output_tokens"]},
            }
        )
        events.append({"type": "message_stop"})
        for i, e in enumerate(events):
            if stall and i == 2:
                time.sleep(2)  # past the tier's first-token timeout
            try:
                self.wfile.write(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode())
                self.wfile.flush()
            except OSError:
                return
        self.close_connection = True


def _anthropic_last_user_text(body: Any) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content or [] if b.get("type") == "text"]
        if texts:
            return "".join(texts)
    return ""


def _start_upstream() -> ScriptedUpstream:
    handler = type("ScriptedHandler", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    upstream = ScriptedUpstream(server=server)
    handler.upstream = upstream
    threading.Thread(target=server.serve_forever, name="scripted-upstream", daemon=True).start()
    return upstream


@pytest.fixture(scope="session")
def upstream() -> ScriptedUpstream:
    up = _start_upstream()
    yield up
    up.server.shutdown()
    up.server.server_close()


# --------------------------------------------------------------------------
# The gateway process
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gateway_bin() -> Path:
    p = Path(os.environ.get("CASCADE_BIN", "target/debug/cascade"))
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


@dataclass
class Gateway:
    port: int
    proc: subprocess.Popen
    log_path: Path
    config_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def get(self, path: str) -> tuple[int, str]:
        return _http_get(self.url + path)

    def metrics(self) -> str:
        status, text = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}: {text[:500]}"
        return text

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as e:
            return f"(no gateway log: {e})"
        return "\n".join(lines[-n:])


_GATEWAY: Gateway | None = None


@pytest.fixture(scope="session")
def gateway(upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    global _GATEWAY
    binary = _gateway_bin()
    if not binary.is_file():
        pytest.fail(f"gateway binary {binary} not found (set CASCADE_BIN or build it first)")

    workdir = tmp_path_factory.mktemp("gateway")
    config_path = workdir / "gateway.toml"
    config_path.write_text(GATEWAY_CONFIG.format(upstream_port=upstream.port))
    log_path = workdir / "gateway.log"

    port = _free_port()
    # Nothing from the developer's environment may change the gateway's
    # behaviour (gateway keys, config path, overrides).
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE")}
    env["CASCADE__SERVER__LISTEN"] = f"127.0.0.1:{port}"
    env["SCRIPTED_ANTHROPIC_KEY"] = ANTHROPIC_KEY
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"  # a plain-text log file

    log = open(log_path, "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [str(binary), "serve", "--config", str(config_path)],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    gw = Gateway(port=port, proc=proc, log_path=log_path, config_path=config_path)

    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer yet"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"gateway exited with status {proc.returncode} before becoming ready; log:\n"
                    + gw.log_tail(200)
                )
            try:
                status, text = _http_get(gw.url + "/readyz", timeout=1.0)
                if status == 200:
                    break
                last = f"HTTP {status}: {text[:200]}"
            except OSError as e:
                last = repr(e)
            if time.monotonic() > deadline:
                pytest.fail(
                    f"gateway not ready on {gw.url}/readyz after {READY_TIMEOUT_S}s "
                    f"(last: {last}); log:\n" + gw.log_tail(200)
                )
            time.sleep(0.05)  # bounded polling of /readyz, not synchronisation

        _GATEWAY = gw
        yield gw
    finally:
        _GATEWAY = None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


@pytest.fixture()
def client(gateway: Gateway) -> openai.OpenAI:
    """An SDK client with its default retries (max_retries=2).

    The timeout is bounded so that a hung gateway fails the test instead of
    hanging the suite (the SDK's default is 10 minutes).
    """
    c = openai.OpenAI(base_url=gateway.base_url, api_key="unused", timeout=30.0)
    yield c
    c.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _GATEWAY is not None:
        report.sections.append(
            (f"gateway log ({_GATEWAY.log_path})", _GATEWAY.log_tail())
        )
