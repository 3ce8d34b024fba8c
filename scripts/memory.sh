#!/usr/bin/env bash
# Resident memory of an app with tower-apm's full layer (traces sampled and
# exported over OTLP/gRPC, metrics pushed every second, access log to a rotated
# file) over at least REQUESTS requests from wrk, twice: with the collector down
# (nothing listens on the endpoint: every export fails and its spans are dropped
# and counted) and with it up (peers-app sink, an OTLP/gRPC receiver).
#
# usage: scripts/memory.sh
# env:   REQUESTS (1000000), CHUNK (10s: wrk runs until REQUESTS is reached; RSS is
#        read after each), CONNECTIONS (16), OUT (target/memory)
# out:   $OUT/summary.txt; exits 1 if resident memory at the end exceeds that at the
#        start by more than 25% + 4 MiB.
# Needs wrk (Debian: apt-get install wrk).
set -euo pipefail

cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-1000000}
CHUNK=${CHUNK:-10s}
CONNECTIONS=${CONNECTIONS:-16}
OUT=${OUT:-target/memory}

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

echo "building peers-app (release)..." >&2
cargo build --release -p tower-apm-peers --bin peers-app >&2
BIN=target/release/peers-app

source "$(dirname "$0")/peers-app.sh"

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

status=0
: >"$OUT/summary.txt"
for collector in down up; do
    if [ "$collector" = up ]; then
        start_app "$OUT/sink" sink
        SINK_PID=$APP_PID SINK_TMP=$APP_TMP SINK_PREFIX=$APP_PREFIX
        endpoint=$APP_URL
    else
        # Port 1 on loopback: nothing listens, every connection is refused.
        endpoint=http://127.0.0.1:1
    fi
    start_app "$OUT/app-$collector" serve tower_apm --otlp "$endpoint"
    wrk -t1 -c"$CONNECTIONS" -d2s "$APP_URL/users/42" >/dev/null # warm-up
    start=$(app_rss_kib)
    total=0
    samples="$(mib "$start")"
    while [ "$total" -lt "$REQUESTS" ]; do
        n=$(wrk -t1 -c"$CONNECTIONS" -d"$CHUNK" "$APP_URL/users/42" | awk '$2 == "requests" && $3 == "in" { print $1 }')
        total=$((total + n))
        rss=$(app_rss_kib)
        samples="$samples $(mib "$rss")"
        echo "collector $collector: $total requests, RSS $(mib "$rss") MiB" >&2
    done
    end=$(app_rss_kib)
    stop_app 2>"$OUT/app-$collector.stats"
    stats=$(cat "$OUT/app-$collector.stats")
    verdict=flat
    if [ "$end" -gt $((start + start / 4 + 4096)) ]; then verdict=GROWS && status=1; fi
    {
        echo "collector $collector: $total requests (+ warm-up); RSS after warm-up $(mib "$start") MiB," \
            "at the end $(mib "$end") MiB ($verdict); after each ${CHUNK}: $samples MiB"
        echo "  app $stats"
    } | tee -a "$OUT/summary.txt"
    if [ "$collector" = up ]; then
        APP_PID=$SINK_PID APP_TMP=$SINK_TMP APP_PREFIX=$SINK_PREFIX
        stop_app 2>"$OUT/sink.stats"
        sed 's/^/  sink /' "$OUT/sink.stats" | tee -a "$OUT/summary.txt"
    fi
done
exit $status
