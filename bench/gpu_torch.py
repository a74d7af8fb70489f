"""Python side of `bench/gpu.sh`. Subcommands:

Standard library only (the GPU machine may have a bare python3):
  - `layerscale1 --src DIR --out DIR`: copy of an HF-layout backbone with every LayerScale set to 1
    (random init has LayerScale 1e-5, so features would barely depend on the blocks and a CUDA-vs-CPU
    check on them would not look at attention or the MLP; same reason as bench/parity_model.py,
    rewritten without numpy/safetensors).
  - `compare --a X --b Y [--key K ...] --rtol R --min-cos C`: max abs diff, max abs value and min
    row cosine of the features two `webssl embed` runs wrote (safetensors), one JSON line; exit 1 if
    outside the tolerance.
  - `dino-metrics --run DIR --warmup N --arch A [shape]`: loss finiteness and img/s (median over the
    steps after the first N) from a `webssl pretrain` run's metrics.jsonl / timing.jsonl, with the
    model FLOPs per image of that step (`dino_flops_per_image`, for the MFU), one JSON line.
  - `report --results FILE [--record bench/RESULTS.md]`: the Markdown section of a gpu.sh run.

Need torch (+ transformers for the backbone), skipped by gpu.sh when missing:
  - `probe`: prints one JSON line with the torch/transformers versions and the CUDA device, exit 3
    when torch, transformers or a CUDA device is missing.
  - `embed --model DIR --batch B --dtype f32|bf16`: model-only forward throughput of transformers'
    `Dinov2Model` (sdpa) loaded from the same HF directory `webssl embed` reads, on random pixels.
  - `dino --arch A --batch B ...`: a DINOv2-like training step on the same shapes as the webssl run
    (see `dino_step`), f32 or bf16 autocast (f32 master weights), img/s and loss finiteness.

Every subcommand prints one JSON object on its last stdout line.
"""

import argparse
import json
import math
import os
import shutil
import statistics
import struct
import sys
import time
from array import array

# ------------------------------------------------------------------------------------------------
# safetensors, standard library only (format: u64 LE header length, JSON header, raw data)

_FMT = {"F32": ("f", 4)}


def st_read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return header, raw, 8 + n


def st_tensor(path, key):
    """A named F32 tensor as (flat array('f'), shape)."""
    header, raw, base = st_read(path)
    if key not in header:
        raise SystemExit(f"{path}: no tensor {key!r} (has {sorted(k for k in header if k != '__metadata__')})")
    meta = header[key]
    if meta["dtype"] != "F32":
        raise SystemExit(f"{path}: {key} is {meta['dtype']}, expected F32")
    a, b = meta["data_offsets"]
    out = array("f")
    out.frombytes(raw[base + a : base + b])
    if sys.byteorder != "little":
        out.byteswap()
    return out, meta["shape"]


