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

import contextlib
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from scripted_upstream import ANTHROPIC_KEY, ScriptedUpstream, start_upstream

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


@pytest.fixture(scope="session")
def upstream() -> ScriptedUpstream:
    up = start_upstream()
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


@contextlib.contextmanager
def spawn_gateway(workdir: Path, config: str, env: dict[str, str] | None = None):
    """Another gateway process for one test, with its own config: its URL
    once /readyz answers; stopped on exit."""
    path = workdir / "gateway.toml"
    path.write_text(config)
    port = _free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CASCADE", "OTEL_"))}
    full_env.update(CASCADE__SERVER__LISTEN=f"127.0.0.1:{port}", RUST_LOG="warn", NO_COLOR="1")
    full_env.update(env or {})
    log_path = workdir / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(_gateway_bin()), "serve", "--config", str(path)], env=full_env, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                try:
                    if _http_get(url + "/readyz", timeout=1.0)[0] == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the gateway did not come up; log:\n" + log_path.read_text(errors="replace"))
                time.sleep(0.05)  # bounded polling of /readyz
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


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
