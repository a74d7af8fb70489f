#!/usr/bin/env bash
# Data wait of a PyTorch DINO training loop: webssl.Loader vs dinov2's DataLoader pipeline.
#
#   bash bench/python_loader.sh     # a few minutes on a 2-core machine; prints a table
#
# Runs python/examples/train_dino.py (a small ViT + DINO head, CLS self-distillation, EMA teacher)
# twice on the same JPEG shards, once fed by `webssl.Loader(recipe="dino")` and once by dinov2's
# DataAugmentationDINO + collate_data_and_cast in a torch DataLoader (bench/data_torch.py's
# transcription, or dinov2's own with DINOV2=PATH). Both sides get THREADS data threads (webssl
# decode threads / DataLoader worker processes) and the model one torch thread, so on 2 cores data
# and model do not compete. Reported per side: images/s of the whole loop, seconds spent waiting in
# `next(batches)`, and that as a share of the loop time, over STEPS steps after 2 untimed ones.
#
# Needs, in $PY's environment: the webssl package (`pip install ./python`), torch and torchvision
# (fixtures/requirements.txt). Images: bench/make_data_images.py (N JPEGs 500x375, as bench/data.sh)
# written as tar shards of 64 (no index.json: the loader reads the tars as they are).
# Knobs: N (256), B (batch, 16), STEPS (10), THREADS (1), N_LOCAL (8), PY (python3), DINOV2, MODEL
# (train_dino.py's model flags; the default ViT is slow enough on 2 cores that neither side waits
# much; `MODEL="--dim 64 --depth 1 --heads 1 --prototypes 256"` shows the loaders' difference).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
N=${N:-256}
B=${B:-16}
STEPS=${STEPS:-10}
THREADS=${THREADS:-1}
N_LOCAL=${N_LOCAL:-8}
MODEL=${MODEL:-}
CACHE=bench/.cache/python
SHARDS=$CACHE/shards-$N
mkdir -p "$CACHE"

if [[ ! -d $SHARDS ]]; then
    "$PY" bench/make_data_images.py --out "$CACHE/jpg-$N" --list "$CACHE/list-$N.txt" --count "$N"
    "$PY" - "$CACHE/list-$N.txt" "$SHARDS.tmp" <<'PYEOF'
import os, sys, tarfile
paths = open(sys.argv[1]).read().split()
os.makedirs(sys.argv[2])
for s in range(0, len(paths), 64):
    with tarfile.open(os.path.join(sys.argv[2], f"bench-{s // 64:06}.tar"), "w") as t:
        for i, p in enumerate(paths[s:s + 64], s):
            t.add(p, arcname=f"{i:08}.jpg")
PYEOF
    mv "$SHARDS.tmp" "$SHARDS"
fi

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for loader in webssl torch; do
    "$PY" python/examples/train_dino.py --shards "$SHARDS" --loader "$loader" --steps "$STEPS" \
        --batch-size "$B" --threads "$THREADS" --n-local "$N_LOCAL" ${DINOV2:+--dinov2 "$DINOV2"} \
        $MODEL 2>/dev/null
done | "$PY" -c "
import json, sys
rows = [json.loads(l) for l in sys.stdin]
print('loader   threads batch steps   img/s  wait s  wait %')
for r in rows:
    print(f\"{r['loader']:8} {r['threads']:>7} {r['batch_size']:>5} {r['steps']:>5} \"
          f\"{r['images_per_s']:>7.1f} {r['wait_s']:>7.2f} {100 * r['wait_fraction']:>6.1f}%\")
"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
