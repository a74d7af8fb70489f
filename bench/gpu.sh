#!/usr/bin/env bash
# The CUDA path, checked and timed on one NVIDIA GPU in a few minutes (see bench/README.md, "gpu.sh"):
#
#   (a) parity: a random ViT-S/14 (`webssl model init`, LayerScale set to 1 so every block counts)
#       embedded by `webssl embed` on the CPU and on CUDA; max abs diff and min cosine of the CLS
#       and patch tokens, pass/fail against a stated tolerance;
#       — in f32, and with bf16 products (`--precision bf16`) against the same CPU f32 output;
#   (b) training: DINOv2 steps on CUDA (`webssl pretrain dino --config configs/demo.toml --device cuda
#       --set ...`) for ViT-S/14 and ViT-L/14 (DINO_ARCHES) at batch 32, in bf16 with f32 master
#       weights (`run.precision="bf16"`), then in f32; loss finiteness, img/s, model FLOP
#       utilisation (MFU, gpu_torch.py `dino_flops_per_image`) and peak GPU memory (nvidia-smi);
#   (c) speed vs PyTorch on the same GPU: `webssl embed` (f32, bf16) vs transformers `Dinov2Model`
#       (sdpa, f32 and bf16 autocast), and the DINO step vs a DINOv2-like torch step on the same
#       shapes (f32 and bf16 autocast), dtype against dtype; ratios printed and appended to
#       bench/RESULTS.md.
#
#   bash bench/gpu.sh                  # on the GPU machine
#   bash bench/gpu.sh --cpu-smoke      # dry run of the whole script on the CPU with tiny sizes
#                                      # (same as DEVICE=cpu)
#
# The binary: WEBSSL_BIN=path, else SKIP_BUILD=1 (or no cargo on this machine) uses
# target/release/webssl as it is, else `cargo build --release -p webssl-cli --features cuda --locked`
# (DEVICE=cpu: without `--features cuda`). The CUDA build needs only the package registries (cubecl-cuda
# is vendored without LLVM, vendor/README.md), but a GPU machine without network or cargo cannot build:
# build here and bring target/release/webssl (the device tool carries it as an ignored path). At run
# time the GPU machine needs the NVIDIA driver, NVRTC and the CUDA headers (a CUDA install or the pip
# wheels; docs/usage.md, "GPU"). The weights are made here (`webssl model init`), nothing downloads.
#
# Knobs (environment): DEVICE (cuda), PY (python3; its torch + transformers are used when present,
# else the PyTorch side is skipped with a message), ARCH (vit-small: parity and embed), DINO_ARCHES
# ("vit-small vit-large"), PARITY_IMAGES (16), EMBED_IMAGES
# (1024), EMBED_BATCH (64), DINO_BATCH (32), DINO_STEPS (12), DINO_WARMUP (4), GLOBAL (224), LOCAL (98),
# N_LOCAL (8), PROTOS (65536), HIDDEN (2048), BOTTLENECK (256), WORKERS (cores − 2), SYNTH_SIZE (256),
# TORCH_STEPS (10), STEP_TIMEOUT (150 s per step), BUDGET (390 s for all checks together, build
# excluded: with data generation and a cold start the script stays within 8 minutes), DINO_PRECISIONS
# ("bf16 f32", in order of priority), EMBED_PRECISIONS ("f32 bf16"),
# NO_RECORD=1 (print only; default for DEVICE=cpu).
set -euo pipefail

for arg in "$@"; do
    case $arg in
        --cpu-smoke) DEVICE=cpu ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "bench/gpu.sh: unknown argument '$arg' (--cpu-smoke, --help; knobs are environment variables)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
