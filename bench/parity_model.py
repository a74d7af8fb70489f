"""Copy of an HF-layout backbone with every LayerScale set to 1, for the parity check of `bench/embed.sh`.

`webssl model init` initialises LayerScale to 1e-5 (as DINOv2 does), so in a random model each
block adds only ~1e-5 of its output to the residual stream and the CLS features are almost
LayerNorm(cls_token + pos_embed): a comparison on them would barely look at attention or the MLP.
With LayerScale 1 every block contributes fully, so equal CLS features mean equal work.
"""

import argparse
import os
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tensors = load_file(os.path.join(args.src, "model.safetensors"))
    scales = [k for k in tensors if "layer_scale" in k]
    if not scales:
        raise SystemExit(f"no layer_scale tensors in {args.src}")
    for k in scales:
        tensors[k] = np.ones_like(tensors[k])
    save_file(tensors, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(os.path.join(args.src, name), os.path.join(args.out, name))
    print(f"{len(scales)} layer scales set to 1 -> {args.out}")


if __name__ == "__main__":
    main()
