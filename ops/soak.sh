#!/usr/bin/env bash
# Memory soak: the daemon fed at a steady rate for a while, its RSS sampled.
#   ops/soak.sh [MINUTES=30] [RATE=50000]
#   TAPE=day.csv ops/soak.sh ...   (a tape made before, its
#                                   day.accounts.csv beside it: no gen;
#                                   the feed is cut at MINUTES)
#   CONF='checkpoint_interval_ms = 0' ops/soak.sh ...   (more config lines)
#   RSS=rss-a.csv ops/soak.sh ...  (where the samples go; default rss.csv)
# Writes rss.csv (seconds, rss_kib, records_in) in the current directory and
# prints the 5-minute means. The tape is generated to last the whole soak
# (MINUTES * 60 * RATE records; 30 min at 50k/s is 90M records, about
# 7 GB of CSV in $TMPDIR). While it runs, an SSE client stays on
# /alerts/stream and /metrics and /api/status are read at every sample, as
# a dashboard and a Prometheus scraper would.
#
# The generated day never cancels some of its orders, so the open-order
# table grows with the day (sub-linearly: about 12k orders open after 5M
# records); it is bounded by the validator's open-order limit and emptied
# at the day boundary, and is part of what this measures.
set -euo pipefail
MINUTES=${1:-30}
RATE=${2:-50000}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/tapewatch}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tw-soak.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
RECORDS=$((MINUTES * 60 * RATE))
if [ -n "${TAPE:-}" ]; then
  ln -s "$(realpath "$TAPE")" "$WORK/day.csv"
  cp "${TAPE%.csv}.accounts.csv" "$WORK/day.accounts.csv"
else
  "$BIN" gen --events "$RECORDS" --seed 2 --out "$WORK/day.csv" --quiet >/dev/null
fi
cat > "$WORK/tw.toml" <<CONF
feed_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
state = "state"
alerts = "alerts.jsonl"
accounts = "day.accounts.csv"
${CONF:-}
CONF
: > "$WORK/serve.log"
"$BIN" serve --config "$WORK/tw.toml" 2>"$WORK/serve.log" &
PID=$!
until grep -q ' ready ' "$WORK/serve.log"; do sleep 0.05; done
FEED=$(grep ' ready ' "$WORK/serve.log" | sed 's/.*feed=\([^ ]*\).*/\1/')
HTTP=$(grep ' ready ' "$WORK/serve.log" | sed 's/.*http=\([^ ]*\).*/\1/')
echo "daemon pid $PID, http $HTTP, work $WORK"
# The daemon ends a stream after sse_max_secs (600 s): reconnect, as
# EventSource does.
(while kill -0 $PID 2>/dev/null; do curl -sN "http://$HTTP/alerts/stream" >/dev/null 2>&1; sleep 1; done) &
"$BIN" feed "$WORK/day.csv" --to "$FEED" --rate "$RATE" --quiet &
FEEDER=$!
OUT=${RSS:-rss.csv}
echo "seconds,rss_kib,records_in" > "$OUT"
start=$(date +%s)
while kill -0 $FEEDER 2>/dev/null; do
  now=$(date +%s)
  # A longer tape is cut at MINUTES.
  if [ $((now - start)) -ge $((MINUTES * 60)) ]; then kill $FEEDER; break; fi
  records=$(curl -s "http://$HTTP/metrics" | awk '/^tapewatch_records_in_total/ {s += $2} END {print s + 0}')
  curl -s "http://$HTTP/api/status" >/dev/null
  echo "$((now - start)),$(awk '/VmRSS/ {print $2}' /proc/$PID/status),$records" >> "$OUT"
  sleep 10
done
kill -TERM $PID; wait $PID
echo "$OUT: $(wc -l < "$OUT") samples; first and last:"; sed -n '2p;$p' "$OUT"
echo "5-minute means of RSS (MiB), min-max:"
awk -F, 'NR > 1 { b = int($1 / 300); n[b]++; s[b] += $2; if (!(b in lo) || $2 < lo[b]) lo[b] = $2; if ($2 > hi[b]) hi[b] = $2 }
  END { for (b = 0; b in n; b++) printf "  min %2d-%2d: %6.1f (%.1f-%.1f)\n", b * 5, b * 5 + 5, s[b] / n[b] / 1024, lo[b] / 1024, hi[b] / 1024 }' "$OUT"
