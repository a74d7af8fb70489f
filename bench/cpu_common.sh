# What bench/cpu.sh and bench/dino_step.sh share (sourced, not run): the log line, the load average,
# building and snapshotting the benchmark example, and recording each process's JSON line.
# The sourcing script sets TAG (log prefix), TARGET (cargo target dir), CACHE and RESULTS first.

log() { echo "[$TAG $(date -u +%H:%M:%S)] $*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

build_example() {  # build_example PACKAGE EXAMPLE: sets BIN (a snapshot) and BUILD_INFO
    if [[ -z ${SKIP_BUILD:-} ]]; then
        log "cargo build --release -p $1 --example $2"
        cargo build --release -p "$1" --example "$2"
    fi
    # snapshot, so a concurrent rebuild cannot swap the binary mid-benchmark
    cp -p "$TARGET/release/examples/$2" "$CACHE/bin/$2.new" && mv "$CACHE/bin/$2.new" "$CACHE/bin/$2"
    BIN=$CACHE/bin/$2
    BUILD_INFO="binary built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC'); tree: commit $(git rev-parse --short HEAD) +$(git status --porcelain -- crates Cargo.toml Cargo.lock | wc -l) uncommitted paths under crates/, Cargo.*"
}

FAILED=()
record() {  # record <label> <json line> <load>: a process without a result (e.g. killed for memory) is listed, not fatal
    local line
    line=$(tail -n 1 <<< "$2")
    if [[ $line != \{* ]]; then
        FAILED+=("$1")
        log "$1: FAILED, no result (out of memory? see dmesg) (load $3)"
        return
    fi
    printf '%s\n' "${line%\}},\"load\":\"$3\"}" >> "$RESULTS"
    log "$line (load $3)"
}

report() {  # report ARGS...: bench/cpu_report.py with the failed processes, recorded unless NO_RECORD
    local args=("$@")
    (( ${#FAILED[@]} )) && args+=(--failed "$(IFS=';'; echo "${FAILED[*]}")")
    [[ -z ${NO_RECORD:-} ]] && args+=(--record bench/RESULTS.md)
    "$PY" bench/cpu_report.py "${args[@]}"
}
