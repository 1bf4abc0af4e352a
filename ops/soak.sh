#!/usr/bin/env bash
# Memory soak: the daemon fed at a steady rate for a while, its RSS sampled.
#   ops/soak.sh [MINUTES=30] [RATE=50000]
# Writes rss.csv (seconds, rss_kib) in the current directory. The tape is
# generated to last the whole soak (MINUTES * 60 * RATE records; 30 min at
# 50k/s is 90M records, about 7 GB of CSV in $TMPDIR).
set -euo pipefail
MINUTES=${1:-30}
RATE=${2:-50000}
BIN=${BIN:-target/release/tapewatch}
WORK=$(mktemp -d /tmp/tw-soak.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
RECORDS=$((MINUTES * 60 * RATE))
"$BIN" gen --events "$RECORDS" --seed 2 --out "$WORK/day.csv" --quiet >/dev/null
cat > "$WORK/tw.toml" <<CONF
feed_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
state = "state"
alerts = "alerts.jsonl"
accounts = "day.accounts.csv"
CONF
"$BIN" serve --config "$WORK/tw.toml" 2>"$WORK/serve.log" &
PID=$!
until grep -q ' ready ' "$WORK/serve.log"; do sleep 0.05; done
FEED=$(grep ' ready ' "$WORK/serve.log" | sed 's/.*feed=\([^ ]*\).*/\1/')
"$BIN" feed "$WORK/day.csv" --to "$FEED" --rate "$RATE" --quiet &
FEEDER=$!
echo "seconds,rss_kib" > rss.csv
start=$(date +%s)
while kill -0 $FEEDER 2>/dev/null; do
  now=$(date +%s)
  echo "$((now - start)),$(awk '/VmRSS/ {print $2}' /proc/$PID/status)" >> rss.csv
  sleep 10
done
kill -TERM $PID; wait $PID
echo "rss.csv: $(wc -l < rss.csv) samples; first and last:"; sed -n '2p;$p' rss.csv
