//! The Rust side of `bench/cpu.sh`: times the ViT backbone on burn-flex (CPU) with random weights.
//!
//! ```text
//! cargo run --release -p webssl-models --example cpu_bench -- \
//!     --arch vit-small --batch 8 --mode infer|train|gemm [--iters 5] [--warmup 1]
//! ```
//!
//! - `infer`: `Vit::forward_features` on `[B, 3, 224, 224]` (no autodiff), features copied out.
//! - `train`: one training step on the autodiff device: forward, loss = mean of the squared normed
//!   tokens (CLS + patches, the same loss as `bench/cpu_torch.py`), backward, AdamW (lr 1e-4,
//!   weight decay 0.05) over every parameter.
//! - `gemm`: a 1024³ f32 matmul (burn-flex's GEMM), the reference for "% of GEMM peak".
//!
//! The fused CPU kernels (`webssl_models::kernels`) are used unless `WEBSSL_FUSED_KERNELS=0`.
//! mimalloc keeps freed pages (`kernels::keep_freed_pages`) unless `WEBSSL_MI_PURGE=default`; the
//! rayon pool is pinned to the cores (`kernels::pin_rayon_threads`) unless `WEBSSL_PIN_THREADS=0`.
//! Prints one JSON line: per-iteration seconds, the median, img/s and the FLOPs of one iteration
//! (forward = 2·MACs of every GEMM incl. attention; a training step counts 3× the forward).

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use webssl_models::{Ffn, Vit, VitConfig, presets};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    arch: String,
    batch: usize,
    mode: String,
    iters: usize,
    warmup: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        arch: "vit-small".into(),
        batch: 8,
        mode: "infer".into(),
        iters: 5,
        warmup: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--arch" => a.arch = v()?,
            "--batch" => a.batch = v()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--mode" => a.mode = v()?,
            "--iters" => a.iters = v()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--warmup" => a.warmup = v()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// Forward FLOPs of one image at the config's native resolution (2 per multiply-add).
fn forward_flops(cfg: &VitConfig) -> f64 {
    let n = (1 + cfg.num_register_tokens + cfg.num_patches()) as f64;
    let d = cfg.embed_dim as f64;
    let h = cfg.ffn_hidden() as f64;
    let patch = 2.0 * cfg.num_patches() as f64 * (cfg.in_chans * cfg.patch_size.pow(2)) as f64 * d;
    let ffn = match cfg.ffn {
        Ffn::Gelu => 2.0 * n * d * h * 2.0,
        Ffn::Swiglu => 2.0 * n * d * h * 3.0,
    };
    let block = 2.0 * n * d * 3.0 * d + 2.0 * n * d * d + 2.0 * 2.0 * n * n * d + ffn;
    patch + cfg.depth as f64 * block
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    // the mean of the middle two for an even count, as Python's `statistics.median` (torch side)
    if n.is_multiple_of(2) {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    } else {
        s[n / 2]
    }
}

fn main() -> Result<(), String> {
    let purge = webssl_models::kernels::keep_freed_pages();
    let pinned = webssl_models::kernels::pin_rayon_threads();
    let a = parse()?;
    let cfg = presets::preset(&a.arch).map_err(|e| e.to_string())?;
    let s = cfg.img_size;
    let dev = Device::flex();
    let mut times = Vec::new();
    let flops;
    match a.mode.as_str() {
        "gemm" => {
            let m = 1024;
            let x = Tensor::<2>::random([m, m], Distribution::Normal(0.0, 1.0), &dev);
            let y = Tensor::<2>::random([m, m], Distribution::Normal(0.0, 1.0), &dev);
            flops = 2.0 * (m * m * m) as f64;
            for i in 0..a.warmup + a.iters.max(20) {
                let t = Instant::now();
                let _ = x.clone().matmul(y.clone()).into_data();
                if i >= a.warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        "infer" => {
            let vit = Vit::new(&cfg, &dev);
            let x = Tensor::<4>::random([a.batch, 3, s, s], Distribution::Normal(0.0, 1.0), &dev);
            flops = forward_flops(&cfg) * a.batch as f64;
            for i in 0..a.warmup + a.iters {
                let t = Instant::now();
                let out = vit.forward_features(x.clone(), None);
                let _ = out.cls.into_data();
                let _ = out.patches.into_data();
                if i >= a.warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        "train" => {
            let ad = dev.clone().autodiff();
            let mut vit = Vit::new(&cfg, &ad);
            let mut opt = AdamWConfig::new().with_weight_decay(0.05).init();
            let x = Tensor::<4>::random([a.batch, 3, s, s], Distribution::Normal(0.0, 1.0), &ad);
            flops = 3.0 * forward_flops(&cfg) * a.batch as f64;
            for i in 0..a.warmup + a.iters {
                let t = Instant::now();
                let out = vit.forward_features(x.clone(), None);
                let tokens = Tensor::cat(vec![out.cls.unsqueeze_dim::<3>(1), out.patches], 1);
                let loss = tokens.powf_scalar(2.0).mean();
                let grads = loss.backward();
                let grads = GradientsParams::from_grads(grads, &vit);
                vit = opt.step(1e-4, vit, grads);
                // the step is lazy on no backend here (flex is eager), but make sure it happened
                let _ = vit.valid().norm.weight.val().into_data();
                if i >= a.warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        other => return Err(format!("unknown --mode {other} (infer, train, gemm)")),
    }
    let med = median(&times);
    let times_s: Vec<String> = times.iter().map(|t| format!("{t:.4}")).collect();
    let fused = webssl_models::kernels::enabled();
    println!(
        "{{\"impl\":\"ours\",\"arch\":\"{}\",\"batch\":{},\"mode\":\"{}\",\"fused\":{},\"mi_purge\":\"{}\",\"pinned\":{:?},\"times_s\":[{}],\"median_s\":{:.5},\"img_s\":{:.4},\"gflop\":{:.2},\"gflop_s\":{:.2}}}",
        a.arch,
        a.batch,
        a.mode,
        fused,
        purge,
        pinned,
        times_s.join(","),
        med,
        a.batch as f64 / med,
        flops / 1e9,
        flops / 1e9 / med
    );
    Ok(())
}
