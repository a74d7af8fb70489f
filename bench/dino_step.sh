#!/usr/bin/env bash
# CPU speed of a full DINOv2 training step: ours (crates/webssl-train/examples/dino_step.rs, the trainer's
# code path, fused kernels on and off) vs dinov2's SSLMetaArch step in PyTorch eager mode
# (bench/dino_step_torch.py), same recipe and shapes (2 global 224 px + 8 local 98 px crops, DINO +
# iBOT + KoLeo with Sinkhorn-Knopp targets, backward, per-module grad clipping, AdamW, EMA teacher),
# random weights and random input tensors, same threads.
#
#   bash bench/dino_step.sh        # build, run, print the table, append it to bench/RESULTS.md
#   DINOV2=/path/to/dinov2 bash bench/dino_step.sh   # import dinov2's own modules (see dino_step_torch.py)
#
# Knobs (environment): THREADS (2), ARCHS ("vit-small"; also "web-dino-300m"), BATCHES ("8"), RUNS
# (paired runs per cell for vit-small; 3), RUNS_LARGE (other archs; 1), ITERS (timed iterations per
# process for vit-small; 3), ITERS_LARGE (2), UNFUSED (1: also run ours with WEBSSL_FUSED_KERNELS=0),
# DINOV2 (a dinov2 checkout at b8931f7b; default: the transcription), PY (python3),
# SKIP_BUILD=1 (use the example binary already built), NO_RECORD=1 (leave RESULTS.md alone).
#
# Protocol as bench/cpu.sh: per cell (arch x batch) and run r, fresh processes back to back in
# rotating order — ours fused, [ours unfused,] torch — each with one untimed warm-up step, then
# ITERS timed steps (median per process). Ratios are taken within a run and the table reports their
# median over runs. "% of GEMM peak" = FLOPs of the GEMMs of one step (counted by dino_step.rs: teacher
# forward, student forward on the kept stochastic-depth subset, backward at 2x; the same useful work
# for both sides) / step time / the best 1024^3 f32 GEMM rate measured at the start of this run.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-python3}
THREADS=${THREADS:-2}
ARCHS=${ARCHS:-"vit-small"}
BATCHES=${BATCHES:-"8"}
RUNS=${RUNS:-3}
RUNS_LARGE=${RUNS_LARGE:-1}
ITERS=${ITERS:-3}
ITERS_LARGE=${ITERS_LARGE:-2}
UNFUSED=${UNFUSED:-1}
DINOV2=${DINOV2:-}
CACHE=bench/.cache
TARGET=${CARGO_TARGET_DIR:-target}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$CACHE/results/dino-step-$STAMP.jsonl
mkdir -p "$CACHE/bin" "$CACHE/results"

TAG=dino_step
source bench/cpu_common.sh
config() {
    case $1 in
        vit-small) echo configs/vit-s.toml ;;
        web-dino-300m) echo configs/web-dino-300m.toml ;;
        *) echo "no config for arch $1" >&2; exit 2 ;;
    esac
}

build_example webssl-train dino_step
TORCH_ARGS=()
[[ -n $DINOV2 ]] && TORCH_ARGS+=(--dinov2 "$DINOV2")

ours() {  # ours fused|unfused arch batch iters
    local load fused=1
    [[ $1 == unfused ]] && fused=0
    load=$(loadavg)
    record "ours $1 $2 b$3" "$(WEBSSL_FUSED_KERNELS=$fused RAYON_NUM_THREADS=$THREADS "$BIN" --config "$(config "$2")" --batch "$3" --iters "$4" --warmup 1 || true)" "$load"
}
torch() {  # torch arch batch iters
    local load
    load=$(loadavg)
    record "torch $1 b$2" "$(OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PY" bench/dino_step_torch.py --arch "$1" --batch "$2" --iters "$3" --warmup 1 --threads "$THREADS" "${TORCH_ARGS[@]}" 2>/dev/null || true)" "$load"
}
unfused() { [[ $UNFUSED == 1 ]] && ours unfused "$@" || true; }

LOAD_BEFORE=$(loadavg)
T_START=$(date +%s)
record "ours gemm" "$(RAYON_NUM_THREADS=$THREADS "$BIN" --mode gemm --iters 30)" "$(loadavg)"
record "torch gemm" "$(OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PY" bench/cpu_torch.py --mode gemm --iters 30 --threads "$THREADS")" "$(loadavg)"
for arch in $ARCHS; do
    if [[ $arch == vit-small ]]; then runs=$RUNS; iters=$ITERS; else runs=$RUNS_LARGE; iters=$ITERS_LARGE; fi
    for b in $BATCHES; do
        for r in $(seq 1 "$runs"); do
            case $(( r % 3 )) in
                1) ours fused "$arch" "$b" "$iters"; unfused "$arch" "$b" "$iters"; torch "$arch" "$b" "$iters" ;;
                2) torch "$arch" "$b" "$iters"; ours fused "$arch" "$b" "$iters"; unfused "$arch" "$b" "$iters" ;;
                0) unfused "$arch" "$b" "$iters"; torch "$arch" "$b" "$iters"; ours fused "$arch" "$b" "$iters" ;;
            esac
        done
    done
done
T_END=$(date +%s)
LOAD_AFTER=$(loadavg)

args=(--results "$RESULTS" --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER" --wall-s $(( T_END - T_START ))
      --build-info "$BUILD_INFO" --title "DINOv2 step benchmark (\`bench/dino_step.sh\`)" --command "bash bench/dino_step.sh"
      --settings "THREADS=$THREADS ARCHS='$ARCHS' BATCHES='$BATCHES' RUNS=$RUNS RUNS_LARGE=$RUNS_LARGE ITERS=$ITERS ITERS_LARGE=$ITERS_LARGE UNFUSED=$UNFUSED${DINOV2:+ DINOV2=$DINOV2}")
report "${args[@]}"
