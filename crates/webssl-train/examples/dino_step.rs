//! The Rust side of `bench/dino_step.sh`: one full DINOv2 / Web-DINO training step on burn-flex (CPU),
//! random weights and random input tensors (no data loader, no augmentation), timed.
//!
//! ```text
//! cargo run --release -p webssl-train --example dino_step -- \
//!     --config configs/vit-s.toml [--batch 8] [--iters 3] [--warmup 1] [--mode step|gemm]
//! ```
//!
//! One iteration is `webssl_train::dino::DinoTrainer::step` — exactly what `webssl pretrain dino` runs
//! per step at world size 1: view tensors from host buffers → teacher backbone on the 2 global crops
//! (no autodiff) → heads → Sinkhorn-Knopp targets (3 iterations) → student backbone on the masked global
//! crops and, separately, the local crops (stochastic depth on a batch subset per block, as dinov2's
//! `drop_add_residual_stochastic_depth`) → the student's head once over all its rows → `dino_loss` +
//! `ibot_loss` + 0.1 · `koleo_loss` → backward → per-module gradient clipping (backbone, DINO head,
//! iBOT head) → AdamW with dinov2's per-parameter lr/wd rules → EMA teacher.
//!
//! The recipe (heads, prototypes, drop path, clip, layer decay) comes from the config file; the
//! teacher targets are always Sinkhorn-Knopp (the Web-DINO recipe), and the schedules are held at
//! their base values (no warm-up, no last-layer freeze, a run of 10⁹ steps) so that every iteration
//! updates like a mid-run step. iBOT masks: as dinov2's `collate_data_and_cast`, half of the 2B global crops are
//! masked, crop `i` at ratio ∈ `linspace(0.1, 0.5, B + 1)[i..i+2]` (here the midpoint, so both
//! sides mask the same number of tokens), at random positions (the cost does not depend on where).
//!
//! mimalloc keeps freed pages (`kernels::keep_freed_pages`), the rayon pool is pinned to the cores
//! (`kernels::pin_rayon_threads`; `WEBSSL_PIN_THREADS=0` switches it off), as in
//! `webssl-models/examples/cpu_bench.rs`.
//!
//! `gemm` mode: a 1024³ f32 matmul, the "% of GEMM peak" reference. Prints one JSON line with the
//! per-iteration seconds, their median, img/s, and the FLOPs of one step: 2 per multiply-add of every
//! GEMM (backbones, attention, heads) actually run — teacher forward, student forward on the kept
//! batch subset of each block, student backward at 2× its forward.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use webssl_data::loader::Batch;
use webssl_data::masks::IbotMasks;
use webssl_models::{Ffn, VitConfig};
use webssl_train::dino::DinoTrainer;
use webssl_train::dino::config::{Centering, DinoConfig};
use webssl_train::dist::Dist;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// iBOT masks of the 2B global crops (see the module docs), `[crops, n]` row-major.
fn ibot_masks(
    crops: usize,
    n: usize,
    ratio: (f64, f64),
    probability: f64,
    rng: &mut Rng,
) -> Vec<bool> {
    let n_masked_crops = (crops as f64 * probability) as usize;
    let step = (ratio.1 - ratio.0) / n_masked_crops.max(1) as f64;
    let mut masks = vec![false; crops * n];
    for i in 0..n_masked_crops {
        let count = (n as f64 * (ratio.0 + (i as f64 + 0.5) * step)) as usize;
        for p in rng.subset(n, count) {
            masks[i * n + p] = true;
        }
    }
    masks
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

fn main() -> Result<(), String> {
    let purge = webssl_models::kernels::keep_freed_pages();
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
    // Schedules held at their base values (see the module docs); Sinkhorn-Knopp targets.
    cfg.optim.total_steps = 1_000_000_000;
    cfg.optim.warmup_steps = 0;
    cfg.optim.freeze_last_layer_steps = 0;
    cfg.loss.teacher_temp_warmup_steps = 0;
    cfg.loss.centering = Centering::SinkhornKnopp;
    let dist = Dist::single();
    let mut trainer = DinoTrainer::new(&cfg, &dist, &dev).map_err(|e| e.to_string())?;

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
    let masks = ibot_masks(
        2 * b,
        n_tokens,
        cfg.loss.mask_ratio,
        cfg.loss.mask_probability,
        &mut rng,
    );
    let ibot = IbotMasks::from_masks(masks, 2 * b, n_tokens, 2 * b * n_tokens);
    let m = ibot.n_masked_patches;
    let batch = Batch {
        index: 0,
        batch_size: b,
        groups: Vec::new(),
        views: vec![globals, locals],
        keys: Vec::new(),
        addrs: Vec::new(),
        captions: Vec::new(),
        labels: Vec::new(),
        ibot: Some(ibot),
        mae: None,
    };

    let mut losses = Vec::new();
    let mut faults = Vec::new();
    for it in 0..a.warmup + a.iters {
        let t0 = Instant::now();
        let f0 = minor_faults();
        let values;
        (trainer, values) = trainer
            .step(it as u64, std::slice::from_ref(&batch), &dist)
            .map_err(|e| format!("iteration {it}: {e}"))?;
        // flex is eager, but make sure the update happened before the clock stops
        let _ = trainer.teacher.backbone.norm.weight.val().into_data();
        if it >= a.warmup {
            times.push(t0.elapsed().as_secs_f64());
            faults.push(minor_faults() - f0);
        }
        let loss = values
            .iter()
            .find(|(k, _)| *k == "loss")
            .map_or(f64::NAN, |(_, v)| *v);
        losses.push(loss);
    }

    // FLOPs of one step (see the module docs)
    let keep = |n: usize| {
        if cfg.drop_path_rate() > 0.0 {
            ((n as f64 * (1.0 - cfg.drop_path_rate())) as usize).max(1) as f64 / n as f64
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
        cfg.drop_path_rate(),
        times_s.join(","),
        b as f64 / med,
        flops / 1e9,
        flops / 1e9 / med,
        losses_s.join(",")
    );
    Ok(())
}
