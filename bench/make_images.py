"""Deterministic benchmark image set for `bench/embed.sh`.

Writes N JPEGs (default 64, quality 90, sizes 256-320 px per side, mixed aspect ratios) into OUT plus
list files `first-K.txt` (K in 8, 16, 32, N) and `png-8.txt` (the first 8 as PNGs of Pillow's
decode, for the parity check) that both `webssl embed --input` and `embed_torch.py`
read, so the two sides see the same files in the same order.

Three quarters are crops of the photographs bundled with scikit-image (astronaut, coffee, chelsea,
rocket, ...; no download), one quarter synthetic (gradients, shapes, noise), so JPEG decode and the
bicubic resize see realistic content. Everything derives from a fixed numpy seed: rerunning gives
the same pixels (the JPEG bytes are those of the installed Pillow/libjpeg).
"""

import argparse
import os

import numpy as np
import skimage.data
from PIL import Image, ImageDraw

PHOTOS = [
    "astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field",
    "retina", "immunohistochemistry", "camera", "page", "text", "brick", "grass", "gravel",
    "coins", "moon",
]


def load_photos():
    out = []
    for name in PHOTOS:
        try:
            a = getattr(skimage.data, name)()
        except Exception:  # a photo missing from this scikit-image build: skip it, stay deterministic
            continue
        a = np.asarray(a)
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        a = a[..., :3]
        if a.dtype != np.uint8:
            a = (255 * (a.astype(np.float64) / max(1.0, float(a.max())))).astype(np.uint8)
        out.append(Image.fromarray(a, "RGB"))
    if not out:
        raise SystemExit("no scikit-image photos available")
    return out


def photo_crop(rng, photos):
    img = photos[int(rng.integers(len(photos)))]
    w, h = int(rng.integers(256, 321)), int(rng.integers(256, 321))
    # a random window of 50-100% of the photo, then resized to w x h (aspect changes a little)
    fw, fh = img.size
    s = rng.uniform(0.5, 1.0)
    cw, ch = max(32, int(fw * s)), max(32, int(fh * s))
    x0, y0 = int(rng.integers(0, fw - cw + 1)), int(rng.integers(0, fh - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BICUBIC)


def synthetic(rng):
    w, h = int(rng.integers(256, 321)), int(rng.integers(256, 321))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (xx / w * rng.uniform(-1, 1) + yy / h * rng.uniform(-1, 1)) % 1.0
    a = c0 * (1 - t[..., None]) + c1 * t[..., None]
    a += rng.normal(0, 12, a.shape)
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, 120)), y0 + int(rng.integers(10, 120))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            d.rectangle((x0, y0, x1, y1), fill=fill)
    return img


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    photos = load_photos()
    names = []
    for i in range(args.count):
        img = synthetic(rng) if i % 4 == 3 else photo_crop(rng, photos)
        name = f"img-{i:04d}.jpg"
        img.save(os.path.join(args.out, name), quality=90)
        names.append(name)
    for k in sorted({8, 16, 32, args.count}):
        if k <= args.count:
            with open(os.path.join(args.out, f"first-{k}.txt"), "w") as f:
                f.write("".join(n + "\n" for n in names[:k]))
    # The first 8 again as PNGs holding Pillow's decode of the JPEGs: a lossless input on which both
    # sides see identical pixels (JPEG decoders differ by a few levels: zune-jpeg vs libjpeg-turbo).
    pngs = []
    for name in names[:8]:
        png = name.replace(".jpg", ".png")
        Image.open(os.path.join(args.out, name)).convert("RGB").save(os.path.join(args.out, png))
        pngs.append(png)
    with open(os.path.join(args.out, "png-8.txt"), "w") as f:
        f.write("".join(n + "\n" for n in pngs))
    print(f"{args.count} images ({len(photos)} photos + synthetic) -> {args.out}")


if __name__ == "__main__":
    main()
