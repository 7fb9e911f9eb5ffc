"""Claude Code itself through the gateway, offline: ``claude -p`` with
ANTHROPIC_BASE_URL at the gateway, its model name mapped by an alias, once
served by an anthropic upstream (passed through) and once by an
OpenAI-compatible one (translated). The scripted model asks Claude Code to
run its own Read tool on a file; Claude Code runs it and sends the result
back; the answer quotes it.

The CLI comes from npm (scripts/test.sh installs it into .cache/claude-code;
CLAUDE_CODE_BIN overrides the path).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from scripted_tools import AFTER_TOOL

SECRET = "the launch code is 4711"


def _claude_bin() -> Path:
    configured = os.environ.get("CLAUDE_CODE_BIN")
    path = Path(configured) if configured else REPO_ROOT / ".cache/claude-code/node_modules/.bin/claude"
    if not path.exists():
        pytest.fail(f"Claude Code not found at {path} (scripts/test.sh installs it from npm)")
    return path


def _run_claude(gateway, tmp_path: Path, model: str) -> str:
    work = tmp_path / "work"
    work.mkdir()
    secret = work / "secret.txt"
    secret.write_text(SECRET + "\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gateway.url,
        "ANTHROPIC_API_KEY": "sk-gateway-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    done = subprocess.run(
        [str(_claude_bin()), "-p", f"Read the file {secret} and tell me what it says.",
         "--model", model, "--allowedTools", "Read"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    return done.stdout


def _tool_results(requests, path: str) -> list:
    """The tool results sent to ``path`` that carry the file's text."""
    found = []
    for r in requests:
        if r.path.split("?")[0] != path:
            continue
        for m in r.body.get("messages") or []:
            content = m.get("content")
            if m.get("role") == "tool" and SECRET in str(content):
                found.append(m)
            elif isinstance(content, list):
                found += [b for b in content if b.get("type") == "tool_result" and SECRET in str(b.get("content"))]
    return found


def test_claude_code_through_an_anthropic_tier(gateway, upstream, tmp_path: Path) -> None:
    before = len(upstream.requests)
    out = _run_claude(gateway, tmp_path, "claude-sonnet-4-5")
    assert AFTER_TOOL in out and SECRET in out, out
    sent = upstream.requests[before:]
    # Claude Code's own request shape reached the anthropic upstream as it came
    first = next(r for r in sent if r.path.split("?")[0] == "/v1/messages")
    assert first.body["model"] == "claude-scripted"
    assert any(t.get("name") == "Read" for t in first.body["tools"])
    assert _tool_results(sent, "/v1/messages"), "the Read result never came back"


def test_claude_code_through_an_openai_compatible_tier(gateway, upstream, tmp_path: Path) -> None:
    before = len(upstream.requests)
    out = _run_claude(gateway, tmp_path, "claude-opus-4-8")  # the anthropic tier answers 529
    assert AFTER_TOOL in out and SECRET in out, out
    sent = upstream.requests[before:]
    chat = [r for r in sent if r.path.split("?")[0] == "/v1/chat/completions"]
    assert chat and any(t["function"]["name"] == "Read" for t in chat[0].body["tools"])
    assert _tool_results(sent, "/v1/chat/completions"), "the Read result never came back"
