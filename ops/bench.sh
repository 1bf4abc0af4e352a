#!/usr/bin/env bash
# Daemon benchmarks on loopback (run on a quiet machine; one command):
#   ops/bench.sh [RECORDS] [SCENARIO_SCALE]
# 1. sustained binary feed rate, flat out (nothing is ever dropped: a full
#    ring pushes back on the sender; the daemon's day summary says
#    records = sent);
# 2. szse-peak played over the socket at the tape's own pace (`feed
#    --replay-speed 1`: each record sent when its ts_ns is due, and while
#    the tape is quiet a heartbeat every 1 ms carrying its clock), with the
#    scenario's pipeline settings (lateness 1 ms, idle advance after 50 ms):
#    p99 ingest-to-alert from the daemon's "day ended" line (ingest = when
#    the daemon read the bytes off the socket, not when the sender wrote
#    them);
# 3. SIGTERM to exit, and restart to ready.
set -euo pipefail
RECORDS=${1:-5000000}
SCALE=${2:-0.05}
BIN=${BIN:-target/release/tapewatch}
WORK=$(mktemp -d /tmp/tw-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
ms() { date +%s%3N; }

"$BIN" gen --events "$RECORDS" --seed 1 --out "$WORK/day.csv" --quiet >/dev/null
"$BIN" import "$WORK/day.csv" --out "$WORK/day.tape" >/dev/null 2>&1 || true
TAPE="$WORK/day.csv"; [ -f "$WORK/day.tape" ] && TAPE="$WORK/day.tape"
cat > "$WORK/tw.toml" <<CONF
feed_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
state = "state"
alerts = "alerts.jsonl"
accounts = "day.accounts.csv"
idle_after_ms = 0
CONF

start() {
  "$BIN" serve --config "$WORK/tw.toml" 2>>"$WORK/serve.log" &
  PID=$!
  until grep -q ' ready ' "$WORK/serve.log" 2>/dev/null; do sleep 0.01; done
  FEED=$(grep ' ready ' "$WORK/serve.log" | tail -1 | sed 's/.*feed=\([^ ]*\).*/\1/')
}

echo "== sustained binary feed, $RECORDS records, flat out"
start
"$BIN" feed "$TAPE" --to "$FEED" --as-fast-as-possible --end-of-day --quiet
until grep -q 'day ended' "$WORK/serve.log"; do sleep 0.05; done
grep 'day ended' "$WORK/serve.log" | tail -1

echo "== SIGTERM to exit"
t0=$(ms); kill -TERM $PID; wait $PID; t1=$(ms)
echo "sigterm_to_exit_ms=$((t1 - t0))"
echo "== restart to ready"
: > "$WORK/serve.log"
t0=$(ms); start; t1=$(ms)
echo "restart_to_ready_ms=$((t1 - t0)) (includes process start and state load)"
kill -TERM $PID; wait $PID

echo "== szse-peak over the socket (scale $SCALE)"
rm -rf "$WORK/state" "$WORK"/alerts*
# The scenario's [pipeline]: a 1 ms lateness bound, idle advance after 50 ms.
sed -i -e '/^idle_after_ms/d' "$WORK/tw.toml"
printf 'lateness_ms = 1\nidle_after_ms = 50\n' >> "$WORK/tw.toml"
"$BIN" gen --scenario scenarios/szse-peak.toml --scale "$SCALE" --out "$WORK/peak.csv" --quiet >/dev/null
cp "$WORK/peak.accounts.csv" "$WORK/day.accounts.csv" 2>/dev/null || true
: > "$WORK/serve.log"; start
"$BIN" feed "$WORK/peak.csv" --to "$FEED" --replay-speed 1 --end-of-day --quiet
until grep -q 'day ended' "$WORK/serve.log"; do sleep 0.05; done
grep 'day ended' "$WORK/serve.log" | tail -1
kill -TERM $PID; wait $PID