CORES=$(nproc)
if [[ $DEVICE == cpu ]]; then
    # Dry run: every step of the script on tiny shapes, so it is known to run end to end.
    ARCH=${ARCH:-vit-small}; PARITY_IMAGES=${PARITY_IMAGES:-4}; EMBED_IMAGES=${EMBED_IMAGES:-8}
    EMBED_BATCH=${EMBED_BATCH:-4}; DINO_BATCH=${DINO_BATCH:-2}; DINO_STEPS=${DINO_STEPS:-3}
    DINO_WARMUP=${DINO_WARMUP:-1}; GLOBAL=${GLOBAL:-56}; LOCAL=${LOCAL:-28}; N_LOCAL=${N_LOCAL:-2}
    PROTOS=${PROTOS:-256}; HIDDEN=${HIDDEN:-128}; BOTTLENECK=${BOTTLENECK:-64}; DEPTH=${DEPTH:-2}
    SYNTH_SIZE=${SYNTH_SIZE:-64}; TORCH_STEPS=${TORCH_STEPS:-2}; TORCH_ITERS=${TORCH_ITERS:-2}
    NO_RECORD=${NO_RECORD:-1}
    # Every step must run, however slow this CPU is: the budget is the GPU run's, not the smoke's.
    BUDGET=${BUDGET:-3600}
    TORCH_DEVICE=cpu
elif [[ $DEVICE == cuda ]]; then
    TORCH_DEVICE=cuda
else
    echo "DEVICE must be cuda or cpu, not '$DEVICE'" >&2
    exit 2
fi
ARCH=${ARCH:-vit-small}
PARITY_IMAGES=${PARITY_IMAGES:-16}
EMBED_IMAGES=${EMBED_IMAGES:-1024}
EMBED_BATCH=${EMBED_BATCH:-64}
DINO_ARCHES=${DINO_ARCHES:-"vit-small vit-large"}
DINO_BATCH=${DINO_BATCH:-32}
DINO_STEPS=${DINO_STEPS:-12}
DINO_WARMUP=${DINO_WARMUP:-4}
GLOBAL=${GLOBAL:-224}
LOCAL=${LOCAL:-98}
N_LOCAL=${N_LOCAL:-8}
PROTOS=${PROTOS:-65536}
HIDDEN=${HIDDEN:-2048}
BOTTLENECK=${BOTTLENECK:-256}
DEPTH=${DEPTH:-0}
WORKERS=${WORKERS:-$(( CORES > 4 ? CORES - 2 : 2 ))}
SYNTH_SIZE=${SYNTH_SIZE:-256}
TORCH_STEPS=${TORCH_STEPS:-10}
TORCH_ITERS=${TORCH_ITERS:-20}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
DINO_PRECISIONS=${DINO_PRECISIONS:-"bf16 f32"}
EMBED_PRECISIONS=${EMBED_PRECISIONS:-"f32 bf16"}
CACHE=bench/.cache/gpu
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$CACHE/results-$DEVICE-$STAMP.jsonl
mkdir -p "$CACHE"
T0=$(date +%s)

log() { echo "[gpu $(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*" >&2; }
emit() { printf '%s\n' "$1" >> "$RESULTS"; }  # one JSON object per line
tagged() { local j; j=$(tail -n 1 <<< "$2"); printf '%s\n' "{\"tag\":\"$1\",${j#\{}" >> "$RESULTS"; }
jstr() { "$PY" -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

# ---- binary ---------------------------------------------------------------------------------------
FEATURES=()
[[ $DEVICE == cuda ]] && FEATURES=(--features cuda)
if [[ -n ${WEBSSL_BIN:-} ]]; then
    BIN=$WEBSSL_BIN
    BUILD_NOTE="prebuilt $BIN"
elif [[ -n ${SKIP_BUILD:-} ]] || ! command -v cargo >/dev/null; then
    BIN=${CARGO_TARGET_DIR:-target}/release/webssl
    BUILD_NOTE="not rebuilt (SKIP_BUILD or no cargo): $BIN as it was"
else
    log "cargo build --release -p webssl-cli ${FEATURES[*]} --locked"
    tb=$(date +%s)
    cargo build --release -p webssl-cli "${FEATURES[@]}" --locked
    BIN=${CARGO_TARGET_DIR:-target}/release/webssl
    BUILD_NOTE="built here in $(( $(date +%s) - tb )) s"
    T0=$(date +%s)  # the budget is for the checks, not the build
fi
[[ -x $BIN ]] || { echo "no webssl binary at $BIN (set WEBSSL_BIN or build it)" >&2; exit 2; }
# snapshot, so a concurrent rebuild cannot swap the binary mid-run
cp -p "$BIN" "$CACHE/webssl.new" && mv "$CACHE/webssl.new" "$CACHE/webssl"
W=$CACHE/webssl
BUILD_INFO="$BUILD_NOTE; binary dated $(date -u -r "$W" '+%Y-%m-%d %H:%M UTC'); tree: commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') +$(git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null | wc -l) uncommitted paths under crates/, Cargo.*"

if [[ $DEVICE == cuda ]]; then
    # A binary built without `--features cuda` refuses `--device cuda` before touching any file.
    pre=$("$W" --device cuda embed --model "$CACHE/none" --input "$CACHE/none" --output "$CACHE/none.safetensors" 2>&1 || true)
    if [[ $pre == *"built without CUDA support"* ]]; then
        echo "$W was built without the cuda feature: cargo build --release -p webssl-cli --features cuda" >&2
        exit 2
    fi
    GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1 || true)
    [[ -n $GPU ]] || log "warning: nvidia-smi found no GPU; the CUDA steps will fail if there is none"
    MACHINE="GPU: ${GPU:-unknown}; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $CORES cores"
