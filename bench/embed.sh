#!/usr/bin/env bash
# Side-by-side embed benchmark: `webssl embed` vs transformers `Dinov2Model` (sdpa) on CPU.
#
#   bash bench/embed.sh            # build, run everything (~12 min on a quiet 2-core machine), append to bench/RESULTS.md
#
# Knobs (environment): THREADS (2), RUNS (timed runs per cell, median reported; 3), MODELS
# ("vit-small web-dino-300m"), BATCHES ("8 32"), N_SMALL (images for vit-small; 64), N_LARGE (images
# for the other models, at least one batch; 16), PY (python3), SKIP_BUILD=1 (use the
# binary already in target/release), NO_RECORD=1 (print the table, leave RESULTS.md alone).
#
# What is measured (see bench/README.md): for each model x batch, RUNS pairs of fresh processes, ours
# and torch back to back in alternating order (ours: after one untimed warm-up process on 8 images;
# torch: one untimed warm-up batch of 8 images in-process), over the same JPEG list, same preprocessing (HF
# BitImageProcessor PIL path: shortest edge 256 bicubic, center crop 224), both on THREADS threads.
# Peak RSS from /usr/bin/time -v. Caches (binary snapshot, random models, images, raw results) live
# in bench/.cache/ (gitignored).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-python3}
THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
MODELS=${MODELS:-"vit-small web-dino-300m"}
BATCHES=${BATCHES:-"8 32"}
N_SMALL=${N_SMALL:-64}
N_LARGE=${N_LARGE:-16}
CACHE=bench/.cache
TARGET=${CARGO_TARGET_DIR:-target}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$CACHE/results/$STAMP.jsonl
TMP=$CACHE/tmp/$STAMP
mkdir -p "$CACHE/bin" "$CACHE/models" "$CACHE/results" "$CACHE/out" "$TMP"
N_MAX=$(( N_SMALL > 32 ? N_SMALL : 32 ))

