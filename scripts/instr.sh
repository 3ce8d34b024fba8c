#!/usr/bin/env bash
# Instructions per request for every configuration of benches/instr.rs, counted by
# callgrind (all threads, the export thread included), as BENCHMARKING.md (at the repository root) describes:
# each configuration runs at N1 and N2 requests and
#   instructions/request = (Ir(N2) - Ir(N1)) / (N2 - N1)
# so set-up and shut-down cancel out. `bare` is the baseline of bare/noop_layer/
# sampled/not_sampled, `bare_traceparent` that of the *_traceparent configurations.
# `noop_layer` (an Identity layer through `Router::layer`) is what axum itself costs
# for any layer: the floor under the layer's figures.
#
# usage: scripts/instr.sh [config...]            (default: every configuration)
#        scripts/instr.sh --peers [config...]    the configurations of benches/peers
#        (tower-apm against the stacks users would build instead; baseline `bare`; each
#        peer's added instructions are also given as a ratio to the tower-apm
#        configuration doing the same work)
#
# Ir(N1)/Ir(N2) in the table are those of the first run; instr/req of sampled and
# sampled_traceparent is the median of REPS runs (see below).
# env:   N1 (5000), N2 (25000), OUT (target/instr), REPS (3: runs of the exporting configs),
#        BENCH_HOST (unset): when set, every request also carries `host: $BENCH_HOST`
#        (e.g. BENCH_HOST=localhost:3000 OUT=target/instr-host scripts/instr.sh),
#        BENCH_BROWSER (unset): when set, every request also carries a browser's
#        User-Agent, Accept and Accept-Encoding
# out:   $OUT/<config>.<N>[.r<k>].callgrind, $OUT/<config>.<N>[.r<k>].log,
#        $OUT/<config>.<N2>.annotate.txt (callgrind_annotate --inclusive=no),
#        $OUT/summary.txt (the table printed at the end)
set -euo pipefail

cd "$(dirname "$0")/.."
N1=${N1:-5000}
N2=${N2:-25000}
PEERS=
if [ "${1:-}" = --peers ]; then PEERS=1 && shift; fi
if [ -n "$PEERS" ]; then
    OUT=${OUT:-target/instr-peers}
    ALL=(bare tower_apm tower_apm_traces_metrics stitched stitched_access_log otel_instrumentation_tower)
else
    OUT=${OUT:-target/instr}
    ALL=(bare noop_layer sampled not_sampled sampled_metrics not_sampled_metrics sampled_metrics_logs
        not_sampled_metrics_logs sampled_metrics_logs_peer sampled_metrics_logs_security sampled_metrics_queries
        sampled_metrics_queries_timed bare_traceparent sampled_traceparent not_sampled_traceparent)
fi
if [ $# -gt 0 ]; then CONFIGS=("$@"); else CONFIGS=("${ALL[@]}"); fi

command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
mkdir -p "$OUT"

# What is measured: the commit, and whether src/ differs from it when the binary is built.
src_state() {
    echo "$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null ||
        echo "+uncommitted:$(git diff HEAD -- src Cargo.toml | sha1sum | cut -c1-8)")"
}
STATE=$(src_state)
if [ -n "$PEERS" ]; then
    echo "building benches/peers peers-instr (bench profile) at $STATE..." >&2
    BIN=$(cargo build --profile bench -p tower-apm-peers --bin peers-instr --message-format=json |
        grep '"reason":"compiler-artifact"' | grep '"name":"peers-instr"' |
        grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
else
    echo "building benches/instr.rs (bench profile) at $STATE..." >&2
    BIN=$(cargo bench --bench instr --no-run --message-format=json |
        grep '"reason":"compiler-artifact"' | grep '"name":"instr"' |
        grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
fi
[ -x "$BIN" ] || { echo "could not find the instr executable" >&2; exit 1; }
echo "binary: $BIN" >&2
RACE=$([ "$(src_state)" = "$STATE" ] || echo "$STATE -> $(src_state)")

# Ir total of one run: the `summary:` (or `totals:`) line of the callgrind output.
total() {
    local t
    t=$(grep -m1 -E '^(summary|totals):' "$1" | awk '{print $2}')
    [ -n "$t" ] || { echo "no summary/totals line in $1" >&2; exit 1; }
    echo "$t"
}

# Runs one configuration at n requests; prints the Ir total.
measure() {
    local config=$1 n=$2 out=$3 log=${3%.callgrind}.log
    echo "callgrind: $config $n -> $out" >&2
    if ! valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file="$out" \
        "$BIN" "$config" "$n" >"$log" 2>&1; then
        echo "run failed: $config $n (see $log)" >&2
        tail -5 "$log" >&2
        exit 1
    fi
    grep -E "^$config: " "$log" >&2 || true
    total "$out"
}

# The configurations that export run REPS times (the export thread's share moves
# with thread scheduling, by up to ~1% of the total) and report the median; the
# others repeat to the instruction and run once.
REPS=${REPS:-3}
declare -A IR1 IR2 PER RANGE
for config in "${CONFIGS[@]}"; do
    case "$config" in
        sampled | sampled_traceparent | sampled_metrics | sampled_metrics_logs) reps=$REPS ;;
        bare | noop_layer | not_sampled* | bare_traceparent) reps=1 ;;
        *) reps=$REPS ;; # the peers' configurations all export
    esac
    pers=()
    for ((r = 1; r <= reps; r++)); do
        suffix=$([ "$r" -eq 1 ] && echo "" || echo ".r$r")
        ir1=$(measure "$config" "$N1" "$OUT/$config.$N1$suffix.callgrind")
        ir2=$(measure "$config" "$N2" "$OUT/$config.$N2$suffix.callgrind")
        [ "$r" -eq 1 ] && IR1[$config]=$ir1 && IR2[$config]=$ir2
        pers+=("$(awk -v a="$ir1" -v b="$ir2" -v n1="$N1" -v n2="$N2" 'BEGIN { printf "%.1f", (b - a) / (n2 - n1) }')")
    done
    sorted=$(printf '%s\n' "${pers[@]}" | sort -n)
    PER[$config]=$(echo "$sorted" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    RANGE[$config]=$(echo "$sorted" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR > 1) printf "%s..%s (%d runs)", lo, hi, NR }')
    callgrind_annotate --inclusive=no "$OUT/$config.$N2.callgrind" >"$OUT/$config.$N2.annotate.txt" 2>/dev/null || true