else
    MACHINE="CPU dry run: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $CORES cores"
fi

# ---- PyTorch available? ---------------------------------------------------------------------------
TORCH_SKIP=""
probe=$("$PY" bench/gpu_torch.py probe --device "$TORCH_DEVICE" 2>/dev/null) || TORCH_SKIP=probe
TORCH_VER=$(tail -n 1 <<< "$probe")
if [[ -n $TORCH_SKIP ]]; then
    TORCH_SKIP=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["skip"])' "$TORCH_VER" 2>/dev/null \
        || echo "the probe ($PY bench/gpu_torch.py probe) failed")
    log "PyTorch side SKIPPED: $TORCH_SKIP (pip needs the network, which this machine does not have; the webssl side still runs)"
else
    log "PyTorch side: $TORCH_VER"
fi

# ---- data and models ------------------------------------------------------------------------------
IMAGES=$CACHE/images-$SYNTH_SIZE
if [[ ! -f $IMAGES/index.json ]]; then
    log "webssl synth: $EMBED_IMAGES images of ${SYNTH_SIZE}px"
    "$W" synth --out "$IMAGES" --samples "$EMBED_IMAGES" --size "$SYNTH_SIZE" --seed 7 --split img
fi
MODEL=$CACHE/$ARCH-init
MODEL1=$CACHE/$ARCH-ls1
if [[ ! -f $MODEL1/model.safetensors ]]; then
    log "webssl model init --arch $ARCH; LayerScale -> 1 for the parity model"
    "$W" model init --arch "$ARCH" --out "$MODEL" --seed 0
    "$PY" bench/gpu_torch.py layerscale1 --src "$MODEL" --out "$MODEL1" >&2
fi
PARITY_SET=$CACHE/parity-$PARITY_IMAGES
if [[ ! -f $PARITY_SET/index.json ]]; then
    "$W" synth --out "$PARITY_SET" --samples "$PARITY_IMAGES" --size "$SYNTH_SIZE" --seed 7 --split img
fi

