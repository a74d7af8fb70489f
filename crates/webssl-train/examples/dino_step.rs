//! The Rust side of `bench/dino_step.sh`: one full DINOv2 / Web-DINO training step on burn-flex (CPU),
//! random weights and random input tensors (no data loader, no augmentation), timed.
//!
//! ```text
//! cargo run --release -p webssl-train --example dino_step -- \
//!     --config configs/vit-s.toml [--batch 8] [--iters 3] [--warmup 1] [--mode step|gemm]
//! ```
//!
//! One iteration is what `webssl_train::dino::train` does per step at world size 1, through the
//! same library calls (`dino/step.rs` `forward` and the loop body of `dino/mod.rs` at commit
//! e359eac; that module is private, so its ~60 lines are repeated here, not re-implemented):
//! view tensors from host buffers → teacher backbone on the 2 global crops (no autodiff) → DINO head
//! on the CLS tokens, the patch head on the masked patch tokens → Sinkhorn-Knopp targets (3 iterations)
//! → student backbone on the masked global crops and, separately, the local crops (stochastic depth
//! on a batch subset per block, as dinov2's `drop_add_residual_stochastic_depth`) → heads →
//! `dino_loss` + `ibot_loss` + 0.1 · `koleo_loss` → backward → per-module gradient clipping
//! (backbone, DINO head, iBOT head) → AdamW with dinov2's per-parameter lr/wd rules → EMA teacher.
//!
//! The recipe (heads, prototypes, drop path, clip, layer decay) comes from the config file; the
//! teacher targets are always Sinkhorn-Knopp (the Web-DINO recipe), schedules are held at their
//! final values. iBOT masks: as dinov2's `collate_data_and_cast`, half of the 2B global crops are
//! masked, crop `i` at ratio ∈ `linspace(0.1, 0.5, B + 1)[i..i+2]` (here the midpoint, so both
//! sides mask the same number of tokens), at random positions (the cost does not depend on where).
//!
//! mimalloc keeps freed pages, the rayon pool is pinned to the cores (`kernels::pin_rayon_threads`;
//! `WEBSSL_PIN_THREADS=0` switches it off), as in `webssl-models/examples/cpu_bench.rs`.
//!
//! `gemm` mode: a 1024³ f32 matmul, the "% of GEMM peak" reference. Prints one JSON line with the
//! per-iteration seconds, their median, img/s, and the FLOPs of one step: 2 per multiply-add of every
//! GEMM (backbones, attention, heads) actually run — teacher forward, student forward on the kept
//! batch subset of each block, student backward at 2× its forward.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Bool, Device, Distribution, Int, Tensor, TensorData};
use webssl_models::{Ffn, VitConfig};
use webssl_train::clip_grad::ParamGrads;
use webssl_train::dino::config::DinoConfig;
use webssl_train::dino::model::DinoModel;
use webssl_train::ema::ema_update;
use webssl_train::objectives;
use webssl_train::param_groups::dinov2_rule;
use webssl_train::run::OptimizerSet;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// As `webssl-models/examples/cpu_bench.rs` and the `webssl` binary: mimalloc keeps freed pages
/// committed (`purge_delay = -1`) unless `MIMALLOC_PURGE_DELAY` is set or `WEBSSL_MI_PURGE=default`.
fn keep_freed_pages() -> &'static str {
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    /// `mi_option_purge_delay` in mimalloc v3's `include/mimalloc.h` (libmimalloc-sys 0.1.49).
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return "env";
    }
    if std::env::var("WEBSSL_MI_PURGE").as_deref() == Ok("default") {
        return "default";
    }
    // SAFETY: a plain option store, called before any other thread exists.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    "never"
}

