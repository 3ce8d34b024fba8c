# Sourced by scripts/load.sh and scripts/memory.sh: start and stop peers-app.
# Needs BIN (the peers-app executable); RUNNER (an array, default empty) is put
# before it, for example valgrind.

# start_app PREFIX ARGS...: starts `$BIN ARGS...` with its stdout in PREFIX.out,
# stderr in PREFIX.err and a fresh TMPDIR (access logs go there); waits for its
# `listening` line; sets APP_PID and APP_URL.
start_app() {
    local prefix=$1
    shift
    APP_TMP=$(mktemp -d)
    # Made here, not by the background job's redirection: reading it before the
    # job has opened it would fail (and stop a `set -e` caller).
    : >"$prefix.out"
    TMPDIR=$APP_TMP ${RUNNER[@]+"${RUNNER[@]}"} "$BIN" "$@" >"$prefix.out" 2>"$prefix.err" &
    APP_PID=$!
    APP_URL=
    for _ in $(seq 200); do
        APP_URL=$(awk '/^listening / { print $2; exit }' "$prefix.out")
        [ -n "$APP_URL" ] && break
        kill -0 "$APP_PID" 2>/dev/null || { echo "$BIN $* exited:" >&2; cat "$prefix.err" >&2; exit 1; }
        sleep 0.05
    done
    [ -n "$APP_URL" ] || { echo "$BIN $* did not start listening" >&2; exit 1; }
    APP_PREFIX=$prefix
}

# Resident memory of the app, in KiB.
app_rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$APP_PID/status"
}

# stop_app: SIGTERM, wait for the exit, print its stats line, remove its TMPDIR.
stop_app() {
    kill -TERM "$APP_PID"
    wait "$APP_PID" || { echo "app exited with $?" >&2; cat "$APP_PREFIX.err" >&2; }
    grep '^stats:' "$APP_PREFIX.out" >&2 || true
    rm -rf "$APP_TMP"
}
