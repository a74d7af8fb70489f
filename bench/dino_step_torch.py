"""PyTorch side of `bench/dino_step.sh`: one full DINOv2 training step (SSLMetaArch.forward_backward,
gradient clipping, AdamW, EMA teacher update) in eager mode on CPU, random weights and random input
tensors, the same shapes and recipe as `crates/webssl-train/examples/dino_step.rs`.

Reference: facebookresearch/dinov2 at commit b8931f7b —
  dinov2/train/ssl_meta_arch.py  (forward_backward, update_teacher, get_params_groups)
  dinov2/train/train.py          (the loop body: zero_grad, forward_backward, clip_grad_norm_ per
                                  student module, lr/wd per param group, optimizer.step, update_teacher)
  dinov2/models/vision_transformer.py, dinov2/layers/*   (DinoVisionTransformer with masking)
  dinov2/layers/dino_head.py, dinov2/loss/*              (DINOHead, DINOLoss, iBOTPatchLoss, KoLeoLoss)
  dinov2/utils/param_groups.py, dinov2/data/collate.py   (param groups; masks, upperbound)

Which code runs (printed as "code" in the output):
  * `--dinov2 PATH` (a checkout of the commit above): the backbone (`vit_small` / `vit_large`), DINOHead
    and the three losses are imported from it (`dist.all_reduce` patched to the identity: iBOT's
    Sinkhorn calls it unconditionally, facebookresearch/dinov2#590);
  * otherwise a transcription: the backbone below (same modules, names, math and init as the files
    above), DINOHead / DINOLoss / iBOTPatchLoss / KoLeoLoss from `fixtures/objectives/make_objectives.py`
    (the transcription the objective golden tests were checked against).
  `SSLMetaArch` itself cannot be imported on CPU (it imports xformers and FSDP unconditionally), so
  the step is transcribed below in both cases, line for line from `forward_backward`, with two
  changes forced by eager CPU without xformers: the student backbone runs the global and the local
  crops as two calls (dinov2's `forward_features_list` packs them with xformers' block-diagonal
  attention: the same math), and the student head input is a plain `torch.cat` of the three token
  sets (what `fmha.BlockDiagonalMask.from_tensor_list` builds) split back by row counts. Like dinov2,
  the masked patch tokens go through the heads padded to `upperbound` rows. Mixed precision and FSDP
  are not used (f32, one process), as on the Rust side.

Prints one JSON line: per-iteration seconds (after `--warmup` untimed iterations), the median, img/s.
"""

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.init import trunc_normal_

ROOT = Path(__file__).resolve().parent.parent

# Recipes of configs/vit-s.toml and configs/web-dino-300m.toml (what the Rust side reads):
# arch, dim, depth, heads, ffn, drop path, K dino, K ibot, hidden, bottleneck dino/ibot, separate ibot
# head, layer decay, patch-embed lr mult, momentum, wd, lr per 1024, clip
RECIPES = {
    "vit-small": dict(dim=384, depth=12, heads=6, ffn="mlp", drop_path=0.3, k_dino=65536, k_ibot=65536,
                      hidden=2048, bn_dino=256, bn_ibot=256, separate=False, layer_decay=0.9,
                      patch_embed_lr_mult=0.2, momentum=0.992, wd=0.04, lr_per_1024=4e-3, clip=3.0),
    "web-dino-300m": dict(dim=1024, depth=24, heads=16, ffn="swiglufused", drop_path=0.4, k_dino=131072,
                          k_ibot=131072, hidden=2048, bn_dino=384, bn_ibot=256, separate=True,
                          layer_decay=1.0, patch_embed_lr_mult=0.2, momentum=0.994, wd=0.04,
                          lr_per_1024=2e-4, clip=3.0),
}
GLOBAL, LOCAL, N_LOCAL, PATCH = 224, 98, 8, 14
STUDENT_TEMP, TEACHER_TEMP = 0.1, 0.07
MASK_RATIO, MASK_PROB = (0.1, 0.5), 0.5
KOLEO_WEIGHT = 0.1