# Every step below is bounded by its own timeout and by what is left of BUDGET (300 s from here on the
# GPU machine; the build is not in it), most important first: parity, our DINO steps, our embed, then
# the PyTorch references. A step that fails or times out is logged and recorded; the others still run
# and the report is written. Exit status: 1 if the parity check or one of our steps failed.
BUDGET=${BUDGET:-390}
TB=$(date +%s)
FAILED=()
tmo() {  # tmo SECONDS: min(SECONDS, what is left of the budget), at least 1
    local left=$(( BUDGET - ( $(date +%s) - TB ) ))
    (( left < 1 )) && left=1
    echo $(( $1 < left ? $1 : left ))
}
over() { (( $(date +%s) - TB >= BUDGET )); }
# Peak GPU memory of our runs: nvidia-smi's memory.used (the whole process: CUDA context, CubeCL's
# memory pools, workspaces), sampled every 0.2 s while a run lasts; "null" on the CPU.
MEMW=""
MEMF=$CACHE/mem-peak
mem_start() {
    echo null > "$MEMF"
    [[ $DEVICE == cuda ]] && command -v nvidia-smi >/dev/null || return 0
    (
        peak=0
        while :; do
            u=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "${GPU_INDEX:-0}" 2>/dev/null | head -n 1 | tr -d ' ')
            if [[ $u =~ ^[0-9]+$ ]] && (( u > peak )); then peak=$u; echo "$peak" > "$MEMF"; fi
            sleep 0.2
        done
    ) &
    MEMW=$!
}
mem_stop() {  # prints the peak in MiB, or null
    if [[ -n $MEMW ]]; then kill "$MEMW" 2>/dev/null || true; wait "$MEMW" 2>/dev/null || true; MEMW=""; fi
    cat "$MEMF"
}
trap '[[ -n $MEMW ]] && kill "$MEMW" 2>/dev/null; true' EXIT

# ---- (a) CUDA vs CPU ------------------------------------------------------------------------------
log "(a) webssl embed on cpu and on $DEVICE ($PARITY_IMAGES images, cls + patch tokens)"
"$W" --device cpu embed --model "$MODEL1" --input "$PARITY_SET" --output "$CACHE/parity-cpu.safetensors" \
    --features cls,patch-tokens --batch-size 8 >&2
rm -f "$CACHE/parity-dev-$DEVICE.safetensors"
timeout "$(tmo "$STEP_TIMEOUT")" "$W" --device "$DEVICE" embed --model "$MODEL1" --input "$PARITY_SET" \
    --output "$CACHE/parity-dev-$DEVICE.safetensors" --features cls,patch-tokens --batch-size 8 >&2 \
    || { log "(a) webssl embed --device $DEVICE FAILED"; FAILED+=("parity embed on $DEVICE"); }
# Tolerance: f32 on both sides, but the GPU sums in another order and CubeCL's matmul may use TF32
# tensor cores for f32 inputs (10-bit mantissa): 12 blocks of that stay within ~1e-2 relative.
# Exact f32 agreement would be ~1e-5 (the CPU vs PyTorch parity in RESULTS.md).
if [[ -f $CACHE/parity-dev-$DEVICE.safetensors ]]; then
    par=$("$PY" bench/gpu_torch.py compare --a "$CACHE/parity-cpu.safetensors" \
        --b "$CACHE/parity-dev-$DEVICE.safetensors" --key cls --key patch_tokens --rtol 2e-2 --min-cos 0.999) \
        || FAILED+=("parity outside tolerance")
    tagged parity "$par"
    log "(a) $(tail -n 1 <<< "$par")"
fi
# bf16 products (8-bit mantissa) on the device against the CPU's f32: ~1e-2 relative per block
# boundary is bf16's own rounding, so the bound is looser; the cosine says the features still agree.
rm -f "$CACHE/parity-dev-$DEVICE-bf16.safetensors"
timeout "$(tmo "$STEP_TIMEOUT")" "$W" --device "$DEVICE" embed --model "$MODEL1" --input "$PARITY_SET" \
    --output "$CACHE/parity-dev-$DEVICE-bf16.safetensors" --features cls,patch-tokens --batch-size 8 \
    --precision bf16 >&2 \
    || { log "(a) webssl embed --device $DEVICE --precision bf16 FAILED"; FAILED+=("bf16 parity embed on $DEVICE"); }
if [[ -f $CACHE/parity-dev-$DEVICE-bf16.safetensors ]]; then
    par=$("$PY" bench/gpu_torch.py compare --a "$CACHE/parity-cpu.safetensors" \
        --b "$CACHE/parity-dev-$DEVICE-bf16.safetensors" --key cls --key patch_tokens --rtol 1e-1 --min-cos 0.99) \
        || FAILED+=("bf16 parity outside tolerance")
    tagged parity_bf16 "$par"
    log "(a) bf16: $(tail -n 1 <<< "$par")"
