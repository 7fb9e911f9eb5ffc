"""The Codex CLI through the gateway, offline: ``codex exec`` with a custom
model provider whose base_url is the gateway (``wire_api = "responses"``).
The scripted model asks Codex to run ``cat`` on a file through its own
``exec_command`` tool; Codex runs it and sends the output back as a
function_call_output; the answer quotes it.

The CLI comes from npm (scripts/test.sh installs it into .cache/codex;
CODEX_BIN overrides the path).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from scripted_tools import AFTER_TOOL

SECRET = "the launch code is 4711"


def _codex_bin() -> Path:
    configured = os.environ.get("CODEX_BIN")
    path = Path(configured) if configured else REPO_ROOT / ".cache/codex/node_modules/.bin/codex"
    if not path.exists():
        pytest.fail(f"Codex not found at {path} (scripts/test.sh installs it from npm)")
    return path


def test_codex_exec_runs_a_tool_through_the_gateway(gateway, upstream, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    secret = work / "secret.txt"
    secret.write_text(SECRET + "\n")
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f"""model = "tools"
model_provider = "cascade"

[model_providers.cascade]
name = "Cascade"
base_url = "{gateway.base_url}"
wire_api = "responses"
env_key = "CASCADE_GATEWAY_KEY"
request_max_retries = 0
stream_max_retries = 0
"""
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CODEX_HOME": str(home),
        "CASCADE_GATEWAY_KEY": "sk-gateway-key",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    before = len(upstream.requests)
    done = subprocess.run(
        [str(_codex_bin()), "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
         f"Read the file {secret} and tell me what it says."],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    assert AFTER_TOOL in done.stdout and SECRET in done.stdout, done.stdout
    sent = [r for r in upstream.requests[before:] if r.path.split("?")[0] == "/v1/chat/completions"]
    # the first turn offered Codex's tools; a later one carried the command's output
    assert any(t["function"]["name"] == "exec_command" for t in sent[0].body["tools"])
    outputs = [m for r in sent for m in r.body["messages"] if m.get("role") == "tool" and SECRET in str(m.get("content"))]
    assert outputs, "the command's output never came back"
