#!/usr/bin/env bash
# Data-pipeline benchmark: webssl's loader vs dinov2's PyTorch pipeline, DINOv2 recipe 2x224 + 8x98.
#
#   bash bench/data.sh        # ~3-5 min on a 2-core machine; appends a section to bench/RESULTS.md
#
# Same JPEGs on both sides (make_data_images.py: N images 500x375, quality 90, crops of the
# scikit-image photos, seed 0). webssl: the JPEGs as tar shards (`webssl shards build`), then
# `webssl shards bench --recipe dino` = the training loader (tar read, shuffle buffer, decode,
# DataAugmentationDINO in Rust, view-major collation, iBOT masks) with 1 and 2 decode threads.
# PyTorch: data_torch.py = file bytes -> PIL decode + convert("RGB") -> dinov2 DataAugmentationDINO ->
# collate_data_and_cast + MaskingGenerator, in one process (--workers 0) and with a 2-worker
# DataLoader; torch.set_num_threads(1) everywhere. Each side: WARMUP untimed batches, then BATCHES
# timed batches of B; RUNS rounds, the four cells interleaved in each round; medians reported.
#
# Knobs (environment): N (images, 256), B (batch, 32), BATCHES (timed batches, 8), WARMUP (2),
# RUNS (3), DINOV2 (a dinov2 checkout to import the PyTorch pipeline from; default: the transcription
# in data_torch.py), PY (python3), SKIP_BUILD=1 (use target/release/webssl as it is),
# NO_RECORD=1 (print the table, leave RESULTS.md alone). Caches: bench/.cache/data/ (gitignored).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-python3}
N=${N:-256}
B=${B:-32}
BATCHES=${BATCHES:-8}
WARMUP=${WARMUP:-2}
RUNS=${RUNS:-3}
DINOV2=${DINOV2:-}
CACHE=bench/.cache/data
TARGET=${CARGO_TARGET_DIR:-target}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$CACHE/results/$STAMP.jsonl
mkdir -p "$CACHE/results"

log() { echo "[data-bench $(date -u +%H:%M:%S)] $*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
T_START=$(date +%s)

# --- binary: build, then snapshot it so a concurrent rebuild cannot swap it mid-benchmark ---------
# With nasm installed, libjpeg-turbo's SIMD decoder (same pixels, ~3x the C-only decode rate).
FEATURES=$(command -v nasm > /dev/null && echo jpeg-simd || true)
if [[ -z ${SKIP_BUILD:-} ]]; then
    log "cargo build --release -p webssl-cli ${FEATURES:+--features $FEATURES}"
    cargo build --release -p webssl-cli ${FEATURES:+--features "$FEATURES"}
fi
cp -p "$TARGET/release/webssl" "$CACHE/webssl.new" && mv "$CACHE/webssl.new" "$CACHE/webssl"
BIN=$CACHE/webssl
BUILD_INFO="binary built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC')${SKIP_BUILD:+ (SKIP_BUILD: prebuilt)}; tree: commit $(git rev-parse --short HEAD) +$(git status --porcelain -- crates Cargo.toml Cargo.lock | wc -l) uncommitted paths under crates/, Cargo.*"

# --- images and shards (cached, deterministic) ---------------------------------------------------
IMG=$CACHE/jpg-$N
if [[ ! -f $CACHE/list-$N.txt ]]; then
    log "making $N JPEGs"
    "$PY" bench/make_data_images.py --out "$IMG" --list "$CACHE/list-$N.txt.tmp" --count "$N"
    mv "$CACHE/list-$N.txt.tmp" "$CACHE/list-$N.txt"
fi
SHARDS=$CACHE/shards-$N
if [[ ! -f $SHARDS/index.json ]]; then
    log "webssl shards build"
    rm -rf "$SHARDS"
    "$BIN" --log warn shards build --input "$IMG" --output "$SHARDS" --max-samples 64
fi

# --- runs (the four cells interleaved per round, so they share the machine's load) ---------------
TORCH_ARGS=(--list "$CACHE/list-$N.txt" --batch-size "$B" --batches "$BATCHES" --warmup "$WARMUP")
[[ -n $DINOV2 ]] && TORCH_ARGS+=(--dinov2 "$DINOV2")
T_BENCH=$(date +%s)
LOAD_BEFORE=$(loadavg)
log "load before: $LOAD_BEFORE"
for r in $(seq 1 "$RUNS"); do
    for t in 1 2; do
        log "round $r: webssl shards bench --threads $t"
        json=$("$BIN" --log warn shards bench "$SHARDS" --threads "$t" --batches "$BATCHES" \
            --warmup "$WARMUP" --batch-size "$B" --recipe dino --n-local 8 --json)
        echo "{\"side\": \"webssl\", \"cores\": $t, \"round\": $r, \"load\": \"$(loadavg)\", \"result\": $json}" >> "$RESULTS"
    done
    for w in 0 2; do
        log "round $r: data_torch.py --workers $w"
        json=$("$PY" bench/data_torch.py "${TORCH_ARGS[@]}" --workers "$w")
        cores=$(( w == 0 ? 1 : w ))
        echo "{\"side\": \"torch\", \"cores\": $cores, \"round\": $r, \"load\": \"$(loadavg)\", \"result\": $json}" >> "$RESULTS"
    done
done
LOAD_AFTER=$(loadavg)
log "load after: $LOAD_AFTER"
T_END=$(date +%s)

# --- report --------------------------------------------------------------------------------------
CMD="bash bench/data.sh"
args=(--results "$RESULTS" --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER"
      --wall-s $(( T_END - T_START )) --bench-s $(( T_END - T_BENCH )) --build-info "$BUILD_INFO"
      --command "N=$N B=$B BATCHES=$BATCHES WARMUP=$WARMUP RUNS=$RUNS${DINOV2:+ DINOV2=$DINOV2}${SKIP_BUILD:+ SKIP_BUILD=1} $CMD")
[[ -z ${NO_RECORD:-} ]] && args+=(--record bench/RESULTS.md)
"$PY" bench/data_report.py "${args[@]}"
