"""Deterministic JPEG set for `bench/data.sh`: N images of exactly 500x375 (a typical web photo).

Each image is a random window (40-100 % of the side, aspect 4:3 where the photo allows) of one of
the photographs bundled with scikit-image (no download), resized to 500x375 with Pillow's bicubic,
optionally mirrored, saved as baseline JPEG quality 90 (4:2:0, Pillow's default). Everything derives
from a fixed numpy seed, so a rerun gives the same pixels (the bytes are those of the installed
Pillow/libjpeg). Also writes LIST (the image paths in order, one per line) that `data_torch.py`
reads; it lives outside OUT so that `webssl shards build --input OUT` sees only the JPEGs.
"""

import argparse
import os

import numpy as np
import skimage.data
from PIL import Image

PHOTOS = [
    "astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field",
    "retina", "immunohistochemistry", "camera", "brick", "grass", "gravel", "coins", "moon",
]
W, H = 500, 375


def load_photos():
    out = []
    for name in PHOTOS:
        try:
            a = np.asarray(getattr(skimage.data, name)())
        except Exception:  # not in this scikit-image build: skip it (the set stays deterministic)
            continue
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        a = a[..., :3]
        if a.dtype != np.uint8:
            a = (255 * (a.astype(np.float64) / max(1.0, float(a.max())))).astype(np.uint8)
        out.append(Image.fromarray(a, "RGB"))
    if not out:
        raise SystemExit("no scikit-image photos available")
    return out


def make(rng, photos):
    img = photos[int(rng.integers(len(photos)))]
    fw, fh = img.size
    s = rng.uniform(0.4, 1.0)
    cw = max(64, int(min(fw, fh * W / H) * s))
    ch = max(48, int(cw * H / W))
    cw, ch = min(cw, fw), min(ch, fh)
    x0, y0 = int(rng.integers(0, fw - cw + 1)), int(rng.integers(0, fh - ch + 1))
    out = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((W, H), Image.BICUBIC)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--list", required=True)
    ap.add_argument("--count", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    photos = load_photos()
    names = []
    for i in range(args.count):
        name = f"img-{i:04d}.jpg"
        make(rng, photos).save(os.path.join(args.out, name), quality=90)
        names.append(os.path.abspath(os.path.join(args.out, name)))
    with open(args.list, "w") as f:
        f.write("".join(n + "\n" for n in names))
    print(f"{args.count} JPEGs {W}x{H} q90 from {len(photos)} scikit-image photos -> {args.out}")


if __name__ == "__main__":
    main()
