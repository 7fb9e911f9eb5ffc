#!/usr/bin/env bash
# The ledger over months, on both stores: bench/ledger_fill.rs fills a fresh
# ledger with DAYS days of PER_DAY requests, compacts it as the writer would
# and times the DAYS-day report; with and without a 7-day retention.
#
#   bench/ledger.sh [DAYS] [PER_DAY] [sqlite|postgres|both]
#   RETENTIONS="7" bench/ledger.sh ...   only the retained run ("none 7" by default)
#
# PostgreSQL: a throwaway cluster (initdb into a temporary directory, on a
# free loopback port; as the postgres user when run as root). Needs disk:
# about 10 GiB for SQLite and 20 GiB for PostgreSQL at 30 x 1,000,000.
set -euo pipefail
cd "$(dirname "$0")/.."
DAYS=${1:-30}
PER_DAY=${2:-1000000}
WHICH=${3:-both}
RETENTIONS=${RETENTIONS:-none 7}
PIN=0
. bench/lib.sh

cargo build --release --locked --example ledger_fill >&2
FILL=target/release/examples/ledger_fill

if [ "$WHICH" != postgres ]; then
    for ret in $RETENTIONS; do
        [ "$ret" = none ] && ret=
        say "SQLite, retention ${ret:-none}"; $FILL "$TMP/ledger.db" "$DAYS" "$PER_DAY" $ret
        rm -f "$TMP"/ledger.db*
    done
fi
if [ "$WHICH" != sqlite ]; then
    command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt postgresql
    BIN=$(dirname "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")
    AS=(); [ "$(id -u)" = 0 ] && { chown postgres "$TMP"; AS=(runuser -u postgres --); }
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "${AS[@]}" "$BIN/initdb" -D "$TMP/pg" -A trust -U cascade -E UTF8 --no-sync >/dev/null
    "${AS[@]}" "$BIN/pg_ctl" -D "$TMP/pg" -l "$TMP/pg.log" -w -o "-p $PORT -k $TMP -c listen_addresses=127.0.0.1 -c shared_buffers=512MB -c max_wal_size=8GB" start >/dev/null
    stop_pg() { "${AS[@]}" "$BIN/pg_ctl" -D "$TMP/pg" -m fast stop >/dev/null 2>&1 || true; cleanup; }
    trap stop_pg EXIT
    for ret in $RETENTIONS; do
        [ "$ret" = none ] && ret=
        db="fill${ret:-all}"
        psql -q -h 127.0.0.1 -p "$PORT" -U cascade -d postgres -c "CREATE DATABASE $db"
        say "PostgreSQL, retention ${ret:-none}"
        $FILL "postgres://cascade@127.0.0.1:$PORT/$db" "$DAYS" "$PER_DAY" $ret
        psql -q -h 127.0.0.1 -p "$PORT" -U cascade -d postgres -c "DROP DATABASE $db"
    done
fi