struct Args {
    config: String,
    batch: Option<usize>,
    mode: String,
    iters: usize,
    warmup: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        config: "configs/vit-s.toml".into(),
        batch: None,
        mode: "step".into(),
        iters: 3,
        warmup: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--config" => a.config = v()?,
            "--batch" => a.batch = Some(v()?.parse().map_err(|e| format!("--batch: {e}"))?),
            "--mode" => a.mode = v()?,
            "--iters" => a.iters = v()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--warmup" => a.warmup = v()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// splitmix64: the benchmark's only random stream (mask positions, drop-path subsets).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// The first `k` of a uniform permutation of `0..n`, sorted.
    fn subset(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + (self.next() % (n - i) as u64) as usize;
            idx.swap(i, j);
        }
        let mut chosen = idx[..k].to_vec();
        chosen.sort_unstable();
        chosen
    }
}

/// iBOT masks of the 2B global crops (see the module docs).
struct Masks {
    masks: Vec<bool>,
    indices: Vec<i64>,
    weights: Vec<f32>,
}

fn ibot_masks(crops: usize, n: usize, ratio: (f64, f64), probability: f64, rng: &mut Rng) -> Masks {
    let n_masked_crops = (crops as f64 * probability) as usize;
    let step = (ratio.1 - ratio.0) / n_masked_crops.max(1) as f64;
    let mut masks = vec![false; crops * n];
    for i in 0..n_masked_crops {
        let count = (n as f64 * (ratio.0 + (i as f64 + 0.5) * step)) as usize;
        for p in rng.subset(n, count) {
            masks[i * n + p] = true;
        }
    }
    let mut indices = Vec::new();
    let mut weights = Vec::new();
    for c in 0..crops {
        let row = &masks[c * n..(c + 1) * n];
        let count = row.iter().filter(|&&m| m).count();
        for (p, _) in row.iter().enumerate().filter(|&(_, &m)| m) {
            indices.push((c * n + p) as i64);
            weights.push(1.0 / count as f32);
        }
    }
    Masks {
        masks,
        indices,
        weights,
    }
}

/// Per-block keep sets for stochastic depth (`dino/step.rs` `keep_sets`).
fn keep_sets(
    rate: f64,
    batch: usize,
    depth: usize,
    rng: &mut Rng,
    device: &Device,
) -> Vec<(Tensor<1, Int>, Tensor<1, Int>)> {
    let keep = ((batch as f64 * (1.0 - rate)) as usize).max(1);
    let mut draw = || {
        let v: Vec<i64> = rng
            .subset(batch, keep)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        Tensor::<1, Int>::from_data(TensorData::new(v, [keep]), device)
    };
    (0..depth).map(|_| (draw(), draw())).collect()
}

/// Multiply-adds of the backbone's GEMMs for one image of `tokens` tokens: patch embedding (of
/// `patches` patches) and, per block, qkv, attention (QKᵀ and PV), proj, FFN; `keep` scales the
/// blocks (stochastic depth runs them on a batch subset).
fn backbone_macs(cfg: &VitConfig, side: usize, keep: f64) -> f64 {
    let patches = (side / cfg.patch_size).pow(2) as f64;
    let n = patches + 1.0 + cfg.num_register_tokens as f64;
    let d = cfg.embed_dim as f64;
    let h = cfg.ffn_hidden() as f64;
    let ffn = match cfg.ffn {
        Ffn::Gelu => 2.0 * n * d * h,
        Ffn::Swiglu => 3.0 * n * d * h,
    };
    let block = 3.0 * n * d * d + 2.0 * n * n * d + n * d * d + ffn;
    patches * (cfg.in_chans * cfg.patch_size.pow(2)) as f64 * d + keep * cfg.depth as f64 * block
}

fn head_macs(in_dim: usize, hidden: usize, bottleneck: usize, k: usize) -> f64 {
    (in_dim * hidden + hidden * hidden + hidden * bottleneck + bottleneck * k) as f64
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n.is_multiple_of(2) {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    } else {
        s[n / 2]
    }
}

/// Minor page faults of the process so far (each is a fresh page zeroed by the kernel).
fn minor_faults() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_minflt
    }
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone()
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map(|v| v[0])
        .unwrap_or(f64::NAN)
}

