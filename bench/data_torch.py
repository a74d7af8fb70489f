"""PyTorch side of `bench/data.sh`: dinov2's training data pipeline on the same JPEGs.

Per sample, as dinov2's ImageNet dataset + `DataAugmentationDINO` do it: read the file's bytes,
`PIL.Image.open(BytesIO(bytes)).convert("RGB")`, then `DataAugmentationDINO(global_crops_scale=(0.32,
1.0), local_crops_scale=(0.05, 0.32), local_crops_number=N, global_crops_size=224,
local_crops_size=98)` (PIL + torchvision); per batch dinov2's `collate_data_and_cast` with its iBOT
`MaskingGenerator` (grid 224/14 = 16, max 50 % of the patches, mask ratio 0.1-0.5, probability 0.5),
i.e. what `dinov2/train/train.py` builds. One deviation: the collated crops stay float32 (dinov2 casts
them to half for its GPU step); webssl's loader also delivers float32, so both sides do the same work.

`--workers 0` runs everything in this process (the per-core number); `--workers K` uses a
`torch.utils.data.DataLoader` with K worker processes (collation happens in the workers, as in
dinov2). `torch.set_num_threads(1)` in this process and in every worker. The first `--warmup` batches
(worker start-up, first-touch) are untimed; then `--batches` batches are timed. CPU time (user +
system) of this process and its workers over the timed window comes from /proc/<pid>/stat.

Where the dinov2 code comes from: `--dinov2 PATH` (a dinov2 checkout: PATH/dinov2/data/...) imports
`augmentations.py`, `transforms.py`, `collate.py` and `masking.py` from it without running
`dinov2/data/__init__.py` (which would pull in the dataset code and its dependencies). Without it, the
transcription below (written for this benchmark from the same files, same transforms in the same
order) is used. The output says which.
"""

import argparse
import importlib.util
import io
import json
import math
import os
import random
import subprocess
import sys
import time
import types
from functools import partial

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T


# ---- transcription of dinov2/data/{transforms,augmentations,masking,collate}.py ------------------

class Blur(T.RandomApply):
    """dinov2 `GaussianBlur(p)`: torchvision's RandomApply applies with probability 1 - p."""

    def __init__(self, *, p=0.5, radius_min=0.1, radius_max=2.0):
        super().__init__([T.GaussianBlur(kernel_size=9, sigma=(radius_min, radius_max))], p=1 - p)


class DinoAug:
    """dinov2 `DataAugmentationDINO`."""

    def __init__(self, global_crops_scale, local_crops_scale, local_crops_number,
                 global_crops_size=224, local_crops_size=96):
        bicubic = T.InterpolationMode.BICUBIC
        self.geo_global = T.Compose([
            T.RandomResizedCrop(global_crops_size, scale=global_crops_scale, interpolation=bicubic),
            T.RandomHorizontalFlip(p=0.5),
        ])
        self.geo_local = T.Compose([
            T.RandomResizedCrop(local_crops_size, scale=local_crops_scale, interpolation=bicubic),
            T.RandomHorizontalFlip(p=0.5),
        ])
        color = T.Compose([
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ])
        norm = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        self.t_global1 = T.Compose([color, Blur(p=1.0), norm])
        self.t_global2 = T.Compose([color, T.Compose([Blur(p=0.1), T.RandomSolarize(128, p=0.2)]), norm])
        self.t_local = T.Compose([color, Blur(p=0.5), norm])
        self.n_local = local_crops_number

    def __call__(self, image):
        g1 = self.t_global1(self.geo_global(image))
        g2 = self.t_global2(self.geo_global(image))
        local = [self.t_local(self.geo_local(image)) for _ in range(self.n_local)]
        return {"global_crops": [g1, g2], "global_crops_teacher": [g1, g2], "local_crops": local,
                "offsets": ()}


class BlockMasks:
    """dinov2 `MaskingGenerator` (BEiT block masking)."""

    def __init__(self, input_size, num_masking_patches=None, min_num_patches=4, max_num_patches=None,
                 min_aspect=0.3, max_aspect=None):
        self.height, self.width = (input_size, input_size) if not isinstance(input_size, tuple) else input_size
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))

    def _block(self, mask, max_patches):
        added = 0
        for _ in range(10):
            area = random.uniform(self.min_num_patches, max_patches)
            aspect = math.exp(random.uniform(*self.log_aspect))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w < self.width and h < self.height:
                top, left = random.randint(0, self.height - h), random.randint(0, self.width - w)
                covered = mask[top:top + h, left:left + w].sum()
                if 0 < h * w - covered <= max_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                added += 1
                if added > 0:
                    break
        return added

    def __call__(self, num_masking_patches=0):
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            added = self._block(mask, min(num_masking_patches - count, self.max_num_patches))
            if added == 0:
                break
            count += added
        return mask