fi

# ---- (b) DINO steps on the device -----------------------------------------------------------------
SETS=(
    --set "model.layerscale_init=1e-5" --set "data.batch_size=$DINO_BATCH"
    --set "data.num_workers=$WORKERS" --set "data.train=\"$CACHE/dino-data\""
    --set "data.synth.samples=$(( DINO_BATCH * (DINO_STEPS + 2) ))" --set "data.synth.size=$SYNTH_SIZE"
    --set "crops.global_size=$GLOBAL" --set "crops.local_size=$LOCAL" --set "crops.n_local=$N_LOCAL"
    --set "heads.dino_prototypes=$PROTOS" --set "heads.ibot_prototypes=$PROTOS" --set "heads.hidden_dim=$HIDDEN"
    --set "heads.dino_bottleneck_dim=$BOTTLENECK" --set "heads.ibot_bottleneck_dim=$BOTTLENECK"
    --set "optim.total_steps=1000" --set "optim.warmup_steps=10" --set "run.checkpoint_every_steps=0"
)
# configs/demo.toml shortens the backbone (model.depth = 6): set the preset's own depth back, unless DEPTH
# says otherwise (the CPU smoke run).
arch_depth() {
    if [[ $DEPTH != 0 ]]; then echo "$DEPTH"; return; fi
    case $1 in
        vit-tiny|vit-small|vit-base) echo 12 ;;
        vit-large) echo 24 ;;
        *) echo "bench/gpu.sh: DINO_ARCHES has '$1'; known: vit-tiny vit-small vit-base vit-large" >&2; exit 2 ;;
    esac
}
for arch in $DINO_ARCHES; do arch_depth "$arch" >/dev/null; done
# The shapes gpu_torch.py needs for the FLOP count (MFU) and the PyTorch step: the same on both sides.
SHAPE=(--depth "$DEPTH" --batch "$DINO_BATCH" --global-size "$GLOBAL" --local-size "$LOCAL" --n-local "$N_LOCAL"
       --prototypes "$PROTOS" --hidden "$HIDDEN" --bottleneck "$BOTTLENECK")
for prec in $DINO_PRECISIONS; do
  for arch in $DINO_ARCHES; do
    if over; then log "(b) budget spent: webssl DINO steps $arch $prec skipped"; continue; fi
    RUN=$CACHE/dino-$DEVICE-$arch-$prec
    rm -rf "$RUN"
    log "(b) webssl pretrain dino --device $DEVICE, $arch, $prec products: $DINO_STEPS steps, batch $DINO_BATCH, ${GLOBAL}px x2 + ${LOCAL}px x$N_LOCAL, $PROTOS prototypes"
    # The training data is generated by the first run itself (data.synth) before step 0, outside the
    # step timings; --stop-after ends the run with a checkpoint and without the export and kNN.
    mem_start
    timeout "$(tmo $(( STEP_TIMEOUT * 2 )))" "$W" --device "$DEVICE" pretrain dino --config configs/demo.toml \
        "${SETS[@]}" --set "model.arch=\"$arch\"" --set "model.depth=$(arch_depth "$arch")" --set "run.dir=\"$RUN\"" --set "run.precision=\"$prec\"" \
        --resume never --stop-after "$DINO_STEPS" > "$RUN.log" 2>&1 \
        || { log "(b) webssl pretrain ($arch $prec) FAILED or timed out; last lines of $RUN.log:"
             tail -n 20 "$RUN.log" >&2; FAILED+=("pretrain dino $arch $prec on $DEVICE"); }
    mem=$(mem_stop)
    dm=$("$PY" bench/gpu_torch.py dino-metrics --run "$RUN" --warmup "$DINO_WARMUP" \
        --gpu-peak-mib "$mem" "${SHAPE[@]}" --arch "$arch" 2>/dev/null || echo '{"steps":0}')
    tagged "ours_dino_${arch}_$prec" "$dm"
    log "(b) $arch $prec: $(tail -n 1 <<< "$dm")"
    grep -q '"loss_finite": true' <<< "$dm" || FAILED+=("DINO $arch $prec losses not all finite (or no step logged)")
  done