# ------------------------------------------------------------------------------------------------
# Transcription of dinov2/layers + dinov2/models/vision_transformer.py (the parts a step runs)
# ------------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        x = self.proj(x)
        return self.norm(x.flatten(2).transpose(1, 2))


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True, proj_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = torch.unbind(qkv, 2)
        q, k, v = [t.transpose(1, 2) for t in [q, k, v]]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0)
        x = x.transpose(1, 2).contiguous().view(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFNFused(nn.Module):
    def __init__(self, in_features, hidden_features, bias=True):
        super().__init__()
        hidden_features = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim, init_values):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


def drop_add_residual_stochastic_depth(x, residual_func, sample_drop_ratio):
    b, n, d = x.shape
    sample_subset_size = max(int(b * (1 - sample_drop_ratio)), 1)
    brange = (torch.randperm(b, device=x.device))[:sample_subset_size]
    residual = residual_func(x[brange])
    x_flat = x.flatten(1)
    residual = residual.flatten(1)
    residual_scale_factor = b / sample_subset_size
    x_plus_residual = torch.index_add(x_flat, 0, brange, residual.to(dtype=x.dtype), alpha=residual_scale_factor)
    return x_plus_residual.view_as(x)


class Block(nn.Module):
    def __init__(self, dim, num_heads, ffn_layer, init_values, drop_path):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ffn_layer(dim, 4 * dim)
        self.ls2 = LayerScale(dim, init_values)
        self.sample_drop_ratio = drop_path

    def forward(self, x):
        def attn_residual_func(x):
            return self.ls1(self.attn(self.norm1(x)))

        def ffn_residual_func(x):
            return self.ls2(self.mlp(self.norm2(x)))

        if self.training and self.sample_drop_ratio > 0.1:
            x = drop_add_residual_stochastic_depth(x, attn_residual_func, self.sample_drop_ratio)
            x = drop_add_residual_stochastic_depth(x, ffn_residual_func, self.sample_drop_ratio)
        elif self.training and self.sample_drop_ratio > 0.0:
            raise NotImplementedError("DropPath for rates <= 0.1 is not transcribed (not used here)")
        else:
            x = x + attn_residual_func(x)
            x = x + ffn_residual_func(x)
        return x


class DinoVisionTransformer(nn.Module):
    """drop_path_uniform=True, block_chunks=0, no registers, interpolate_offset 0.1 (dinov2 defaults)."""

    def __init__(self, img_size, patch_size, embed_dim, depth, num_heads, ffn_layer, init_values=1e-5,
                 drop_path_rate=0.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.interpolate_offset = 0.1
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        ffn = {"mlp": Mlp, "swiglufused": SwiGLUFFNFused}[ffn_layer]
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, ffn, init_values, drop_path_rate) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, x, w, h):
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, 0]
        patch_pos_embed = pos_embed[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch_size, h // self.patch_size
        M = int(math.sqrt(N))
        sx = float(w0 + self.interpolate_offset) / M
        sy = float(h0 + self.interpolate_offset) / M
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
            mode="bicubic", antialias=False, scale_factor=(sx, sy),
        )
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)

    def prepare_tokens_with_masks(self, x, masks=None):
        B, nc, w, h = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x, w, h)

    def forward(self, x, masks=None, is_training=True):
        x = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            x = blk(x)
        x_norm = self.norm(x)
        return {"x_norm_clstoken": x_norm[:, 0], "x_norm_patchtokens": x_norm[:, 1:]}


