"""The live page (GET /ui) in a real browser: headless Chromium, driven by
playwright-core (tests/node/ui.mjs), against the binary serving the demo
config with its premium provider failing every call and an admin key."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import REPO_ROOT, spawn_gateway

ADMIN_KEY = "admin-ui-test-key"


@pytest.fixture()
def demo(tmp_path):
    config = (REPO_ROOT / "config/demo.toml").read_text()
    config = config.replace("fail_rate = 0.5", "fail_rate = 1.0", 1)
    config = config.replace('path = "data/demo.db"', f'path = "{tmp_path / "demo.db"}"', 1)
    config = config.replace("[server]\n", '[server]\nadmin_key_env = "UI_TEST_ADMIN_KEY"\n', 1)
    config += "\n[budget]\ndaily_usd = 0.0002\n"
    with spawn_gateway(tmp_path, config, {"UI_TEST_ADMIN_KEY": ADMIN_KEY}) as url:
        yield url


def _get(url: str, headers: dict[str, str]):
    """(status, headers (looked up case-insensitively), body)."""
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def test_the_page_asks_a_browser_for_basic_auth(demo) -> None:
    status, headers, _ = _get(demo + "/ui", {})
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic")
    wrong = base64.b64encode(b"admin:nope").decode()
    assert _get(demo + "/ui", {"Authorization": f"Basic {wrong}"})[0] == 401
    right = base64.b64encode(f"anyone:{ADMIN_KEY}".encode()).decode()
    status, headers, body = _get(demo + "/ui", {"Authorization": f"Basic {right}"})
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<script" in body and "http://" not in body and "https://" not in body, "the page loads nothing from elsewhere"
    # the admin endpoints take it too
    status, _, body = _get(demo + "/v1/cascade/requests", {"Authorization": f"Basic {right}"})
    assert status == 200 and json.loads(body)["data"] == []
    assert _get(demo + "/v1/cascade/status", {"Authorization": f"Bearer {ADMIN_KEY}"})[0] == 200


def test_the_page_draws_the_demo_and_shows_a_circuit_open(demo, tmp_path) -> None:
    tools = REPO_ROOT / ".cache/playwright"
    if not (tools / "node_modules/playwright-core").is_dir():
        pytest.fail(f"playwright-core is not installed in {tools} (scripts/test.sh installs it from npm)")
    if not shutil.which("chromium") and not os.environ.get("CHROMIUM"):
        pytest.fail("Debian's chromium is not installed (scripts/test.sh installs it)")
    script = tools / "ui.mjs"
    shutil.copy(REPO_ROOT / "tests/node/ui.mjs", script)
    shot = tmp_path / "ui.png"
    done = subprocess.run(
        ["node", str(script), demo, ADMIN_KEY, str(shot)],
        cwd=tools,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["status"] == 200
    assert {"premium", "cheap", "local"} <= set(seen["tiers"]), seen
    assert seen["before"] == "closed"
    assert seen["requests"] >= 4
    # today's spend against the daily budget the test config sets
    assert "daily" in seen["budgets"] and "$0.000200" in seen["budgets"], seen["budgets"]
    assert not seen["promptShown"], "the page must not show prompt text"
    assert seen["errors"] == []
    assert shot.stat().st_size > 10_000
    # UI_SCREENSHOT=path keeps the screenshot (docs/ui.png is made this way)
    keep = os.environ.get("UI_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