def cmd_layerscale1(args):
    src = os.path.join(args.src, "model.safetensors")
    header, raw, base = st_read(src)
    buf = bytearray(raw)
    keys = [k for k in header if k != "__metadata__" and "layer_scale" in k]
    if not keys:
        raise SystemExit(f"no layer_scale tensors in {src}")
    for k in keys:
        meta = header[k]
        if meta["dtype"] != "F32":
            raise SystemExit(f"{src}: {k} is {meta['dtype']}, expected F32")
        a, b = meta["data_offsets"]
        buf[base + a : base + b] = struct.pack("<f", 1.0) * ((b - a) // 4)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "model.safetensors"), "wb") as f:
        f.write(buf)
    for name in ("config.json", "preprocessor_config.json"):
        p = os.path.join(args.src, name)
        if os.path.exists(p):
            shutil.copy(p, os.path.join(args.out, name))
    print(json.dumps({"layer_scales_set_to_1": len(keys), "out": args.out}))


def cmd_compare(args):
    out = {"a": args.a, "b": args.b, "rtol": args.rtol, "min_cos_required": args.min_cos, "keys": {}}
    ok = True
    for key in args.key:
        xa, sa = st_tensor(args.a, key)
        xb, sb = st_tensor(args.b, key)
        if sa != sb:
            raise SystemExit(f"{key}: shapes differ {sa} vs {sb}")
        d = sa[-1]
        rows = len(xa) // d
        max_diff = max((abs(p - q) for p, q in zip(xa, xb)), default=0.0)
        max_abs = max((abs(p) for p in xa), default=0.0)
        min_cos = 1.0
        nonfinite = sum(1 for v in xb if not math.isfinite(v))
        for r in range(rows):
            u = xa[r * d : (r + 1) * d]
            v = xb[r * d : (r + 1) * d]
            nu = math.sqrt(sum(t * t for t in u))
            nv = math.sqrt(sum(t * t for t in v))
            if nu > 0 and nv > 0:
                min_cos = min(min_cos, sum(p * q for p, q in zip(u, v)) / (nu * nv))
        good = nonfinite == 0 and max_diff <= args.rtol * max(1.0, max_abs) and min_cos >= args.min_cos
        ok &= good
        out["keys"][key] = {
            "shape": sa,
            "max_abs_diff": max_diff,
            "max_abs_value": max_abs,
            "min_cosine": min_cos,
            "nonfinite": nonfinite,
            "pass": good,
        }
    out["pass"] = ok
    print(json.dumps(out))
    sys.exit(0 if ok else 1)


def _jsonl(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


# ------------------------------------------------------------------------------------------------
# model FLOPs (MFU): one formula for both sides, so the MFU ratio is the img/s ratio

# (width, depth, heads) of the presets both sides build (webssl_models::presets, dinov2 ViTs).
ARCHS = {"vit-tiny": (192, 12, 3), "vit-small": (384, 12, 6), "vit-base": (768, 12, 12), "vit-large": (1024, 24, 16)}


def vit_forward_flops(dim, depth, size, patch=14):
    """Matmul FLOPs (2·m·n·k) of one image through a ViT at `size` px: patch embedding, per block
    qkv + projection + MLP (ratio 4) = 24·T·D² and attention scores + weighted values = 4·T²·D, with
    T = patches + 1 (CLS; these presets have no registers). Norms, softmax and GELU are left out, as
    MFU conventions do."""
    p = (size // patch) ** 2
    t = p + 1
    return 2 * p * (3 * patch * patch) * dim + depth * (24 * t * dim * dim + 4 * t * t * dim)


def dino_flops_per_image(arch, depth, global_size, local_size, n_local, hidden, bottleneck, prototypes):
    """Model FLOPs of one DINOv2 training step per image: the student's forward + backward (3× the
    forward) over 2 global and `n_local` local views, the teacher's forward over the 2 global views,
    and the head (MLP dim→hidden→hidden→bottleneck, then the prototypes) on each CLS token and on the
    masked patch tokens of iBOT — expected count: half the images masked at a mean ratio of 0.3
    (webssl's defaults 0.1–0.5), for student and teacher alike."""
    dim, preset_depth, _ = ARCHS[arch]
    depth = depth or preset_depth
    head = 2 * (dim * hidden + hidden * hidden + hidden * bottleneck + bottleneck * prototypes)
    masked = 2 * 0.5 * 0.3 * (global_size // 14) ** 2
    student = 2 * vit_forward_flops(dim, depth, global_size) + n_local * vit_forward_flops(dim, depth, local_size)
    student += head * (2 + n_local + masked)
    teacher = 2 * vit_forward_flops(dim, depth, global_size) + head * (2 + masked)
    return 3 * student + teacher


# Dense peak FLOP/s by GPU (NVIDIA datasheets): bf16 tensor cores; f32 without tensor cores (torch's
# default for f32 matmuls, TF32 off). Matched on the nvidia-smi name.
PEAKS = [
    ("H100 PCIe", {"bf16": 756e12, "f32": 51.2e12}),
    ("H100", {"bf16": 989.4e12, "f32": 66.9e12}),
    ("H200", {"bf16": 989.4e12, "f32": 66.9e12}),
    ("A100", {"bf16": 312e12, "f32": 19.5e12}),
]


def peak_flops(gpu_name, dtype):
    for key, peaks in PEAKS:
        if key in (gpu_name or ""):
            return peaks[dtype]
    return None


def mfu(row, gpu_name, dtype):
    if not row or not row.get("img_s") or not row.get("flops_per_img"):
        return None
    peak = peak_flops(gpu_name, dtype)
    return row["img_s"] * row["flops_per_img"] / peak if peak else None


def _shape_flops(args):
    return dino_flops_per_image(
        args.arch, args.depth, args.global_size, args.local_size, args.n_local, args.hidden, args.bottleneck,
        args.prototypes,
    )


def cmd_dino_metrics(args):
    metrics = _jsonl(os.path.join(args.run, "metrics.jsonl"))
    timing = _jsonl(os.path.join(args.run, "timing.jsonl"))
    losses = [m.get("loss") for m in metrics]
    finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses)
    rates = [t["img_per_s"] for t in timing if t.get("step", 0) > args.warmup and t.get("img_per_s")]
    waits = [t["loader_wait"] for t in timing if t.get("step", 0) > args.warmup and "loader_wait" in t]
    first = timing[: args.warmup]
    print(
        json.dumps(
            {
                "steps": len(metrics),
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "loss_finite": finite and bool(losses),
                "img_s": statistics.median(rates) if rates else None,
                "timed_steps": len(rates),
                "loader_wait": statistics.median(waits) if waits else None,
                "warmup_step_s": [round(1.0 / t["img_per_s"] * args.batch, 3) for t in first if t.get("img_per_s")],
                "peak_mem_mib": max((t["peak_mem_mib"] for t in timing if t.get("peak_mem_mib")), default=None),
                "gpu_peak_mib": json.loads(args.gpu_peak_mib),
                "arch": args.arch,
                "flops_per_img": _shape_flops(args),
            }
        )
    )


# ------------------------------------------------------------------------------------------------
# torch side


def _torch():
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means "no torch here"
        return None, f"torch not importable: {e}"
    return torch, None


def cmd_probe(args):
    torch, err = _torch()
    info = {"torch": None, "transformers": None, "cuda": None}
    if torch is None:
        info["skip"] = err
        print(json.dumps(info))
        sys.exit(3)
    info["torch"] = torch.__version__
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except Exception as e:  # noqa: BLE001
        info["skip"] = f"transformers not importable: {e}"
    want_cuda = args.device == "cuda"
    if want_cuda and not torch.cuda.is_available():
        info["skip"] = "torch has no CUDA device (torch.cuda.is_available() is False)"
    elif want_cuda:
        info["cuda"] = torch.cuda.get_device_name(0)
    print(json.dumps(info))
    sys.exit(3 if "skip" in info else 0)


def _dtype(torch, name):
    return {"f32": torch.float32, "bf16": torch.bfloat16}[name]


def _sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def _load_dinov2(model_dir):
    """transformers `Dinov2Model` from the HF directory `webssl model init` wrote. `"mlp_ratio": 4.0`
    is passed as an int (transformers >= 5 has strict dataclass configs; see embed_torch.py)."""
    from transformers import Dinov2Config, Dinov2Model

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    r = cfg.get("mlp_ratio")
    if isinstance(r, float) and r.is_integer():
        cfg["mlp_ratio"] = int(r)
    cfg["attn_implementation"] = "sdpa"
    config = Dinov2Config(**cfg)
    return Dinov2Model.from_pretrained(model_dir, config=config, attn_implementation="sdpa")


def cmd_embed(args):
    torch, err = _torch()
    if torch is None:
        raise SystemExit(err)
    dev = args.device
    model = _load_dinov2(args.model).to(dev).eval()
    dt = _dtype(torch, args.dtype)
    if args.dtype == "bf16":
        model = model.to(dt)  # inference: bf16 weights, as people run HF models for embedding
    size = args.size
    x = torch.randn(args.batch, 3, size, size, device=dev, dtype=dt)
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            _sync(torch, dev)
            t = time.perf_counter()
            out = model(pixel_values=x).pooler_output.float().cpu()
            _sync(torch, dev)
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(
        json.dumps(
            {
                "impl": "torch",
                "what": "embed",
                "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if dev == "cuda" else None,
                "dtype": args.dtype,
                "batch": args.batch,
                "size": size,
                "median_s": med,
                "img_s": args.batch / med,
                "finite": bool(torch.isfinite(out).all()),
                "torch": torch.__version__,
            }
        )
    )


def _dino_parts(torch, args):
    """Student + teacher backbones (transformers Dinov2Model, sdpa) and a DINOv2 head: 3-layer MLP
    (GELU) to the bottleneck, L2-normalise, weight-normalised prototype layer without bias — the
    DINO head of dinov2/layers/dino_head.py, shared by the DINO and iBOT losses
    (`ibot_separate_head = false`, as webssl's demo config)."""
    import copy

    from transformers import Dinov2Config, Dinov2Model

    nn = torch.nn
    F = torch.nn.functional
    dim, depth, heads = ARCHS[args.arch]
    depth = args.depth or depth
    cfg = Dinov2Config(
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        mlp_ratio=4,
        image_size=args.global_size,
        patch_size=14,
        layerscale_value=args.layerscale,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        attn_implementation="sdpa",
    )

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(
                nn.Linear(dim, args.hidden), nn.GELU(), nn.Linear(args.hidden, args.hidden), nn.GELU(),
                nn.Linear(args.hidden, args.bottleneck),
            )
            self.last = nn.Parameter(torch.randn(args.prototypes, args.bottleneck) * 0.02)

        def forward(self, x):
            x = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
            return F.linear(x, F.normalize(self.last, dim=-1))

    torch.manual_seed(0)
    student = nn.ModuleDict({"backbone": Dinov2Model(cfg), "head": Head()})
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def _sinkhorn(torch, logits, temp, iters=3):
    """dinov2 SinkhornKnoppTeacher (single process): rows of the result sum to 1."""
    q = torch.exp(logits.float() / temp).t()
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def dino_step(torch, student, teacher, opt, batch, args, gen):
    """One DINOv2-like step on random crops: 2 global + n_local local views per image; the teacher
    (no grad) sees the globals, Sinkhorn-Knopp targets at teacher_temp; DINO loss on student CLS of
    every view against the teacher CLS of the other global view(s); iBOT loss on masked patch tokens
    of the global views (half the images masked, ratio 0.1–0.5 as webssl's defaults); KoLeo on the
    student global CLS; backward, grad clip 3.0, AdamW, EMA teacher update."""
    F = torch.nn.functional
    dev = args.device
    b, g, l, nl = batch, args.global_size, args.local_size, args.n_local
    globals_ = torch.randn(2 * b, 3, g, g, device=dev, generator=gen)
    locals_ = torch.randn(nl * b, 3, l, l, device=dev, generator=gen) if nl else None
    n_patch = (g // 14) ** 2
    masks = torch.zeros(2 * b, n_patch, dtype=torch.bool, device=dev)
    for i in range(0, 2 * b, 2):  # every other image masked (mask_probability 0.5)
        k = int(n_patch * (0.1 + 0.4 * torch.rand(1, generator=gen, device=dev).item()))
        masks[i, torch.randperm(n_patch, device=dev, generator=gen)[:k]] = True
    ctx = torch.autocast("cuda" if dev == "cuda" else "cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    with ctx:
        with torch.no_grad():
            t_tok = teacher["backbone"](pixel_values=globals_).last_hidden_state
            t_cls = teacher["head"](t_tok[:, 0])
            t_patch = teacher["head"](t_tok[:, 1:][masks])
        t_cls_p = _sinkhorn(torch, t_cls, 0.07).chunk(2)
        t_patch_p = _sinkhorn(torch, t_patch, 0.07)
        s_tok = student["backbone"](pixel_values=globals_, bool_masked_pos=masks).last_hidden_state
        s_cls_g = s_tok[:, 0]
        s_out = [student["head"](s_cls_g)]
        if locals_ is not None:
            s_out.append(student["head"](student["backbone"](pixel_values=locals_).last_hidden_state[:, 0]))
        s_logp = F.log_softmax(torch.cat(s_out).float() / 0.1, dim=-1).chunk(2 + nl)
        dino, terms = 0.0, 0
        for ti, tp in enumerate(t_cls_p):
            for si, sl in enumerate(s_logp):
                if si == ti:
                    continue
                dino = dino - (tp * sl).sum(-1).mean()
                terms += 1
        dino = dino / terms
        s_patch = student["head"](s_tok[:, 1:][masks])
        ibot = -(t_patch_p * F.log_softmax(s_patch.float() / 0.1, dim=-1)).sum(-1).mean()
        x = F.normalize(s_cls_g.float(), dim=-1, eps=1e-8)
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)
        nn_idx = dots.argmax(dim=1)
        koleo = -torch.log((x - x[nn_idx]).norm(dim=-1) + 1e-8).mean()
        loss = dino + ibot + 0.1 * koleo
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
    opt.step()
    with torch.no_grad():
        tp = [p for p in teacher.parameters()]
        sp = [p.detach() for p in student.parameters()]
        torch._foreach_mul_(tp, 0.992)
        torch._foreach_add_(tp, sp, alpha=1 - 0.992)
    return loss.detach()


def cmd_dino(args):
    torch, err = _torch()
    if torch is None:
        raise SystemExit(err)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    student, teacher = _dino_parts(torch, args)
    student.to(args.device).train()
    teacher.to(args.device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.04, fused=args.device == "cuda")
    gen = torch.Generator(device=args.device)
    gen.manual_seed(0)
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        _sync(torch, args.device)
        t = time.perf_counter()
        loss = dino_step(torch, student, teacher, opt, args.batch, args, gen)
        losses.append(float(loss))  # host read: also a sync point
        _sync(torch, args.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    reserved = torch.cuda.max_memory_reserved() / 2**20 if args.device == "cuda" else None
    print(
        json.dumps(
            {
                "impl": "torch",
                "what": "dino_step",
                "arch": args.arch,
                "flops_per_img": _shape_flops(args),
                "peak_reserved_mib": reserved,
                "dtype": args.dtype,
                "tf32": args.tf32,
                "batch": args.batch,
                "median_s": med,
                "img_s": args.batch / med,
                "loss_first": losses[0],
                "loss_last": losses[-1],
                "loss_finite": all(math.isfinite(v) for v in losses),
                "peak_mib": peak,
                "torch": torch.__version__,
            }
        )
    )


# ------------------------------------------------------------------------------------------------
# report


def _fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _pct(v):
    return "–" if v is None else f"{100 * v:.1f}%"


def cmd_report(args):
    rows = _jsonl(args.results)
    by = {}
    for r in rows:
        by.setdefault(r.get("tag"), r)
    meta = by.get("meta", {})
    lines = [f"## {meta.get('stamp', '?')} — gpu.sh ({meta.get('device', '?')})", ""]
    lines.append(f"- Machine: {meta.get('machine', '?')}")
    lines.append(f"- Code: {meta.get('build_info', '?')}")
    lines.append(f"- Settings: `{meta.get('settings', '')}`; wall time {meta.get('wall_s', '?')} s")
    torch_note = meta.get("torch_skip")
    lines.append(f"- PyTorch: {meta.get('torch', '–')}" + (f" — **skipped**: {torch_note}" if torch_note else ""))
    lines.append("")
    for tag, what in (("parity", "f32"), ("parity_bf16", "bf16 products on the device, f32 on the CPU")):
        par = by.get(tag)
        if not par:
            continue
        lines.append(
            f"**(a) CUDA vs CPU backbone outputs, {what}** (`webssl embed`, {meta.get('parity_model', '?')}, "
            f"LayerScale set to 1; tolerance: max abs diff ≤ {par['rtol']}·max(1, max|x|) and min row "
            f"cosine ≥ {par['min_cos_required']}):"
        )
        lines.append("")
        lines.append("| features | shape | max abs diff | max abs value | min cosine | non-finite | pass |")
        lines.append("|---|---|---|---|---|---|---|")
        for k, v in par["keys"].items():
            lines.append(
                f"| {k} | {'×'.join(map(str, v['shape']))} | {v['max_abs_diff']:.2e} | {v['max_abs_value']:.2f} "
                f"| {v['min_cosine']:.7f} | {v['nonfinite']} | {'yes' if v['pass'] else '**NO**'} |"
            )
        lines.append("")
    lines.append("**(b, c) Throughput** (img/s; ratio = ours / PyTorch in the same precision, > 1 means webssl is faster):")
    lines.append("")
    gpu = meta.get("gpu_name")
    lines.append(
        "| what | ours | img/s | MFU | peak GPU MiB | PyTorch | img/s | MFU | peak GPU MiB | ratio | notes |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for dt in ("f32", "bf16"):
        ours_e, t = by.get(f"ours_embed_{dt}"), by.get(f"torch_embed_{dt}")
        if not ours_e:
            continue
        ratio = ours_e["img_s"] / t["img_s"] if t and t.get("img_s") and ours_e.get("img_s") else None
        lines.append(
            f"| embed {meta.get('embed_arch', '')} b{meta.get('embed_batch', '')} | `webssl embed` {dt}, end to end, "
            f"marginal | {_fmt(ours_e.get('img_s'))} | – | {_fmt(ours_e.get('gpu_peak_mib'), 0)} "
            f"| Dinov2Model sdpa {dt} weights, "
            f"model only | {_fmt(t and t.get('img_s'))} | – | {_fmt(t and t.get('peak_reserved_mib'), 0)} "
            f"| {_fmt(ratio, 2)} | ours: decode + preprocess + forward, steady state between {ours_e['small'][0]} and "
            f"{ours_e['images']} images ({_fmt(ours_e.get('img_s_plain'))} img/s over the {ours_e['images']} incl. "
            f"kernel compilation) |"
        )
    for dt in ("bf16", "f32"):
        for arch in meta.get("dino_archs", "").split():
            ours_d, t = by.get(f"ours_dino_{arch}_{dt}"), by.get(f"torch_dino_{arch}_{dt}")
            if not ours_d:
                continue
            ratio = ours_d["img_s"] / t["img_s"] if t and t.get("img_s") and ours_d.get("img_s") else None
            m_ours, m_torch = mfu(ours_d, gpu, dt), mfu(t, gpu, dt)
            lines.append(
                f"| DINO step {arch} {meta.get('dino_shape', '')} | `webssl pretrain dino` {dt}"
                f"{' (f32 master weights)' if dt == 'bf16' else ''} "
                f"| {_fmt(ours_d.get('img_s'))} | {_pct(m_ours)} | {_fmt(ours_d.get('gpu_peak_mib'), 0)} "
                f"| DINO-like step {dt}{' autocast' if dt == 'bf16' else ''} "
                f"| {_fmt(t and t.get('img_s'))} | {_pct(m_torch)} "
                f"| {_fmt(t and t.get('peak_reserved_mib'), 0)} | {_fmt(ratio, 2)} "
                f"| ours: median of {ours_d.get('timed_steps')} steps "
                f"incl. loader (wait {_fmt(ours_d.get('loader_wait'), 2)}), loss {_fmt(ours_d.get('loss_first'), 3)} → "
                f"{_fmt(ours_d.get('loss_last'), 3)}, finite: {ours_d.get('loss_finite')}; "
                f"{_fmt(ours_d.get('flops_per_img', 0) / 1e9, 0)} GFLOP/img |"
            )
    lines.append("")
    lines.append(
        "MFU: model FLOPs per image (gpu_torch.py `dino_flops_per_image`, the same formula for both sides) × "
        "img/s ÷ the GPU's dense peak in that precision (bf16 tensor cores; f32 without tensor cores, so an "
        "f32 run on TF32 can exceed what the column suggests). Peak GPU memory: ours = nvidia-smi's "
        "memory.used sampled during the run (whole process); PyTorch = torch.cuda.max_memory_reserved."
    )
    notes = meta.get("notes")
    if notes:
        lines.append("")
        lines.append(notes)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.record:
        with open(args.record, "a") as f:
            f.write("\n" + text)
        print(f"appended to {args.record}", file=sys.stderr)


def _add_shape(p):
    """The DINO step's shapes, shared by `dino` and `dino-metrics` (gpu.sh passes the same to both)."""
    p.add_argument("--arch", default="vit-small", choices=sorted(ARCHS))
    p.add_argument("--depth", type=int, default=0, help="0 = the preset's depth")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=98)
    p.add_argument("--n-local", type=int, default=8)
    p.add_argument("--prototypes", type=int, default=65536)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--bottleneck", type=int, default=256)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("layerscale1")
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("compare")
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--key", action="append", required=True)
    p.add_argument("--rtol", type=float, default=2e-2)
    p.add_argument("--min-cos", type=float, default=0.999)
    p = sub.add_parser("dino-metrics")
    p.add_argument("--run", required=True)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--gpu-peak-mib", default="null", help="peak GPU memory gpu.sh sampled (MiB, or null)")
    _add_shape(p)
    p = sub.add_parser("probe")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p = sub.add_parser("embed")
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p = sub.add_parser("dino")
    _add_shape(p)
    p.add_argument("--layerscale", type=float, default=1e-5)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in the f32 run (torch default: off)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--record")
    args = ap.parse_args()
    {
        "layerscale1": cmd_layerscale1,
        "compare": cmd_compare,
        "dino-metrics": cmd_dino_metrics,
        "probe": cmd_probe,
        "embed": cmd_embed,
        "dino": cmd_dino,
        "report": cmd_report,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
