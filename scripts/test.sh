#!/usr/bin/env bash
# The one command that runs Cascade's whole test suite on a fresh machine:
#   scripts/test.sh
# Needs: cargo (Rust toolchain), python3 with venv/pip, node with npm,
# network access to crates.io, PyPI and npm on the first run.
set -euo pipefail
cd "$(dirname "$0")/.."

START=$SECONDS
step() { printf '\n==> [%dm%02ds] %s\n' $(((SECONDS - START) / 60)) $(((SECONDS - START) % 60)) "$*"; }

# --- 0. Format, lints, and no import circle among the modules of src/ ------
step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "module edges (no import circles)"
python3 scripts/module-edges.py --quiet

# --- 1. Rust: build the gateway binary, run unit + integration tests -------
# the egress tests put a real HTTP proxy (tinyproxy) in front of an upstream
if ! command -v tinyproxy >/dev/null 2>&1 && [ ! -x /usr/bin/tinyproxy ]; then
    step "apt-get install tinyproxy (for the egress tests)"
    apt-get install -y -q tinyproxy >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q tinyproxy >/dev/null; }
fi

# the shared-ledger tests start their own PostgreSQL clusters (initdb into a
# temporary directory, on a free loopback port)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    step "apt-get install postgresql (for the shared-ledger tests)"
    apt-get install -y -q postgresql >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }
fi

# the shared-state tests start their own redis-server on a free loopback port
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
    step "apt-get install redis-server (for the shared-state tests)"
    apt-get install -y -q redis-server >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
fi

step "cargo build --locked"
cargo build --locked

step "cargo test --locked"
cargo test --locked

# --- 2. Client tests: the openai and anthropic SDKs, LangChain and Claude
#        Code against the gateway binary ------------------------------------------
step "python venv (.venv)"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    rm -rf .venv
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt

# Node clients from npm, pinned, each in its own .cache/ directory: Claude
# Code, the Codex CLI, the openai Node SDK (tests/python/test_{claude_code,
# codex,node_sdk}.py)
npm_install() { # DIR PACKAGE@VERSION
    if [ "$(cat ".cache/$1/.version" 2>/dev/null)" != "$2" ]; then
        step "npm install $2 (.cache/$1)"
        rm -rf ".cache/$1"
        mkdir -p ".cache/$1"
        npm install --prefix ".cache/$1" --no-audit --no-fund --loglevel=error "$2" >/dev/null
        echo "$2" > ".cache/$1/.version"
    fi
}
npm_install claude-code @anthropic-ai/claude-code@2.1.197
npm_install codex @openai/codex@0.171.0
npm_install node-sdk openai@6.49.0
# the live page's browser test: Debian's Chromium driven by playwright-core
npm_install playwright playwright-core@1.64.1
if ! command -v chromium >/dev/null 2>&1; then
    step "apt-get install chromium (for the browser test of /ui)"
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi

step "pytest tests/python"
CASCADE_BIN=target/debug/cascade .venv/bin/python -m pytest -q tests/python

# --- 3. Deploy: compose, hadolint, a real Prometheus scraping the gateway,
#        the Grafana dashboard (the test build of the binary: the release
#        profile only optimises the same code, and building it here would
#        take six of the suite's fifteen minutes on two cores) --------------
step "deploy checks"
CASCADE_BIN=target/debug/cascade scripts/check-deploy.sh

# --- 4. Benchmark smoke: a few seconds per target, no thresholds, so the
#        benchmark never rots (writes bench/out/, not docs/benchmarks.md) -------
step "bench/run.sh --smoke"
bench/run.sh --smoke

step "all tests passed"
