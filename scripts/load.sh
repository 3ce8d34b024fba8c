#!/usr/bin/env bash
# End-to-end load over loopback: wrk against the same app (benches/peers peers-app)
# in each configuration, fixed connections and duration, configurations interleaved
# (the order rotates every round) because the machine is shared and noisy. Server
# and wrk share the machine's cores.
#
# usage: scripts/load.sh [config...]
#   default configs: bare tower_apm stitched stitched_access_log otel_instrumentation_tower
# env:   ROUNDS (3), DURATION (5s), CONNECTIONS (16), THREADS (1: wrk threads),
#        OUT (target/load)
# out:   $OUT/<config>.r<round>.wrk (wrk --latency output), $OUT/summary.txt
#
# Per configuration: the median over rounds of requests per second, p50 and p99
# latency, and the median of the per-round ratio of its requests per second to
# bare's in the same round. Each tower-apm/peer pair is also given as a ratio.
# Needs wrk (Debian: apt-get install wrk).
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
OUT=${OUT:-target/load}
if [ $# -gt 0 ]; then CONFIGS=("$@"); else
    CONFIGS=(bare tower_apm stitched stitched_access_log otel_instrumentation_tower)
fi

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

echo "building peers-app (release)..." >&2
cargo build --release -p tower-apm-peers --bin peers-app >&2
BIN=target/release/peers-app

source "$(dirname "$0")/peers-app.sh"

# "50%  271.00us" -> microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1000000; else f = 0.001
        printf "%.0f", n * f }'
}

declare -A RPS P50 P99
for ((round = 1; round <= ROUNDS; round++)); do
    n=${#CONFIGS[@]}
    for ((k = 0; k < n; k++)); do
        config=${CONFIGS[$(((k + round - 1) % n))]}
        start_app "$OUT/$config.r$round" serve "$config"
        wrk -t"$THREADS" -c"$CONNECTIONS" -d1s "$APP_URL/users/42" >/dev/null # warm-up
        out="$OUT/$config.r$round.wrk"
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$APP_URL/users/42" >"$out"
        stop_app
        rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
        p50=$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")")
        p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")
        errors=$(awk '/Non-2xx|Socket errors/ { print }' "$out")
        [ -z "$errors" ] || echo "round $round $config: $errors" >&2
        RPS[$config.$round]=$rps
        P50[$config.$round]=$p50
        P99[$config.$round]=$p99
        printf 'round %d %-28s %10.0f req/s  p50 %6d us  p99 %6d us\n' "$round" "$config" "$rps" "$p50" "$p99" >&2
    done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
rounds_of() { # rounds_of ARRAY config
    local -n arr=$1
    for ((r = 1; r <= ROUNDS; r++)); do echo "${arr[$2.$r]}"; done
}
# Median over rounds of config's req/s divided by other's req/s in the same round.
ratio() {
    for ((r = 1; r <= ROUNDS; r++)); do
        awk -v a="${RPS[$1.$r]}" -v b="${RPS[$2.$r]}" 'BEGIN { printf "%.3f\n", a / b }'
    done | median
}

{
    echo "load over loopback: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency /users/42, $ROUNDS rounds" \
        "interleaved; $(nproc) cores shared by server and wrk; $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    printf '%-28s %10s %9s %9s %9s\n' config "req/s" "p50 us" "p99 us" "vs bare"
    for config in "${CONFIGS[@]}"; do
        vs=$([ "$config" = bare ] || [ -z "${RPS[bare.1]:-}" ] && echo - || ratio "$config" bare)
        printf '%-28s %10.0f %9s %9s %9s\n' "$config" "$(rounds_of RPS "$config" | median)" \
            "$(rounds_of P50 "$config" | median)" "$(rounds_of P99 "$config" | median)" "$vs"
    done
    for pair in "tower_apm stitched" "tower_apm stitched_access_log" "tower_apm otel_instrumentation_tower" \
        "tower_apm_traces_metrics otel_instrumentation_tower"; do
        set -- $pair
        if [ -n "${RPS[$1.1]:-}" ] && [ -n "${RPS[$2.1]:-}" ]; then
            echo "$1 serves $(ratio "$1" "$2")x the requests per second of $2"
        fi
    done
} | tee "$OUT/summary.txt"