done

# ---- (c) embed speed ------------------------------------------------------------------------------
# CubeCL compiles each kernel the first time a process launches it (nothing is cached across
# processes in this build), and `webssl embed` times from after the model load to the last batch, so
# its rate includes that compile. Two runs, on N/4 and on N images (synth sample i depends only on
# (seed, i): the small set is a prefix of the big one), give the marginal rate (N − N/4) / (t_N − t_N/4)
# — the steady-state end-to-end throughput — next to the plain rate of the big run.
SMALL=$(( EMBED_IMAGES / 4 ))
IMAGES_SMALL=$CACHE/images-$SYNTH_SIZE-$SMALL
[[ -f $IMAGES_SMALL/index.json ]] || "$W" synth --out "$IMAGES_SMALL" --samples "$SMALL" --size "$SYNTH_SIZE" --seed 7 --split img >&2
embed_run() {  # embed_run INPUT PRECISION -> "images seconds" (seconds = images / the printed img/s, finer than its "in X s")
    local out
    out=$(timeout "$(tmo "$STEP_TIMEOUT")" "$W" --device "$DEVICE" embed --model "$MODEL" --input "$1" \
        --output "$CACHE/embed-$DEVICE.safetensors" --features cls --batch-size "$EMBED_BATCH" \
        --precision "$2" | tail -n 1) || return 1
    log "(c) $out"
    "$PY" -c 'import re,sys; m=re.match(r"embedded (\d+) images .* ([0-9.]+) img/s", sys.argv[1]); print(m[1], int(m[1]) / float(m[2]))' "$out"
}
for prec in $EMBED_PRECISIONS; do
    if over; then log "(c) budget spent: webssl embed timing $prec skipped"; continue; fi
    log "(c) webssl embed --device $DEVICE --precision $prec: $SMALL then $EMBED_IMAGES images, batch $EMBED_BATCH ($ARCH)"
    if r1=$(embed_run "$IMAGES_SMALL" "$prec") && { mem_start; r2=$(embed_run "$IMAGES" "$prec"); }; then
        mem=$(mem_stop)
        read -r n1 t1 <<< "$r1"
        read -r n2 t2 <<< "$r2"
        emit "$("$PY" -c 'import json,sys; n1,t1,n2,t2=int(sys.argv[1]),float(sys.argv[2]),int(sys.argv[3]),float(sys.argv[4]); print(json.dumps({"tag":"ours_embed_"+sys.argv[5],"images":n2,"img_s":(n2-n1)/(t2-t1) if t2>t1 else None,"img_s_plain":n2/t2,"small":[n1,t1],"big":[n2,t2],"gpu_peak_mib":json.loads(sys.argv[6])}))' "$n1" "$t1" "$n2" "$t2" "$prec" "$mem")"
    else
        mem_stop >/dev/null
        log "(c) webssl embed --device $DEVICE --precision $prec FAILED or timed out"
        FAILED+=("embed timing $prec on $DEVICE")
    fi
done

# ---- (c) the PyTorch references -------------------------------------------------------------------
if [[ -z $TORCH_SKIP ]]; then
    for dt in $DINO_PRECISIONS; do
      for arch in $DINO_ARCHES; do
        if over; then log "(c) budget spent: torch DINO step $arch $dt skipped"; continue; fi
        t=$(timeout "$(tmo "$STEP_TIMEOUT")" "$PY" bench/gpu_torch.py dino --arch "$arch" "${SHAPE[@]}" \
            --dtype "$dt" --steps "$TORCH_STEPS" --device "$TORCH_DEVICE" 2>/dev/null | tail -n 1) \
            && tagged "torch_dino_${arch}_$dt" "$t" && log "(c) torch DINO step $arch $dt: $t" \
            || log "(c) torch DINO step $arch $dt failed or timed out (rerun by hand to see why)"
      done
    done
    for dt in f32 bf16; do
        if over; then log "(c) budget spent: torch embed $dt skipped"; continue; fi
        t=$(timeout "$(tmo "$STEP_TIMEOUT")" "$PY" bench/gpu_torch.py embed --model "$MODEL" --batch "$EMBED_BATCH" \
            --dtype "$dt" --device "$TORCH_DEVICE" --iters "$TORCH_ITERS" 2>/dev/null | tail -n 1) \
            && tagged "torch_embed_$dt" "$t" && log "(c) torch embed $dt: $t" \
            || log "(c) torch embed $dt failed or timed out (see: $PY bench/gpu_torch.py embed --model $MODEL --dtype $dt)"
    done