def collate(samples_list, mask_ratio_tuple, mask_probability, dtype, n_tokens=None, mask_generator=None):
    """dinov2 `collate_data_and_cast`: view-major stacks + iBOT masks over the global crops."""
    n_g, n_l = len(samples_list[0][0]["global_crops"]), len(samples_list[0][0]["local_crops"])
    g = torch.stack([s[0]["global_crops"][i] for i in range(n_g) for s in samples_list])
    l = torch.stack([s[0]["local_crops"][i] for i in range(n_l) for s in samples_list])
    B, N = len(g), n_tokens
    n_masked = int(B * mask_probability)
    probs = torch.linspace(*mask_ratio_tuple, n_masked + 1)
    upperbound, masks = 0, []
    for i in range(n_masked):
        masks.append(torch.BoolTensor(mask_generator(int(N * random.uniform(probs[i], probs[i + 1])))))
        upperbound += int(N * probs[i + 1])
    masks += [torch.BoolTensor(mask_generator(0)) for _ in range(n_masked, B)]
    random.shuffle(masks)
    m = torch.stack(masks).flatten(1)
    idx = m.flatten().nonzero().flatten()
    weight = (1 / m.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(m)[m]
    return {"collated_global_crops": g.to(dtype), "collated_local_crops": l.to(dtype),
            "collated_masks": m, "mask_indices_list": idx, "masks_weight": weight,
            "upperbound": upperbound,
            "n_masked_patches": torch.full((1,), fill_value=idx.shape[0], dtype=torch.long)}


# ---- dinov2 from a checkout ---------------------------------------------------------------------

def import_dinov2(root):
    """Loads dinov2.data.{transforms,augmentations,masking,collate} from ROOT without the package
    `__init__` files (which import the dataset code)."""
    data_dir = os.path.join(root, "dinov2", "data")
    if not os.path.isfile(os.path.join(data_dir, "augmentations.py")):
        raise SystemExit(f"--dinov2 {root}: no dinov2/data/augmentations.py there")
    for name, path in (("dinov2", os.path.join(root, "dinov2")), ("dinov2.data", data_dir)):
        pkg = types.ModuleType(name)
        pkg.__path__ = [path]
        sys.modules[name] = pkg
    mods = {}
    for m in ("transforms", "augmentations", "masking", "collate"):
        spec = importlib.util.spec_from_file_location(f"dinov2.data.{m}", os.path.join(data_dir, f"{m}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods[m] = mod
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except Exception:
        commit = None
    return (mods["augmentations"].DataAugmentationDINO, mods["masking"].MaskingGenerator,
            mods["collate"].collate_data_and_cast, commit)


# ---- benchmark ----------------------------------------------------------------------------------

class Jpegs(torch.utils.data.Dataset):
    """`length` samples cycling over a fixed permutation of the files (the image set is small)."""

    def __init__(self, paths, length, aug, seed):
        self.paths, self.length, self.aug = paths, length, aug
        self.order = np.random.default_rng(seed).permutation(len(paths))

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        with open(self.paths[self.order[i % len(self.paths)]], "rb") as f:
            data = f.read()
        image = Image.open(io.BytesIO(data)).convert(mode="RGB")
        return self.aug(image), None


def cpu_secs(pid):
    """user + system seconds of a process from /proc (USER_HZ = 100 on Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / 100.0


def worker_init(_):
    torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", required=True, help="file with one JPEG path per line")
    ap.add_argument("--dinov2", help="dinov2 checkout to import the pipeline from (default: transcription)")
    ap.add_argument("--workers", type=int, default=0, help="0 = this process only")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--n-local", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=98)
    ap.add_argument("--patch", type=int, default=14)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(1)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    with open(args.list) as f:
        paths = [line.strip() for line in f if line.strip()]
    if not paths:
        raise SystemExit(f"{args.list}: no paths")

    if args.dinov2:
        Aug, Masks, collate_fn, commit = import_dinov2(args.dinov2)
        source = f"dinov2 imported from {args.dinov2}" + (f" (commit {commit})" if commit else "")
    else:
        Aug, Masks, collate_fn = DinoAug, BlockMasks, collate
        source = "transcription in bench/data_torch.py"
    aug = Aug(global_crops_scale=(0.32, 1.0), local_crops_scale=(0.05, 0.32),
              local_crops_number=args.n_local, global_crops_size=args.size,
              local_crops_size=args.local_size)
    grid = args.size // args.patch
    masks = Masks(input_size=(grid, grid), max_num_patches=0.5 * grid * grid)
    collate_batch = partial(collate_fn, mask_ratio_tuple=(0.1, 0.5), mask_probability=0.5,
                            n_tokens=grid * grid, mask_generator=masks, dtype=torch.float32)

    total = (args.warmup + args.batches) * args.batch_size
    ds = Jpegs(paths, total, aug, args.seed)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
        collate_fn=collate_batch, drop_last=True,
        worker_init_fn=worker_init if args.workers > 0 else None)
    it = iter(loader)
    for _ in range(args.warmup):
        next(it)
    pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
    cpu0 = sum(cpu_secs(p) for p in pids)
    t0 = time.perf_counter()
    checksum = 0.0
    for _ in range(args.batches):
        b = next(it)
        checksum += float(b["collated_global_crops"][0, 0, 0, 0]) + float(b["collated_local_crops"][0, 0, 0, 0])
    wall = time.perf_counter() - t0
    cpu = sum(cpu_secs(p) for p in pids) - cpu0
    del it
    assert math.isfinite(checksum)
    images = args.batches * args.batch_size
    out = {
        "source": source, "workers": args.workers, "batch_size": args.batch_size,
        "batches": args.batches, "warmup": args.warmup, "images": images,
        "views": f"2x{args.size} + {args.n_local}x{args.local_size}",
        "wall_secs": wall, "images_per_sec": images / wall, "cpu_secs": cpu,
        "images_per_cpu_sec": images / cpu if cpu > 0 else None,
        "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
