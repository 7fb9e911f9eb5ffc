"""What the scripted upstream answers to agents: a tool call while the
conversation has no tool result yet, then a text answer quoting the result.

Claude Code offers a dozen tools; when ``Read`` is among them the call reads
the path the prompt names (the last absolute path in it), so a ``claude -p``
run makes one real tool call and sends its result back. Codex gets the same
through its ``exec_command`` tool (``cat PATH``).
"""

from __future__ import annotations

import json
import re
from typing import Any

#: What a tool-using answer says before its call.
TOOL_PREAMBLE = "Let me check."
#: The input of a call to any tool but ``Read``.
TOOL_INPUT = {"location": "Paris", "unit": "celsius"}
#: How the answer after a tool result begins.
AFTER_TOOL = "The tool said: "


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for b in content or []:
        if not isinstance(b, dict):
            continue
        if b.get("type") == "text":
            parts.append(b.get("text", ""))
        elif b.get("type") == "tool_result":
            parts.append(_text_of(b.get("content")))
    return "".join(parts)


def _prompt_path(text: str) -> str:
    """The last absolute file path the text names (the prompt comes after
    any reminders an agent puts before it)."""
    paths = re.findall(r"/[\w.-]+(?:/[\w.-]+)+", text)
    return paths[-1].rstrip(".,") if paths else "/etc/hostname"


def pick_call(tool_names: list[str], prompt: str) -> tuple[str, dict]:
    """The tool to call and its input."""
    if "Read" in tool_names:  # Claude Code
        return "Read", {"file_path": _prompt_path(prompt)}
    if "exec_command" in tool_names:  # Codex
        return "exec_command", {"cmd": f"cat {_prompt_path(prompt)}"}
    if "shell" in tool_names:  # older Codex
        return "shell", {"command": ["cat", _prompt_path(prompt)]}
    return tool_names[0], TOOL_INPUT


# -- Anthropic's Messages API -------------------------------------------------


def anthropic_tool_result(body: dict) -> str | None:
    """The text of the tool result the last user turn carries, if any."""
    messages = body.get("messages") or []
    if not messages or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    if not isinstance(content, list):
        return None
    results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    if not results:
        return None
    return _text_of(results[0].get("content"))


def anthropic_blocks(body: dict, echo: str) -> tuple[list[dict], str]:
    """The content blocks and stop reason of an answer to ``body``."""
    result = anthropic_tool_result(body)
    if result is not None:
        return [{"type": "text", "text": AFTER_TOOL + result.strip()}], "end_turn"
    tools = body.get("tools") or []
    if not tools:
        return [{"type": "text", "text": echo}], "end_turn"
    first_user = next((m for m in body.get("messages") or [] if m.get("role") == "user"), {})
    prompt = _text_of((body.get("messages") or [{}])[-1].get("content")) or _text_of(first_user.get("content"))
    name, args = pick_call([t.get("name", "") for t in tools], prompt)
    return [
        {"type": "text", "text": TOOL_PREAMBLE},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": name, "input": args},
    ], "tool_use"


# -- Chat Completions ------------------------------------------------------------


def chat_message(body: dict, echo: str) -> tuple[dict, str]:
    """The assistant message and finish reason of an answer to ``body``."""
    messages = body.get("messages") or []
    if messages and messages[-1].get("role") == "tool":
        return {"role": "assistant", "content": AFTER_TOOL + _text_of(messages[-1].get("content")).strip()}, "stop"
    tools = body.get("tools") or []
    if not tools:
        return {"role": "assistant", "content": echo}, "stop"
    users = [m for m in messages if m.get("role") == "user"]
    prompt = _text_of(users[-1].get("content")) if users else ""
    name, args = pick_call([t.get("function", {}).get("name", "") for t in tools], prompt)
    call = {"id": "call_scripted_1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
    return {"role": "assistant", "content": TOOL_PREAMBLE, "tool_calls": [call]}, "tool_calls"


def chat_stream_deltas(message: dict) -> list[dict]:
    """The deltas that stream ``message``: text in pieces, then each call
    (id and name first, then its arguments in two fragments)."""
    deltas: list[dict] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": p} for p in re.findall(r"\S+\s*|\s+", message.get("content") or "")]
    for i, call in enumerate(message.get("tool_calls") or []):
        f = call["function"]
        deltas.append(
            {"tool_calls": [{"index": i, "id": call["id"], "type": "function", "function": {"name": f["name"], "arguments": ""}}]}
        )
        args = f["arguments"]
        for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
            deltas.append({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    return deltas
