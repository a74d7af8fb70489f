"""PyTorch side of `bench/embed.sh`: CLS features of a list of images with HF `Dinov2Model` (sdpa).

What a PyTorch user runs: for each batch, open + decode the files with PIL, preprocess them with the
checkpoint's `BitImageProcessor` on its PIL path (`BitImageProcessorPil`, the same path
`webssl embed` reproduces: shortest edge 256 bicubic, center crop 224, rescale, normalize), run the
model under `torch.inference_mode()` and copy the CLS features (`pooler_output`, the normed CLS token)
to numpy. Everything runs sequentially in this one process, on `--threads` intra-op threads.

Timing (perf_counter):
  - end-to-end: the whole loop above over all images (decode + preprocess + forward + copy out);
  - model-only: the sum of the forward calls inside that same loop (pixel tensor in, features out).
Model loading and the warm-up are not timed. Warm-up: one batch (or `--warmup-images`) through the
same loop, so lazy initialisation and first-touch allocation are not in the timed runs.

Prints one JSON object on the last line of stdout (runs, medians); `--save-cls` writes the CLS
features of the last run as `.npy` for the parity check.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_config(model_dir, config_cls):
    """config.json as transformers 5 accepts it. `webssl model init` writes `"mlp_ratio": 4.0`, which
    transformers >= 5 (strict dataclass configs, `mlp_ratio: int`) rejects; hub DINOv2 configs write
    `4`. An integral float is the same model, so it is passed as an int."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    r = cfg.get("mlp_ratio")
    if isinstance(r, float) and r.is_integer():
        cfg["mlp_ratio"] = int(r)
    return config_cls(**cfg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="HF directory (config.json + model.safetensors)")
    ap.add_argument("--list", required=True, help="file list, one image path per line (relative to it)")
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--warmup-images",
        type=int,
        help="images in the untimed warm-up pass (default: one batch); same batch size as the timed runs",
    )
    ap.add_argument("--save-cls", help="write the last run's CLS features here (.npy)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from PIL import Image
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    rss_after_import = rss_mib()
    base = os.path.dirname(os.path.abspath(args.list))
    with open(args.list) as f:
        paths = [os.path.join(base, line.strip()) for line in f if line.strip()]

    model = Dinov2Model.from_pretrained(
        args.model, config=load_config(args.model, Dinov2Config), attn_implementation="sdpa"
    ).eval()
    processor = BitImageProcessorPil.from_pretrained(args.model)
    rss_after_load = rss_mib()

    def one_pass(files):
        feats = []
        t_model = 0.0
        t0 = time.perf_counter()
        for i in range(0, len(files), args.batch_size):
            imgs = [Image.open(p).convert("RGB") for p in files[i : i + args.batch_size]]
            pixels = processor(imgs, return_tensors="pt")["pixel_values"]
            tm = time.perf_counter()
            with torch.inference_mode():
                cls = model(pixel_values=pixels).pooler_output
            t_model += time.perf_counter() - tm
            feats.append(cls.numpy())
        total = time.perf_counter() - t0
        return total, t_model, np.concatenate(feats)

    one_pass(paths[: args.warmup_images or args.batch_size])  # warm-up
    runs = []
    cls = None
    for _ in range(args.runs):
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        total, t_model, cls = one_pass(paths)
        runs.append({"e2e_s": total, "model_s": t_model, "load": load})
        print(
            f"torch: {len(paths)} images in {total:.2f}s, e2e {len(paths) / total:.2f} img/s, "
            f"model {len(paths) / t_model:.2f} img/s",
            file=sys.stderr,
        )
    if args.save_cls:
        np.save(args.save_cls, cls)
    n = len(paths)
    out = {
        "images": n,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "runs": runs,
        "e2e_img_s": n / statistics.median(r["e2e_s"] for r in runs),
        "model_img_s": n / statistics.median(r["model_s"] for r in runs),
        "rss_after_import_mib": rss_after_import,
        "rss_after_load_mib": rss_after_load,
        "rss_peak_mib": rss_mib(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
