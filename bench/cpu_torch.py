"""PyTorch side of `bench/cpu.sh`: the same ViT shapes as `cpu_bench` (crates/webssl-models/examples),
random weights, on CPU with `--threads` intra-op threads.

The model is transformers' `Dinov2Model` built from a config (no download): pre-LN blocks, fused
attention through `torch.nn.functional.scaled_dot_product_attention` (`attn_implementation="sdpa"`),
GELU(erf) MLP or SwiGLU (`use_swiglu_ffn`, hidden = round8(2/3 · 4·D) exactly as DINOv2 and webssl),
LayerScale. Modes:

  - infer: `model(pixel_values)` under `torch.inference_mode()`, eval mode;
  - train: train mode, loss = mean(last_hidden_state²) (normed CLS + patch tokens, as ours), backward,
    `torch.optim.AdamW(lr=1e-4, weight_decay=0.05)` step, `zero_grad(set_to_none=True)`;
  - gemm: a 1024³ f32 matmul, the reference for "% of GEMM peak".

Prints one JSON line with per-iteration seconds (after `--warmup` untimed iterations) and the median.
"""

import argparse
import json
import statistics
import time

import torch


PRESETS = {
    # name: (dim, depth, heads, swiglu)  — crates/webssl-models/src/presets.rs
    "vit-small": (384, 12, 6, False),
    "vit-base": (768, 12, 12, False),
    "vit-large": (1024, 24, 16, False),
    "web-dino-300m": (1024, 24, 16, True),
}


def build(arch):
    from transformers import Dinov2Config, Dinov2Model

    dim, depth, heads, swiglu = PRESETS[arch]
    cfg = Dinov2Config(
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        mlp_ratio=4,
        image_size=224,
        patch_size=14,
        layerscale_value=1e-5,
        use_swiglu_ffn=swiglu,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return Dinov2Model(cfg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit-small", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--mode", default="infer", choices=["infer", "train", "gemm"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    times = []
    if a.mode == "gemm":
        x = torch.randn(1024, 1024)
        y = torch.randn(1024, 1024)
        for i in range(a.warmup + max(a.iters, 20)):
            t = time.perf_counter()
            x @ y
            if i >= a.warmup:
                times.append(time.perf_counter() - t)
    else:
        model = build(a.arch)
        x = torch.randn(a.batch, 3, 224, 224)
        if a.mode == "infer":
            model.eval()
            with torch.inference_mode():
                for i in range(a.warmup + a.iters):
                    t = time.perf_counter()
                    model(pixel_values=x).last_hidden_state.numpy()
                    if i >= a.warmup:
                        times.append(time.perf_counter() - t)
        else:
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
            for i in range(a.warmup + a.iters):
                t = time.perf_counter()
                loss = model(pixel_values=x).last_hidden_state.pow(2).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i >= a.warmup:
                    times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(
        json.dumps(
            {
                "impl": "torch",
                "arch": a.arch,
                "batch": a.batch,
                "mode": a.mode,
                "torch": torch.__version__,
                "times_s": [round(t, 4) for t in times],
                "median_s": med,
                "img_s": a.batch / med if a.mode != "gemm" else None,
            }
        )
    )


if __name__ == "__main__":
    main()
