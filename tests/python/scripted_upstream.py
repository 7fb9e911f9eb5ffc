"""The scripted upstream the client tests run the gateway against: a
``ThreadingHTTPServer`` on 127.0.0.1:0 speaking the OpenAI Chat Completions
API (``/v1/chat/completions``, behaviour chosen by the request body's
``model``), ``/v1/embeddings`` and Anthropic's Messages API (``/v1/messages``:
an echo of the last user text, or a tool call when the request has tools;
streaming and not). Every request is recorded, headers included.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
from scripted_tools import anthropic_blocks, chat_message, chat_stream_deltas


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


def start_upstream() -> ScriptedUpstream:
    handler = type("ScriptedHandler", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    upstream = ScriptedUpstream(server=server)
    handler.upstream = upstream
    threading.Thread(target=server.serve_forever, name="scripted-upstream", daemon=True).start()
    return upstream
