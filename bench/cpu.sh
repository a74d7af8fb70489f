#!/usr/bin/env bash
# CPU speed benchmark of the backbone itself (no data pipeline): ours (burn-flex, fused kernels on
# and off) vs PyTorch (transformers Dinov2Model, sdpa), same shapes, random weights, same threads.
#
#   bash bench/cpu.sh        # build, run, print the table, append it to bench/RESULTS.md
#
# Knobs (environment): THREADS (2), ARCHS ("vit-small web-dino-300m"), BATCHES (for every arch;
# default per arch: BATCHES_SMALL "8 32" for vit-small, BATCHES_LARGE "8" for the others), MODES
# ("infer train"), RUNS (paired runs per cell for vit-small; 3), RUNS_LARGE (for the other archs; 1),
# ITERS (timed iterations per process for vit-small; 4), ITERS_LARGE (2), PY (python3),
# SKIP_BUILD=1 (use the example binary already built), NO_RECORD=1 (leave RESULTS.md alone).
#
# Per cell (arch x batch x mode) and run r: three fresh processes back to back, in rotating order —
# ours fused, ours unfused (WEBSSL_FUSED_KERNELS=0), torch — each with one untimed warm-up
# iteration then ITERS timed ones (median per process). Ratios are taken within a run (the three
# processes see about the same machine load) and the table reports the medians over runs.
# "% of GEMM peak" = model FLOPs / time / the best 1024^3 f32 GEMM rate measured at the start of this
# run (ours and torch, 2 threads). The load average is recorded before every process.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-python3}
THREADS=${THREADS:-2}
ARCHS=${ARCHS:-"vit-small web-dino-300m"}
BATCHES=${BATCHES:-}
BATCHES_SMALL=${BATCHES_SMALL:-"8 32"}
BATCHES_LARGE=${BATCHES_LARGE:-"8"}
MODES=${MODES:-"infer train"}
RUNS=${RUNS:-3}
RUNS_LARGE=${RUNS_LARGE:-1}
ITERS=${ITERS:-4}
ITERS_LARGE=${ITERS_LARGE:-2}
CACHE=bench/.cache
TARGET=${CARGO_TARGET_DIR:-target}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$CACHE/results/cpu-$STAMP.jsonl
mkdir -p "$CACHE/bin" "$CACHE/results"

TAG=cpu
source bench/cpu_common.sh
build_example webssl-models cpu_bench

ours() {  # ours fused|unfused arch batch mode iters
    local load fused=1
    [[ $1 == unfused ]] && fused=0
    load=$(loadavg)
    record "ours $1 $2 b$3 $4" "$(WEBSSL_FUSED_KERNELS=$fused RAYON_NUM_THREADS=$THREADS "$BIN" --arch "$2" --batch "$3" --mode "$4" --iters "$5" --warmup 1 || true)" "$load"
}
torch() {  # torch arch batch mode iters
    local load
    load=$(loadavg)
    record "torch $1 b$2 $3" "$(OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PY" bench/cpu_torch.py --arch "$1" --batch "$2" --mode "$3" --iters "$4" --warmup 1 --threads "$THREADS" || true)" "$load"
}

LOAD_BEFORE=$(loadavg)
T_START=$(date +%s)
ours fused vit-small 1 gemm 30
torch vit-small 1 gemm 30
for arch in $ARCHS; do
    if [[ $arch == vit-small ]]; then runs=$RUNS; iters=$ITERS; batches=${BATCHES:-$BATCHES_SMALL}
    else runs=$RUNS_LARGE; iters=$ITERS_LARGE; batches=${BATCHES:-$BATCHES_LARGE}; fi
    for b in $batches; do
        for mode in $MODES; do
            for r in $(seq 1 "$runs"); do
                case $(( r % 3 )) in
                    1) ours fused "$arch" "$b" "$mode" "$iters"; ours unfused "$arch" "$b" "$mode" "$iters"; torch "$arch" "$b" "$mode" "$iters" ;;
                    2) torch "$arch" "$b" "$mode" "$iters"; ours fused "$arch" "$b" "$mode" "$iters"; ours unfused "$arch" "$b" "$mode" "$iters" ;;
                    0) ours unfused "$arch" "$b" "$mode" "$iters"; torch "$arch" "$b" "$mode" "$iters"; ours fused "$arch" "$b" "$mode" "$iters" ;;
                esac
            done
        done
    done
done
T_END=$(date +%s)
LOAD_AFTER=$(loadavg)

args=(--results "$RESULTS" --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER" --wall-s $(( T_END - T_START ))
      --build-info "$BUILD_INFO"
      --settings "THREADS=$THREADS ARCHS='$ARCHS' BATCHES='${BATCHES:-vit-small: $BATCHES_SMALL, others: $BATCHES_LARGE}' MODES='$MODES' RUNS=$RUNS RUNS_LARGE=$RUNS_LARGE ITERS=$ITERS ITERS_LARGE=$ITERS_LARGE")
report "${args[@]}"