log() { echo "[bench $(date -u +%H:%M:%S)] $*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# --- binary: build, then snapshot it so a concurrent rebuild cannot swap it mid-benchmark ---------
# With nasm installed, libjpeg-turbo's SIMD decoder (same pixels, ~3x the C-only decode rate).
FEATURES=$(command -v nasm > /dev/null && echo jpeg-simd || true)
if [[ -z ${SKIP_BUILD:-} ]]; then
    log "cargo build --release -p webssl-cli ${FEATURES:+--features $FEATURES}"
    cargo build --release -p webssl-cli ${FEATURES:+--features "$FEATURES"}
fi
cp -p "$TARGET/release/webssl" "$CACHE/bin/webssl.new" && mv "$CACHE/bin/webssl.new" "$CACHE/bin/webssl"
BIN=$CACHE/bin/webssl
# what was measured: the tree the binary came from (others may commit while the benchmark runs)
BUILD_INFO="binary built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC')${SKIP_BUILD:+ (SKIP_BUILD: prebuilt, not rebuilt)}; tree at snapshot: commit $(git rev-parse --short HEAD) +$(git status --porcelain -- crates Cargo.toml Cargo.lock | wc -l) uncommitted paths under crates/, Cargo.*"

# --- random models (cached) ----------------------------------------------------------------------
for arch in $MODELS; do
    if [[ ! -f $CACHE/models/$arch/model.safetensors ]]; then
        log "webssl model init --arch $arch"
        "$BIN" --log warn model init --arch "$arch" --out "$CACHE/models/$arch" --seed 0
    fi
done

# --- images (cached, deterministic) --------------------------------------------------------------
if [[ ! -f $CACHE/images/first-$N_MAX.txt || ! -f $CACHE/images/png-8.txt ]]; then
    "$PY" bench/make_images.py --out "$CACHE/images" --count "$N_MAX"
fi
list_of() {  # list_of N -> path of a list with the first N images
    local l=$CACHE/images/first-$1.txt
    [[ -f $l ]] || head -n "$1" "$CACHE/images/first-$N_MAX.txt" > "$l"
    echo "$l"
}

rss_kib() { awk -F': ' '/Maximum resident set size/ {print $2}' "$1"; }

# --- parity: same CLS features on 8 images, with LayerScale 1 so that every block counts ----------
# on the JPEGs (includes the JPEG decoder difference) and on PNGs of Pillow's decode (identical pixels)
for arch in $MODELS; do
    pdir=$CACHE/models/$arch-ls1
    [[ -f $pdir/model.safetensors ]] || "$PY" bench/parity_model.py --src "$CACHE/models/$arch" --out "$pdir"
    for kind in first png; do
        plist=$CACHE/images/$kind-8.txt
        o=$CACHE/out/parity-ours-$arch-$kind.safetensors
        t=$CACHE/out/parity-torch-$arch-$kind.npy
        RAYON_NUM_THREADS=$THREADS "$BIN" --log warn embed --model "$pdir" --input "$plist" \
            --output "$o" --batch-size 8 --threads "$THREADS" --features cls > /dev/null
        OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PY" bench/embed_torch.py --model "$pdir" \
            --list "$plist" --batch-size 8 --threads "$THREADS" --runs 1 --save-cls "$t" > /dev/null 2>&1
        what=$([[ $kind == png ]] && echo "PNG, same pixels" || echo "JPEG")
        printf '{"impl":"parity","model":"%s (LayerScale 1, %s)","ours":"%s","torch":"%s"}\n' \
            "$arch" "$what" "$o" "$t" >> "$RESULTS"
    done
    log "parity $arch done"
done

# --- runs ----------------------------------------------------------------------------------------
# Each timed run is a pair of processes, ours and torch, back to back, in alternating order (ABBA...):
# on a shared machine the load drifts by minutes, and a pair sees about the same load, so the
# per-pair ratio is far steadier than a ratio of two separately taken medians.
run_ours() {  # run_ours r
    local load line secs done_n
    load=$(loadavg)
    /usr/bin/time -v -o "$TMP/time.txt" env RAYON_NUM_THREADS="$THREADS" \
        "$BIN" --log warn embed --model "$dir" --input "$list" --output "$out" \
        --batch-size "$b" --threads "$THREADS" --features cls > "$TMP/ours.txt"
    line=$(grep '^embedded' "$TMP/ours.txt")
    secs=$(sed -E 's/.* in ([0-9.]+)s,.*/\1/' <<< "$line")
    done_n=$(sed -E 's/^embedded ([0-9]+) images.*/\1/' <<< "$line")
    [[ $done_n == "$n" ]] || { echo "ours embedded $done_n of $n images: $line" >&2; exit 1; }
    log "ours  $arch b$b run $1: $line (load $load)"
    printf '{"impl":"ours","model":"%s","batch":%d,"images":%d,"run":%d,"e2e_s":%s,"rss_kib":%d,"load":"%s","out":"%s"}\n' \
        "$arch" "$b" "$n" "$1" "$secs" "$(rss_kib "$TMP/time.txt")" "$load" "$out" >> "$RESULTS"
}
run_torch() {  # run_torch r: one process, untimed warm-up batch of 8 images, one timed pass
    local json
    /usr/bin/time -v -o "$TMP/time.txt" env OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" \
        "$PY" bench/embed_torch.py --model "$dir" --list "$list" --batch-size "$b" --warmup-images 8 \
        --threads "$THREADS" --runs 1 --save-cls "$CACHE/out/torch-$arch-b$b.npy" > "$TMP/torch.txt" 2> "$TMP/torch.err" \
        || { cat "$TMP/torch.err" >&2; exit 1; }
    json=$(tail -n 1 "$TMP/torch.txt")
    log "torch $arch b$b run $1: $(grep '^torch:' "$TMP/torch.err") (load $(sed -E 's/.*"load": "([^"]*)".*/\1/' <<< "$json"))"
    printf '{"impl":"torch","model":"%s","batch":%d,"images":%d,"run":%d,"rss_kib":%d,"cls":"%s","result":%s}\n' \
        "$arch" "$b" "$n" "$1" "$(rss_kib "$TMP/time.txt")" "$CACHE/out/torch-$arch-b$b.npy" "$json" >> "$RESULTS"
}

log "load before: $(loadavg)"
LOAD_BEFORE=$(loadavg)
T_START=$(date +%s)
for arch in $MODELS; do
    dir=$CACHE/models/$arch
    for b in $BATCHES; do
        if [[ $arch == vit-small ]]; then n=$N_SMALL; else n=$(( N_LARGE > b ? N_LARGE : b )); fi
        list=$(list_of "$n")
        out=$CACHE/out/ours-$arch-b$b.safetensors
        # ours' untimed warm-up process on 8 images (page cache, CPU clocks); torch warms up in-process
        RAYON_NUM_THREADS=$THREADS "$BIN" --log warn embed --model "$dir" --input "$(list_of 8)" \
            --output "$TMP/warmup.safetensors" --batch-size "$b" --threads "$THREADS" --features cls > /dev/null
        for r in $(seq 1 "$RUNS"); do
            if (( r % 2 )); then run_ours "$r"; run_torch "$r"; else run_torch "$r"; run_ours "$r"; fi
        done
    done
done
T_END=$(date +%s)
LOAD_AFTER=$(loadavg)
log "load after: $LOAD_AFTER"

# --- report --------------------------------------------------------------------------------------
args=(--results "$RESULTS" --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER" --wall-s $(( T_END - T_START ))
      --build-info "$BUILD_INFO"
      --settings "THREADS=$THREADS RUNS=$RUNS MODELS='$MODELS' BATCHES='$BATCHES' N_SMALL=$N_SMALL N_LARGE=$N_LARGE${SKIP_BUILD:+ SKIP_BUILD=1}")
[[ -z ${NO_RECORD:-} ]] && args+=(--record bench/RESULTS.md)
"$PY" bench/report.py "${args[@]}"