done

baseline() {
    case "$1" in
        *_traceparent) echo bare_traceparent ;;
        sampled_metrics_queries_timed) echo sampled_metrics_queries ;; # 10 queries a request
        *) echo bare ;;
    esac
}

{
    echo "tower-apm${PEERS:+ and peers} instructions per request (callgrind, N1=$N1, N2=$N2, host header: ${BENCH_HOST:-none}; built at $STATE)"
    [ -z "$RACE" ] || echo "WARNING: src/ changed while the binary was being built ($RACE); run again"
    printf '%-26s %15s %15s %12s %18s %12s %7s  %s\n' config "Ir(N1)" "Ir(N2)" instr/req baseline added ratio \
        "instr/req range"
    for config in "${CONFIGS[@]}"; do
        base=$(baseline "$config")
        if [ "$base" != "$config" ] && [ -n "${PER[$base]:-}" ]; then
            added=$(awk -v x="${PER[$config]}" -v b="${PER[$base]}" 'BEGIN { printf "%+.1f", x - b }')
            ratio=$(awk -v x="${PER[$config]}" -v b="${PER[$base]}" 'BEGIN { printf "%.2f", x / b }')
        else
            added=-
            ratio=-
        fi
        printf '%-26s %15s %15s %12s %18s %12s %7s  %s\n' "$config" "${IR1[$config]}" "${IR2[$config]}" \
            "${PER[$config]}" "$base" "$added" "$ratio" "${RANGE[$config]}"
    done
    if [ -n "${PER[sampled_traceparent]:-}" ] && [ -n "${PER[sampled]:-}" ] &&
        [ -n "${PER[bare]:-}" ] && [ -n "${PER[bare_traceparent]:-}" ]; then
        awk -v st="${PER[sampled_traceparent]}" -v bt="${PER[bare_traceparent]}" \
            -v s="${PER[sampled]}" -v b="${PER[bare]}" \
            'BEGIN { printf "traceparent, sampled: %+.1f added over the sampled layer without it\n", (st - bt) - (s - b) }'
    fi
    if [ -n "${PER[not_sampled_traceparent]:-}" ] && [ -n "${PER[not_sampled]:-}" ] &&
        [ -n "${PER[bare]:-}" ] && [ -n "${PER[bare_traceparent]:-}" ]; then
        awk -v st="${PER[not_sampled_traceparent]}" -v bt="${PER[bare_traceparent]}" \
            -v s="${PER[not_sampled]}" -v b="${PER[bare]}" \
            'BEGIN { printf "traceparent, not sampled: %+.1f added over the not-sampled layer without it\n", (st - bt) - (s - b) }'
    fi
    for pair in "sampled_metrics sampled" "not_sampled_metrics not_sampled" \
        "sampled_metrics_logs sampled_metrics" "not_sampled_metrics_logs not_sampled_metrics"; do
        set -- $pair
        if [ -n "${PER[$1]:-}" ] && [ -n "${PER[$2]:-}" ]; then
            awk -v m="${PER[$1]}" -v t="${PER[$2]}" -v a="$1" -v b="$2" \
                'BEGIN { printf "%s over %s: %+.1f\n", a, b, m - t }'
        fi
    done
    # Each peer's added instructions over those of the tower-apm configuration doing
    # the same work (see benches/peers/src/lib.rs).
    for pair in "stitched tower_apm" "stitched_access_log tower_apm" "otel_instrumentation_tower tower_apm_traces_metrics"; do
        set -- $pair
        if [ -n "${PER[$1]:-}" ] && [ -n "${PER[$2]:-}" ] && [ -n "${PER[bare]:-}" ]; then
            awk -v p="${PER[$1]}" -v o="${PER[$2]}" -v b="${PER[bare]}" -v a="$1" -v c="$2" \
                'BEGIN { printf "%s adds %.2fx the instructions %s adds (%+.1f vs %+.1f)\n", a, (p - b) / (o - b), c, p - b, o - b }'
        fi
    done
} | tee "$OUT/summary.txt"