fi

# ---- report ---------------------------------------------------------------------------------------
WALL=$(( $(date +%s) - T0 ))
SETTINGS="DEVICE=$DEVICE ARCH=$ARCH PARITY_IMAGES=$PARITY_IMAGES EMBED_IMAGES=$EMBED_IMAGES EMBED_BATCH=$EMBED_BATCH DINO_ARCHES='$DINO_ARCHES' DINO_BATCH=$DINO_BATCH DINO_STEPS=$DINO_STEPS DINO_WARMUP=$DINO_WARMUP DINO_PRECISIONS='$DINO_PRECISIONS' EMBED_PRECISIONS='$EMBED_PRECISIONS' GLOBAL=$GLOBAL LOCAL=$LOCAL N_LOCAL=$N_LOCAL PROTOS=$PROTOS HIDDEN=$HIDDEN BOTTLENECK=$BOTTLENECK DEPTH=$DEPTH WORKERS=$WORKERS SYNTH_SIZE=$SYNTH_SIZE BUDGET=$BUDGET"
NOTES="Each row sets webssl and PyTorch in the same precision: webssl bf16 = matrix products in bf16, f32 master weights, LayerNorm/softmax outside attention/losses in f32 (webssl_models::precision); PyTorch bf16 = torch.autocast. The PyTorch embed number is model-only on random pixels; ours is end to end (decode + preprocess + forward), so the embed ratio is a lower bound of the model-only ratio. The torch DINO step is DINOv2-like (DINO + iBOT + KoLeo, Sinkhorn-Knopp, EMA) on random crops, no data loader; ours includes the loader."
if (( ${#FAILED[@]} )); then
    NOTES="**Failed: $(IFS=';'; echo "${FAILED[*]}")** (logs under bench/.cache/gpu/). $NOTES"
fi
emit "{\"tag\":\"meta\",\"stamp\":\"$(date -u '+%Y-%m-%d %H:%M UTC')\",\"device\":\"$DEVICE\",\"machine\":$(jstr "$MACHINE"),\"build_info\":$(jstr "$BUILD_INFO"),\"settings\":$(jstr "$SETTINGS"),\"wall_s\":$WALL,\"torch\":$(jstr "${TORCH_VER:-none}"),\"torch_skip\":$(jstr "$TORCH_SKIP"),\"parity_model\":\"$ARCH random init\",\"embed_arch\":\"$ARCH\",\"embed_batch\":$EMBED_BATCH,\"dino_archs\":$(jstr "$DINO_ARCHES"),\"dino_shape\":\"b$DINO_BATCH ${GLOBAL}/${LOCAL}px x$N_LOCAL K=$PROTOS\",\"gpu_name\":$(jstr "${GPU:-}"),\"notes\":$(jstr "$NOTES")}"
args=(--results "$RESULTS")
[[ -z ${NO_RECORD:-} ]] && args+=(--record bench/RESULTS.md)
"$PY" bench/gpu_torch.py report "${args[@]}"
log "done in $WALL s (checks: $(( $(date +%s) - TB )) s of a $BUDGET s budget; build excluded); raw results: $RESULTS"
if (( ${#FAILED[@]} )); then
    log "FAILED: $(IFS=';'; echo "${FAILED[*]}")"
    exit 1
fi
