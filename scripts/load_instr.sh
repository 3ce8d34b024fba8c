#!/usr/bin/env bash
# User-space instructions per request of the app under real HTTP load: peers-app
# runs under callgrind (every thread counted: tokio workers, hyper, the export and
# log threads) while wrk drives it over loopback, twice, for SHORT and LONG
# seconds; instructions/request = (Ir(LONG) - Ir(SHORT)) / (requests(LONG) -
# requests(SHORT)), so start-up and shutdown cancel. Unlike scripts/load.sh this
# does not move with the machine's load; unlike scripts/instr.sh it includes what
# only a real connection brings (client and server addresses, hyper, the
# multi-threaded runtime). The kernel's share (TCP over loopback) is not counted.
#
# usage: scripts/load_instr.sh [config...]   (default: bare tower_apm stitched otel_instrumentation_tower)
# env:   SHORT (3), LONG (9), OUT (target/load-instr)
set -euo pipefail

cd "$(dirname "$0")/.."
SHORT=${SHORT:-3}
LONG=${LONG:-9}
OUT=${OUT:-target/load-instr}
if [ $# -gt 0 ]; then CONFIGS=("$@"); else CONFIGS=(bare tower_apm stitched otel_instrumentation_tower); fi

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

echo "building peers-app (release)..." >&2
cargo build --release -p tower-apm-peers --bin peers-app >&2
BIN=target/release/peers-app

source "$(dirname "$0")/peers-app.sh"

# run CONFIG SECS: prints "<requests> <Ir>"
run() {
    local out="$OUT/$1.$2"
    RUNNER=(valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file="$out.callgrind")
    start_app "$out" serve "$1"
    local n
    n=$(wrk -t1 -c4 -d"$2"s "$APP_URL/users/42" | awk '$2 == "requests" && $3 == "in" { print $1 }')
    stop_app 2>/dev/null
    echo "$n $(grep -m1 -E '^(summary|totals):' "$out.callgrind" | awk '{ print $2 }')"
}

declare -A PER
for config in "${CONFIGS[@]}"; do
    read -r n1 ir1 <<<"$(run "$config" "$SHORT")"
    read -r n2 ir2 <<<"$(run "$config" "$LONG")"
    PER[$config]=$(awk -v a="$ir1" -v b="$ir2" -v n1="$n1" -v n2="$n2" 'BEGIN { printf "%.0f", (b - a) / (n2 - n1) }')
    echo "$config: $n1 requests $ir1 Ir, $n2 requests $ir2 Ir -> ${PER[$config]} instructions/request" >&2
done

{
    echo "user-space instructions per request under wrk over loopback (callgrind, ${SHORT}s and ${LONG}s runs;" \
        "$(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
    printf '%-28s %12s %10s\n' config instr/req added
    for config in "${CONFIGS[@]}"; do
        added=$([ -n "${PER[bare]:-}" ] && [ "$config" != bare ] &&
            awk -v x="${PER[$config]}" -v b="${PER[bare]}" 'BEGIN { printf "%+.0f", x - b }' || echo -)
        printf '%-28s %12s %10s\n' "$config" "${PER[$config]}" "$added"
    done
} | tee "$OUT/summary.txt"
