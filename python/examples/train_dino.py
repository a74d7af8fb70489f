"""A minimal PyTorch DINO training loop fed by `webssl.Loader` — or, for comparison, by dinov2's
own data pipeline (`DataAugmentationDINO` + `collate_data_and_cast` in a `torch.utils.data.DataLoader`).

    python python/examples/train_dino.py --shards data/train --steps 20                  # webssl
    python python/examples/train_dino.py --shards data/train --steps 20 --loader torch   # dinov2's

The model is deliberately small (a ViT of `--dim`/`--depth` over 14 px patches, a 3-layer DINO head
with `--prototypes` outputs); the loss is DINO's CLS self-distillation: teacher (EMA of the student)
sees the 2 global crops, softmax with centering and temperature 0.04; the student sees all 2 + N
crops at temperature 0.1; cross-entropy over every (teacher view, other student view) pair. iBOT's
masks come with every batch (`batch["masks"]`) and are not used here.

Swapping the loader is the only change: the webssl batch dict holds `global` `[2B, 3, 224, 224]`
and `local` `[N*B, 3, 98, 98]`, view-major exactly as dinov2's `collated_global_crops` /
`collated_local_crops`. The script prints one JSON line: steps, images/s, and the time the loop spent
waiting for data (`wait_s`, `wait_fraction`), which bench/python_loader.sh compares.

The torch path reads the same shards (every image member of the tars into memory, decoded with PIL
in the workers) and needs torchvision; its transforms are bench/data_torch.py's transcription of
dinov2's (or dinov2's own with `--dinov2 PATH`).
"""

import argparse
import io
import json
import math
import os
import pathlib
import sys
import tarfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import webssl


class ViT(nn.Module):
    def __init__(self, dim, depth, heads, patch=14):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + (224 // patch) ** 2, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, 0.0, F.gelu, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        n = x.shape[1]
        pos = self.pos
        if n + 1 != pos.shape[1]:  # local crops: interpolate the position grid (as dinov2 does)
            side, new = int(math.sqrt(pos.shape[1] - 1)), int(math.sqrt(n))
            grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, n, -1)], 1)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + pos
        return self.norm(self.blocks(x))[:, 0]


class DinoHead(nn.Module):
    def __init__(self, dim, prototypes, hidden=512, bottleneck=128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, prototypes, bias=False))

    def forward(self, x):
        return self.last(F.normalize(self.mlp(x), dim=-1))


class Dino(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.backbone = ViT(args.dim, args.depth, args.heads)
        self.head = DinoHead(args.dim, args.prototypes)

    def forward(self, x):
        return self.head(self.backbone(x))


def dino_loss(student_out, teacher_out, center, n_global, t_student=0.1, t_teacher=0.04):
    """Cross-entropy of the centred, sharpened teacher against the student, over view pairs."""
    teacher = F.softmax((teacher_out - center) / t_teacher, dim=-1).chunk(n_global)
    student = F.log_softmax(student_out / t_student, dim=-1).chunk(len(student_out) // len(teacher[0]))
    total, terms = 0.0, 0
    for i, t in enumerate(teacher):
        for j, s in enumerate(student):
            if i != j:
                total = total + (-t * s).sum(-1).mean()
                terms += 1
    return total / terms


def webssl_batches(args):
    loader = webssl.Loader(args.shards, "dino", args.batch_size, n_local=args.n_local, seed=args.seed,
                           torch=True, decode_threads=args.threads, shuffle_buffer=256)
    for batch in loader:
        yield batch["global"], batch["local"]


class ShardImages(torch.utils.data.Dataset):
    """Every image member of the shard tars, as dinov2's datasets give images: PIL, RGB."""

    def __init__(self, shards, aug):
        self.images = []
        for tar in sorted(pathlib.Path(shards).glob("*.tar")):
            with tarfile.open(tar) as t:
                for m in t.getmembers():
                    if m.name.rsplit(".", 1)[-1] in ("jpg", "jpeg", "png", "webp"):
                        self.images.append(t.extractfile(m).read())
        self.aug = aug

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.aug(Image.open(io.BytesIO(self.images[i])).convert("RGB")), None


def torch_batches(args):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
    import data_torch  # the transcription of dinov2's pipeline that bench/data.sh measures
    from functools import partial

    if args.dinov2:
        DataAugmentationDINO, MaskingGenerator, collate_data_and_cast, _ = data_torch.import_dinov2(args.dinov2)
    else:
        DataAugmentationDINO, MaskingGenerator, collate_data_and_cast = (
            data_torch.DinoAug, data_torch.BlockMasks, data_torch.collate)
    aug = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), args.n_local, 224, 98)
    collate = partial(collate_data_and_cast, mask_ratio_tuple=(0.1, 0.5), mask_probability=0.5,
                      dtype=torch.float32, n_tokens=256,
                      mask_generator=MaskingGenerator(input_size=(16, 16), max_num_patches=128))
    data = ShardImages(args.shards, aug)
    g = torch.Generator().manual_seed(args.seed)
    dl = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                     num_workers=args.threads, collate_fn=collate, generator=g,
                                     persistent_workers=args.threads > 0,
                                     worker_init_fn=lambda _: torch.set_num_threads(1))
    while True:
        for batch in dl:
            yield batch["collated_global_crops"], batch["collated_local_crops"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="shard directory (webssl synth / shards build)")
    p.add_argument("--loader", choices=["webssl", "torch"], default="webssl")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-local", type=int, default=8)
    p.add_argument("--threads", type=int, default=1,
                   help="data threads: webssl decode threads, or DataLoader worker processes")
    p.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads for the model")
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--prototypes", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dinov2", help="a dinov2 checkout to take the torch pipeline from")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)

    student = Dino(args)
    teacher = Dino(args)
    teacher.load_state_dict(student.state_dict())
    for q in teacher.parameters():
        q.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=5e-4, weight_decay=0.04)
    center = torch.zeros(1, args.prototypes)
    batches = webssl_batches(args) if args.loader == "webssl" else torch_batches(args)

    wait = busy = 0.0
    images = 0
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        global_crops, local_crops = next(batches)
        t1 = time.perf_counter()
        with torch.no_grad():
            t_out = teacher(global_crops)
        s_out = torch.cat([student(global_crops), student(local_crops)])
        loss = dino_loss(s_out, t_out, center, n_global=2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(0.996).add_(ps.detach(), alpha=0.004)
            center.mul_(0.9).add_(t_out.mean(0, keepdim=True), alpha=0.1)
        t2 = time.perf_counter()
        if step >= args.warmup:
            wait += t1 - t0
            busy += t2 - t1
            images += args.batch_size
        print(f"step {step}: loss {loss.item():.4f}, data wait {t1 - t0:.3f} s, step {t2 - t1:.3f} s",
              file=sys.stderr)
    total = wait + busy
    print(json.dumps({"loader": args.loader, "threads": args.threads, "batch_size": args.batch_size,
                      "steps": args.steps, "images_per_s": images / total, "wait_s": wait,
                      "step_s": busy, "wait_fraction": wait / total, "final_loss": loss.item()}))


if __name__ == "__main__":
    main()
