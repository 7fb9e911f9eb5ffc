"""The openai Node SDK's ``responses.create`` (plain, streamed, an error)
against the real binary: tests/node/responses.mjs, run from the directory
scripts/test.sh installs the SDK into (.cache/node-sdk)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT


def test_node_sdk_responses(gateway, tmp_path) -> None:
    sdk = REPO_ROOT / ".cache/node-sdk"
    if not (sdk / "node_modules/openai").is_dir():
        pytest.fail(f"the openai Node SDK is not installed in {sdk} (scripts/test.sh installs it from npm)")
    script = sdk / "responses.mjs"
    shutil.copy(REPO_ROOT / "tests/node/responses.mjs", script)
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    done = subprocess.run(
        ["node", str(script), gateway.base_url], cwd=sdk, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["id"].startswith("resp_")
    assert "Hello from Node." in out["text"]
    assert "Stream from Node." in out["streamed"]
    assert out["types"][0] == "response.created" and out["types"][-1] == "response.completed"
    assert out["notFound"] == {"status": 404, "name": "NotFoundError"}