fn main() -> Result<(), String> {
    let purge = keep_freed_pages();
    let pinned = webssl_models::kernels::pin_rayon_threads();
    let a = parse()?;
    let dev = Device::flex();
    let mut times = Vec::new();
    if a.mode == "gemm" {
        let m = 1024;
        let x = Tensor::<2>::random([m, m], Distribution::Normal(0.0, 1.0), &dev);
        let y = Tensor::<2>::random([m, m], Distribution::Normal(0.0, 1.0), &dev);
        for i in 0..a.warmup + a.iters.max(20) {
            let t = Instant::now();
            let _ = x.clone().matmul(y.clone()).into_data();
            if i >= a.warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let med = median(&times);
        println!(
            "{{\"impl\":\"ours\",\"mode\":\"gemm\",\"mi_purge\":\"{purge}\",\"pinned\":{pinned:?},\"median_s\":{med:.6},\"gflop_s\":{:.2}}}",
            2.0 * (m * m * m) as f64 / med / 1e9
        );
        return Ok(());
    }
    if a.mode != "step" {
        return Err(format!("unknown --mode {} (step, gemm)", a.mode));
    }

    let text =
        std::fs::read_to_string(&a.config).map_err(|e| format!("reading {}: {e}", a.config))?;
    let mut cfg: DinoConfig = toml::from_str(&text).map_err(|e| format!("{}: {e}", a.config))?;
    if let Some(b) = a.batch {
        cfg.data.batch_size = b;
    }
    let vit = cfg.vit().map_err(|e| e.to_string())?;
    let b = cfg.data.batch_size;
    let (g, l, n_local) = (
        cfg.crops.global_size as usize,
        cfg.crops.local_size as usize,
        cfg.crops.n_local,
    );
    let n_tokens = (g / vit.patch_size).pow(2);
    let depth = vit.depth;

    let ad = dev.clone().autodiff();
    let mut student = DinoModel::new(&vit, &cfg.heads, cfg.seed, &ad);
    let mut teacher = student.valid();
    let mut parts = vec!["backbone", "dino_head"];
    if cfg.heads.ibot_separate_head {
        parts.push("ibot_head");
    }
    let mut opt = OptimizerSet::new(&parts, cfg.optim.betas, 1e-8);
    let (lr, last_lr, wd, mom) = (
        cfg.scaled_lr(1),
        cfg.scaled_lr(1),
        cfg.optim.weight_decay,
        cfg.optim.momentum_teacher,
    );
    let (teacher_temp, student_temp) = (cfg.loss.teacher_temp, cfg.loss.student_temp);
    let rule_backbone = |name: &str| {
        dinov2_rule(
            name,
            depth,
            cfg.optim.layerwise_decay,
            cfg.optim.patch_embed_lr_mult,
        )
    };
    let head_rule = |name: &str| {
        let mut rule = dinov2_rule(name, 0, 1.0, 1.0);
        if cfg.heads.norm_last_layer && name.ends_with("last_layer.weight_g") {
            rule.lr_mult = 0.0;
            rule.wd_mult = 0.0;
        }
        rule
    };

    // random inputs, fixed across iterations (host buffers, as the loader's batch)
    let mut rng = Rng(cfg.seed ^ 0xD1_0057);
    let mut normal = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| {
                // Box-Muller from two uniforms
                let u1 = ((rng.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                let u2 = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect()
    };
    let globals = normal(2 * b * 3 * g * g);
    let locals = normal(n_local * b * 3 * l * l);
    let mut rng = Rng(cfg.seed ^ 0x1B07);
    let mk = ibot_masks(
        2 * b,
        n_tokens,
        cfg.loss.mask_ratio,
        cfg.loss.mask_probability,
        &mut rng,
    );
    let m = mk.indices.len();

    let mut losses = Vec::new();
    let mut faults = Vec::new();
    for it in 0..a.warmup + a.iters {
        let t0 = Instant::now();
        let f0 = minor_faults();
        // ---- dino/step.rs `forward` ----
        let inner = dev.clone();
        let globals_t =
            Tensor::<4>::from_data(TensorData::new(globals.clone(), [2 * b, 3, g, g]), &inner);
        let globals_s =
            Tensor::<4>::from_data(TensorData::new(globals.clone(), [2 * b, 3, g, g]), &ad);
        let locals_s =
            Tensor::<4>::from_data(TensorData::new(locals.clone(), [n_local * b, 3, l, l]), &ad);
        let mask_idx =
            |d: &Device| Tensor::<1, Int>::from_data(TensorData::new(mk.indices.clone(), [m]), d);
        let masks =
            Tensor::<2, Bool>::from_data(TensorData::new(mk.masks.clone(), [2 * b, n_tokens]), &ad);
        let t_out = teacher.backbone.forward_features(globals_t, None);
        let d = t_out.cls.dims()[1];
        let t_cls_logits = teacher.dino_head.forward(t_out.cls);
        let t_patch_logits = teacher.patch_head().forward(
            t_out
                .patches
                .reshape([2 * b * n_tokens, d])
                .select(0, mask_idx(&inner)),
        );
        let t_cls = objectives::sinkhorn_knopp(t_cls_logits, teacher_temp, 3);
        let t_patch = objectives::sinkhorn_knopp(t_patch_logits, teacher_temp, 3);
        let t_views = vec![
            Tensor::from_inner(t_cls.clone().slice(0..b)),
            Tensor::from_inner(t_cls.slice(b..2 * b)),
        ];
        let rate = cfg.model.drop_path_rate;
        let mut drop = |n: usize| (rate > 0.0).then(|| keep_sets(rate, n, depth, &mut rng, &ad));
        let keep_g = drop(2 * b);
        let keep_l = drop(n_local * b);
        let s_g = student
            .backbone
            .forward_features_drop(globals_s, Some(masks), &mut |i| {
                keep_g.as_ref().map(|k| k[i].clone())
            });
        let s_l = student
            .backbone
            .forward_features_drop(locals_s, None, &mut |i| {
                keep_l.as_ref().map(|k| k[i].clone())
            });
        let s_g_logits = student.dino_head.forward(s_g.cls.clone());
        let s_l_logits = student.dino_head.forward(s_l.cls);
        let mut crops = vec![s_g_logits.clone().slice(0..b), s_g_logits.slice(b..2 * b)];
        for v in 0..n_local {
            crops.push(s_l_logits.clone().slice(v * b..(v + 1) * b));
        }
        let dino = objectives::dino_loss(&crops, &t_views, student_temp);
        let s_patch_logits = student.patch_head().forward(
            s_g.patches
                .reshape([2 * b * n_tokens, d])
                .select(0, mask_idx(&ad)),
        );
        let weights = Tensor::<1>::from_data(TensorData::new(mk.weights.clone(), [m]), &ad);
        let ibot = objectives::ibot_loss(
            s_patch_logits,
            Tensor::from_inner(t_patch),
            weights,
            2 * b,
            student_temp,
        );
        let koleo = objectives::koleo_loss(s_g.cls.clone().slice(0..b))
            + objectives::koleo_loss(s_g.cls.slice(b..2 * b));
        let total = dino * cfg.loss.dino_weight
            + ibot * cfg.loss.ibot_weight
            + koleo * cfg.loss.koleo_weight;
        // ---- dino/mod.rs loop body ----
        let loss = scalar(&total);
        if !loss.is_finite() {
            return Err(format!("iteration {it}: loss {loss}"));
        }
        let grads = total.backward();
        let mut g_backbone = ParamGrads::from_module(&student.backbone, &grads);
        let mut g_dino = ParamGrads::from_module(&student.dino_head, &grads);
        let mut g_ibot = student
            .ibot_head
            .as_ref()
            .map(|h| ParamGrads::from_module(h, &grads));
        g_backbone.clip(cfg.optim.clip_grad);
        g_dino.clip(cfg.optim.clip_grad);
        if let Some(gi) = g_ibot.as_mut() {
            gi.clip(cfg.optim.clip_grad);
        }
        let DinoModel {
            backbone,
            dino_head,
            ibot_head,
        } = student;
        let backbone =
            opt.get("backbone")
                .step(backbone, &g_backbone, lr, last_lr, wd, &rule_backbone);
        let dino_head = opt
            .get("dino_head")
            .step(dino_head, &g_dino, lr, last_lr, wd, &head_rule);
        let ibot_head = match (ibot_head, g_ibot.as_ref()) {
            (Some(h), Some(gi)) => Some(
                opt.get("ibot_head")
                    .step(h, gi, lr, last_lr, wd, &head_rule),
            ),
            (h, _) => h,
        };
        student = DinoModel {
            backbone,
            dino_head,
            ibot_head,
        };
        teacher = ema_update(teacher, &student.valid(), mom);
        // flex is eager, but make sure the update happened before the clock stops
        let _ = teacher.backbone.norm.weight.val().into_data();
        if it >= a.warmup {
            times.push(t0.elapsed().as_secs_f64());
            faults.push(minor_faults() - f0);
        }
        losses.push(loss);
    }

    // FLOPs of one step (see the module docs)
    let keep = |n: usize| {
        if cfg.model.drop_path_rate > 0.0 {
            ((n as f64 * (1.0 - cfg.model.drop_path_rate)) as usize).max(1) as f64 / n as f64
        } else {
            1.0
        }
    };
    let h = &cfg.heads;
    let dino_head = head_macs(
        vit.embed_dim,
        h.hidden_dim,
        h.dino_bottleneck_dim,
        h.dino_prototypes,
    );
    let patch_head = if h.ibot_separate_head {
        head_macs(
            vit.embed_dim,
            h.hidden_dim,
            h.ibot_bottleneck_dim,
            h.ibot_prototypes,
        )
    } else {
        dino_head
    };
    let (bg, bl) = ((2 * b) as f64, (n_local * b) as f64);
    let teacher_macs = bg * backbone_macs(&vit, g, 1.0) + bg * dino_head + m as f64 * patch_head;
    let student_fwd = bg * backbone_macs(&vit, g, keep(2 * b))
        + bl * backbone_macs(&vit, l, keep(n_local * b))
        + (bg + bl) * dino_head
        + m as f64 * patch_head;
    let flops = 2.0 * (teacher_macs + 3.0 * student_fwd);

    let med = median(&times);
    let times_s: Vec<String> = times.iter().map(|t| format!("{t:.4}")).collect();
    let losses_s: Vec<String> = losses.iter().map(|v| format!("{v:.5}")).collect();
    println!(
        "{{\"impl\":\"ours\",\"arch\":\"{}\",\"batch\":{b},\"mode\":\"dino\",\"fused\":{},\"mi_purge\":\"{purge}\",\"pinned\":{pinned:?},\"k_dino\":{},\"k_ibot\":{},\"separate_ibot_head\":{},\"drop_path\":{},\"masked\":{m},\"minor_faults\":{faults:?},\"times_s\":[{}],\"median_s\":{med:.5},\"img_s\":{:.4},\"gflop\":{:.2},\"gflop_s\":{:.2},\"loss\":[{}]}}",
        cfg.model.arch,
        webssl_models::kernels::enabled(),
        h.dino_prototypes,
        if h.ibot_separate_head {
            h.ibot_prototypes
        } else {
            h.dino_prototypes
        },
        h.ibot_separate_head,
        cfg.model.drop_path_rate,
        times_s.join(","),
        b as f64 / med,
        flops / 1e9,
        flops / 1e9 / med,
        losses_s.join(",")
    );
    Ok(())
}