def load_transcription():
    spec = importlib.util.spec_from_file_location("make_objectives", ROOT / "fixtures/objectives/make_objectives.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def backbone(r, drop_path_rate):
        return DinoVisionTransformer(GLOBAL, PATCH, r["dim"], r["depth"], r["heads"], r["ffn"],
                                     drop_path_rate=drop_path_rate)

    def head(in_dim, out_dim, hidden_dim, bottleneck_dim):
        h = mod.DINOHead(in_dim, out_dim, nlayers=3, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim)
        # dinov2's DINOHead: trunc_normal(0.02) Linear init, weight_g = 1
        for m in h.mlp:
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            mod.head_g(h).fill_(1)
        return h

    return "transcription (bench/dino_step_torch.py + fixtures/objectives/make_objectives.py)", backbone, head, \
        mod.DINOLoss, mod.iBOTPatchLoss, mod.KoLeoLoss


def load_dinov2(path):
    sys.path.insert(0, str(Path(path).resolve()))
    import torch.distributed as dist

    dist.all_reduce = lambda *a, **k: None  # world size 1 (see the module docs)
    from dinov2.layers import DINOHead
    from dinov2.loss import DINOLoss, iBOTPatchLoss, KoLeoLoss
    from dinov2.models import vision_transformer as vits
    from dinov2.layers import MemEffAttention, NestedTensorBlock as DBlock

    def backbone(r, drop_path_rate):
        ctor = {384: vits.vit_small, 1024: vits.vit_large}[r["dim"]]
        kw = dict(img_size=GLOBAL, patch_size=PATCH, init_values=1e-5, ffn_layer=r["ffn"], block_chunks=0,
                  qkv_bias=True, proj_bias=True, ffn_bias=True, num_register_tokens=0,
                  interpolate_offset=0.1, interpolate_antialias=False)
        if drop_path_rate > 0:
            kw.update(drop_path_rate=drop_path_rate, drop_path_uniform=True)
        return ctor(**kw)

    def head(in_dim, out_dim, hidden_dim, bottleneck_dim):
        return DINOHead(in_dim=in_dim, out_dim=out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                        nlayers=3)

    return f"dinov2 checkout {path}", backbone, head, DINOLoss, iBOTPatchLoss, KoLeoLoss


# ------------------------------------------------------------------------------------------------
# dinov2/utils/param_groups.py (transcribed)
# ------------------------------------------------------------------------------------------------
def get_vit_lr_decay_rate(name, lr_decay_rate, num_layers, force_is_backbone):
    layer_id = num_layers + 1
    if name.startswith("backbone") or force_is_backbone:
        if any(k in name for k in ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")):
            layer_id = 0
        elif ".blocks." in name and ".residual." not in name:
            layer_id = int(name[name.find(".blocks."):].split(".")[2]) + 1
        elif "blocks." in name and "residual." not in name:
            layer_id = int(name[name.find("blocks."):].split(".")[1]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)


def params_groups(model, lr_decay_rate, patch_embed_lr_mult):
    n_blocks = len(model.blocks) if hasattr(model, "blocks") else 0
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        d = {"is_last_layer": "last_layer" in name,
             "lr_multiplier": get_vit_lr_decay_rate(name, lr_decay_rate, n_blocks, n_blocks > 0),
             "wd_multiplier": 0.0 if (name.endswith(".bias") or "norm" in name or "gamma" in name) else 1.0}
        if "patch_embed" in name:
            d["lr_multiplier"] *= patch_embed_lr_mult
        key = (d["lr_multiplier"], d["wd_multiplier"], d["is_last_layer"])
        groups.setdefault(key, dict(d, params=[], foreach=True))["params"].append(param)
    return list(groups.values())


# ------------------------------------------------------------------------------------------------
# dinov2/data/collate.py masks (counts as the Rust side: the midpoint of each crop's ratio range)
# ------------------------------------------------------------------------------------------------
def make_masks(n_crops, n_tokens, gen):
    n_masked = int(n_crops * MASK_PROB)
    probs = np.linspace(*MASK_RATIO, n_masked + 1)
    masks = torch.zeros(n_crops, n_tokens, dtype=torch.bool)
    upperbound = 0
    for i in range(n_masked):
        count = int(n_tokens * (MASK_RATIO[0] + (i + 0.5) * (MASK_RATIO[1] - MASK_RATIO[0]) / n_masked))
        masks[i, torch.randperm(n_tokens, generator=gen)[:count]] = True
        upperbound += int(n_tokens * probs[i + 1])
    mask_indices_list = masks.flatten().nonzero().flatten()
    masks_weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    return masks, mask_indices_list, masks_weight, upperbound


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit-small", choices=sorted(RECIPES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dinov2", help="a dinov2 checkout (commit b8931f7b) to import the modules from")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    r = RECIPES[a.arch]
    code, mk_backbone, mk_head, DINOLoss, iBOTPatchLoss, KoLeoLoss = (
        load_dinov2(a.dinov2) if a.dinov2 else load_transcription())

    # SSLMetaArch.__init__
    student = nn.ModuleDict({"backbone": mk_backbone(r, r["drop_path"]),
                             "dino_head": mk_head(r["dim"], r["k_dino"], r["hidden"], r["bn_dino"])})
    teacher = nn.ModuleDict({"backbone": mk_backbone(r, 0.0),
                             "dino_head": mk_head(r["dim"], r["k_dino"], r["hidden"], r["bn_dino"])})
    if r["separate"]:
        student["ibot_head"] = mk_head(r["dim"], r["k_ibot"], r["hidden"], r["bn_ibot"])
        teacher["ibot_head"] = mk_head(r["dim"], r["k_ibot"], r["hidden"], r["bn_ibot"])
    for p in teacher.parameters():
        p.requires_grad = False
    for k in student:  # prepare_for_distributed_training: teacher starts as the student
        teacher[k].load_state_dict(student[k].state_dict())
    dino_loss = DINOLoss(r["k_dino"])
    ibot_patch_loss = iBOTPatchLoss(r["k_ibot"] if r["separate"] else r["k_dino"])
    koleo_loss = KoLeoLoss()
    student.train()
    teacher.eval()
    groups = []
    for m in student.values():
        groups += params_groups(m, r["layer_decay"], r["patch_embed_lr_mult"])
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    lr = r["lr_per_1024"] * math.sqrt(a.batch / 1024)

    # inputs (collate_data_and_cast): random crops, masks of the global crops
    B = a.batch
    gen = torch.Generator().manual_seed(0)
    global_crops = torch.randn(2 * B, 3, GLOBAL, GLOBAL, generator=gen)
    local_crops = torch.randn(N_LOCAL * B, 3, LOCAL, LOCAL, generator=gen)
    n_tokens = (GLOBAL // PATCH) ** 2
    masks, mask_indices_list, masks_weight, upperbound = make_masks(2 * B, n_tokens, gen)
    n_masked_patches = mask_indices_list.shape[0]
    n_masked_patches_tensor = torch.tensor([n_masked_patches], dtype=torch.long)

    def forward_backward(teacher_temp):
        n_global_crops, n_local_crops = 2, N_LOCAL
        n_local_crops_loss_terms = max(n_local_crops * n_global_crops, 1)
        n_global_crops_loss_terms = (n_global_crops - 1) * n_global_crops
        ibot_loss_scale = 1.0 / n_global_crops

        @torch.no_grad()
        def get_teacher_output():
            out = teacher["backbone"](global_crops, is_training=True)
            cls = out["x_norm_clstoken"].chunk(n_global_crops)
            cls = torch.cat((cls[1], cls[0]))
            patch = out["x_norm_patchtokens"]
            _dim = patch.shape[-1]
            n_cls = cls.shape[0]
            if not r["separate"]:
                buf = patch.new_zeros(upperbound + n_cls, _dim)
                buf[:n_cls].copy_(cls)
                torch.index_select(patch.flatten(0, 1), dim=0, index=mask_indices_list,
                                   out=buf[n_cls:n_cls + n_masked_patches])
                after = teacher["dino_head"](buf)
                cls_after = after[:n_cls]
                patch_after = after[n_cls:n_cls + n_masked_patches]
            else:
                buf = patch.new_zeros(upperbound, _dim)
                torch.index_select(patch.flatten(0, 1), dim=0, index=mask_indices_list,
                                   out=buf[:n_masked_patches])
                cls_after = teacher["dino_head"](cls)
                patch_after = teacher["ibot_head"](buf)[:n_masked_patches]
            dino_t = dino_loss.sinkhorn_knopp_teacher(cls_after, teacher_temp=teacher_temp).view(
                n_global_crops, -1, *cls_after.shape[1:])
            ibot_t = ibot_patch_loss.sinkhorn_knopp_teacher(patch_after, teacher_temp=teacher_temp,
                                                            n_masked_patches_tensor=n_masked_patches_tensor)
            return dino_t, ibot_t

        teacher_dino, teacher_ibot = get_teacher_output()
        loss_accumulator = 0
        # dinov2 packs [global, local] into one xformers call; without xformers: two calls
        s_global = student["backbone"](global_crops, masks=masks, is_training=True)
        s_local = student["backbone"](local_crops, masks=None, is_training=True)
        local_cls = s_local["x_norm_clstoken"]
        global_cls = s_global["x_norm_clstoken"]
        head_inputs = [local_cls, global_cls]
        _dim = global_cls.shape[-1]
        patch = s_global["x_norm_patchtokens"]
        buf = patch.new_zeros(upperbound, _dim)
        buf[:n_masked_patches].copy_(torch.index_select(patch.flatten(0, 1), dim=0, index=mask_indices_list))
        if not r["separate"]:
            head_inputs.append(buf)
        else:
            s_patch_after = student["ibot_head"](buf)[:n_masked_patches]
        outs = student["dino_head"](torch.cat(head_inputs)).split([t.shape[0] for t in head_inputs])
        local_after, global_after = outs[0], outs[1]
        if not r["separate"]:
            s_patch_after = outs[2][:n_masked_patches]
        dino_local = dino_loss(student_output_list=local_after.chunk(n_local_crops),
                               teacher_out_softmaxed_centered_list=teacher_dino) / (
            n_global_crops_loss_terms + n_local_crops_loss_terms)
        loss_accumulator += dino_local
        loss_scales = 2
        dino_global = dino_loss(student_output_list=[global_after],
                                teacher_out_softmaxed_centered_list=[teacher_dino.flatten(0, 1)]) * \
            loss_scales / (n_global_crops_loss_terms + n_local_crops_loss_terms)
        loss_accumulator += dino_global
        koleo = KOLEO_WEIGHT * sum(koleo_loss(p) for p in global_cls.chunk(2))
        loss_accumulator += koleo
        ibot = ibot_patch_loss.forward_masked(s_patch_after, teacher_ibot, student_masks_flat=masks,
                                              n_masked_patches=n_masked_patches,
                                              masks_weight=masks_weight) * loss_scales * ibot_loss_scale
        loss_accumulator += ibot
        loss_accumulator.backward()
        return loss_accumulator.detach()

    def update_teacher(m):
        with torch.no_grad():
            s = [p for k in student for p in student[k].parameters()]
            t = [p for k in student for p in teacher[k].parameters()]
            torch._foreach_mul_(t, m)
            torch._foreach_add_(t, s, alpha=1 - m)

    times, losses = [], []
    for i in range(a.warmup + a.iters):
        t0 = time.perf_counter()
        # train.py loop body
        for g in optimizer.param_groups:
            g["weight_decay"] = r["wd"] * g["wd_multiplier"]
            g["lr"] = lr * g["lr_multiplier"]
        optimizer.zero_grad(set_to_none=True)
        loss = forward_backward(TEACHER_TEMP)
        for v in student.values():
            nn.utils.clip_grad_norm_(v.parameters(), r["clip"])
        optimizer.step()
        update_teacher(r["momentum"])
        losses.append(float(loss))
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({
        "impl": "torch", "arch": a.arch, "batch": B, "mode": "dino", "torch": torch.__version__, "code": code,
        "k_dino": r["k_dino"], "k_ibot": r["k_ibot"] if r["separate"] else r["k_dino"],
        "separate_ibot_head": r["separate"], "drop_path": r["drop_path"], "masked": n_masked_patches,
        "upperbound": upperbound, "times_s": [round(t, 4) for t in times], "median_s": med,
        "img_s": B / med, "loss": [round(v, 5) for v in losses],
    }))


if __name__ == "__main__":
    main()
