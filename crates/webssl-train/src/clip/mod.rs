//! The CLIP control on the same data: `webssl pretrain clip`.
//!
//! One step, as MetaCLIP's `train_one_epoch` (docs/reference/training-algorithms.md §8): schedule
//! (`cosine_lr`: linear warm-up `lr·(step+1)/warmup`, cosine to 0) → image tower on one
//! RandomResizedCrop(scale 0.9–1) view with CLIP normalisation, text tower on the tokenised captions
//! → symmetric InfoNCE with the learnable logit scale → backward → optional global grad-norm clip
//! (off by default, as MetaCLIP) → AdamW (0.9, 0.98, eps 1e-6, wd 0.2 except `ndim < 2` / norms /
//! biases / `logit_scale`) → clamp the logit scale to `[0, ln 100]`.
//!
//! Same data by construction: the loader is built from the shared `[data]` section and seed exactly as
//! the DINO and MAE trainers build theirs, so the three read the identical image stream; the checkpoint
//! records the shard identity and samples seen. Samples without a caption cannot form a pair: they are
//! dropped from the step's batch and counted (`captions_missing` in metrics.jsonl); a step with fewer
//! than two captioned images makes no update (InfoNCE needs negatives).
//!
//! Run directory: checkpoints hold `model.safetensors` (both towers, projections, logit scale),
//! `optim.safetensors`, `tokenizer.json` and `state.json`; at the end the image tower is exported in HF
//! layout to `export/` (for `webssl embed` and the probes), the full model to `clip.safetensors` (both
//! tower configs in `clip_config.json`, read back by [`load_clip`]) and the tokenizer to
//! `tokenizer.json`.
//!
//! Data-parallel across processes ([`crate::dist`], `webssl launch --nproc N`): each rank reads its
//! own sample split, the features are all-gathered and each rank's loss is local to its own pairs with
//! the gradient routed back through the host collectives ([`gather`]: what MetaCLIP/open_clip do with
//! `gather_with_grad` + `local_loss` under DDP), so the averaged gradient is that of the loss over the
//! global batch; rank 0 alone writes. At world size 1 the step is the plain one-process loss.
//! `tests/dist_clip.rs` checks 2 ranks × B against 1 process × 2B.
//! `[run] shard_optimizer_state` shards the AdamW moments over the ranks (ZeRO-1, [`crate::zero`]);
//! the loop itself (resume, logging, checkpoints, exports) is [`crate::run::driver`], shared with DINO
//! and MAE.
//!
//! Deviations: f32 instead of AMP; the BPE vocabulary is trained on the run's captions unless a
//! `tokenizer.json` is given (see [`tokenizer`]).

pub mod config;
pub mod gather;
pub mod model;
pub mod tokenizer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use webssl_data::augment::SingleViewTransform;
use webssl_data::loader::{Batch, MaskSpec, ShardSource, SingleView};
use webssl_models::Vit;
use webssl_models::checkpoint::{self, export, store::TensorStore};
use webssl_models::params::{scalar, to_host, trainable_params};
use webssl_models::text::TextConfig;

pub use config::ClipConfig;
pub use model::ClipModel;
pub use tokenizer::{ClipTokenizer, TokenBatch};

use crate::clip_grad::ParamGrads;
use crate::dist::{Dist, ReduceOp};
use crate::error::{Result, TrainError};
use crate::objectives::clip::{clip_loss_terms, l2_normalize};
use crate::optim::OptimizerSet;
use crate::param_groups::{clip_rule, param_ranks};
use crate::run::checkpoint::{CheckpointManager, Resume};
use crate::run::driver::{self, LoopSpec, OPTIM_FILE, TrainState, value};
use crate::run::memory::{MemoryEstimate, saturate};
use crate::run::recipe::{Plan, Recipe};
use crate::run::sections::EvalConfig;
use crate::run::state::{TrainOutcome, read_all, tensors_bytes};
use crate::schedule::clip_lr;
use crate::zero::ZeroShards;

/// The single optimizer's name in the checkpoint (both towers, projections and logit scale as one set).
const OPT: &str = "clip";

/// OpenAI CLIP normalisation, written into the exported `preprocessor_config.json`.
const CLIP_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The first `max` captions in shard-index order (shards 0, 1, … and members in file order): the
/// tokenizer's bounded, deterministic training pass. Unreadable members and samples without a
/// caption are passed over.
pub fn first_captions(shards: &dyn ShardSource, max: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for s in 0..shards.num_shards() {
        for member in shards.open(s)? {
            if out.len() >= max {
                return Ok(out);
            }
            if let Ok(sample) = member
                && let Some(c) = sample.caption
                && !c.trim().is_empty()
            {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// The tokenizer a fresh run uses: the configured `tokenizer.json`, or a BPE trained on the first
/// `text.tokenizer_train_samples` captions of the training shards.
pub fn build_tokenizer(cfg: &ClipConfig, shards: &dyn ShardSource) -> Result<ClipTokenizer> {
    let t = &cfg.text;
    match &t.tokenizer {
        Some(path) => ClipTokenizer::load(Path::new(path), t.context_length),
        None => {
            let captions = first_captions(shards, t.tokenizer_train_samples)?;
            if captions.is_empty() {
                return Err(TrainError::config(
                    "text.tokenizer",
                    format!(
                        "no captions in the training shards `{}` to train a BPE on; give a tokenizer.json",
                        cfg.data.train
                    ),
                ));
            }
            tracing::info!(
                "training a byte-level BPE ({} tokens) on {} captions",
                t.vocab_size,
                captions.len()
            );
            ClipTokenizer::train(captions.into_iter(), t.vocab_size, t.context_length)
        }
    }
}

/// The exported image tower's `preprocessor_config.json`: the DINOv2-style processor at `size` with
/// the CLIP statistics the tower was trained with.
pub fn preprocessor(size: usize) -> serde_json::Value {
    let mut p = export::default_preprocessor(size);
    p["image_mean"] = serde_json::json!(CLIP_MEAN);
    p["image_std"] = serde_json::json!(CLIP_STD);
    p
}

/// The tokenizer of a fresh run, identical on every rank: rank 0 builds it ([`build_tokenizer`]:
/// trains the BPE or loads the configured file) while the others wait without a time limit (training
/// can take long), then it goes to them as `tokenizer.json` bytes.
pub fn build_tokenizer_ranked(
    cfg: &ClipConfig,
    shards: &dyn ShardSource,
    dist: &Dist,
) -> Result<ClipTokenizer> {
    if dist.world_size() == 1 {
        return build_tokenizer(cfg, shards);
    }
    let built = dist.is_main().then(|| {
        build_tokenizer(cfg, shards).and_then(|t| {
            let json = t.to_json()?;
            Ok((t, json))
        })
    });
    dist.barrier_untimed();
    // Rank 0's failure must not leave the others waiting: everyone learns whether it worked.
    let mut ok = [f64::from(u8::from(
        built.as_ref().is_none_or(|b| b.is_ok()),
    ))];
    dist.all_reduce_f64("tokenizer ready", &mut ok, ReduceOp::Sum);
    let (tok, mut json) = match built {
        Some(Err(e)) => return Err(e),
        Some(Ok((t, json))) => (Some(t), json.into_bytes()),
        None => (None, Vec::new()),
    };
    if ok[0] as usize != dist.world_size() {
        return Err(TrainError::Distributed(
            "rank 0 could not build the tokenizer (see its error)".into(),
        ));
    }
    dist.broadcast_bytes("tokenizer", &mut json, 0);
    match tok {
        Some(t) => Ok(t),
        None => {
            let json = String::from_utf8(json).map_err(|e| {
                TrainError::Distributed(format!("rank 0 sent a tokenizer that is not UTF-8: {e}"))
            })?;
            ClipTokenizer::from_json(&json, cfg.text.context_length)
        }
    }
}

impl Recipe for ClipConfig {
    fn validate(&self) -> Result<()> {
        ClipConfig::validate(self)
    }
    /// The run's numbers without building anything. The vocabulary is `text.vocab_size`, or the given
    /// `tokenizer.json`'s when it can be read. Memory as DINO's plan counts it (without a
    /// teacher): weights + gradients, the moments over the ZeRO-1 shards, collective buffers (the feature
    /// gathers are small beside them), update temporaries, activations.
    ///
    /// Activations per block and token, f32: ~14·width + 2·mlp hidden + heads·tokens (attention
    /// probabilities), for the image tower's `1 + (size/p)²` tokens and the text tower's full context
    /// (an upper bound: the trainer cuts each batch after its longest caption).
    fn plan(&self, world_size: usize) -> Result<Plan> {
        let cfg = self;
        let vit = cfg.vit()?;
        let loaded = cfg
            .text
            .tokenizer
            .as_ref()
            .and_then(|p| ClipTokenizer::load(Path::new(p), cfg.text.context_length).ok());
        // Without a tokenizer.json the vocabulary is the cap of a BPE still to be trained (merges may
        // run out below it).
        let vocab_is_cap = cfg.text.tokenizer.is_none();
        let vocab = loaded.map_or(cfg.text.vocab_size, |t| t.vocab_size());
        let text = cfg.text_tower(vocab)?;
        let image_params = webssl_models::presets::param_count(&vit);
        let text_params = text.num_params();
        // Both projections and the logit scale.
        let head_params = (vit.embed_dim * text.embed_dim) as u64 + 1;
        let params = image_params + text_params + head_params;
        let largest = [
            vit.embed_dim * vit.ffn_hidden(),
            text.vocab_size * text.width,
            text.width * text.mlp_hidden(),
            3 * text.width * text.width,
            vit.embed_dim * text.embed_dim,
        ]
        .into_iter()
        .max()
        .unwrap_or(0) as u64;
        // u128: the attention term grows with tokens², beyond u64 for the largest valid configs.
        let layout = cfg.data.layout(world_size)?;
        // Activations are one forward's: its backward frees them before the next.
        let b = layout.micro as u128;
        let tokens = (cfg.image.size as u128 / vit.patch_size as u128).pow(2) + 1;
        let per_block = |tokens: u128, width: u128, hidden: u128, heads: u128| {
            b * (tokens * (14 * width + 2 * hidden) + heads * tokens * tokens)
        };
        let image_act = vit.depth as u128
            * per_block(
                tokens,
                vit.embed_dim as u128,
                vit.ffn_hidden() as u128,
                vit.num_heads as u128,
            );
        let text_act = text.layers as u128
            * per_block(
                text.context_length as u128,
                text.width as u128,
                text.mlp_hidden() as u128,
                text.heads as u128,
            );
        let total_steps = cfg.optim.total_steps;
        Ok(Plan {
            lines: vec![
                format!(
                    "parameters: image tower {image_params} + text tower {text_params} (vocab {}{vocab}) + projections/logit scale {head_params} = {params}",
                    if vocab_is_cap { "≤ " } else { "" },
                ),
                format!(
                    "global batch {layout} · {total_steps} steps = {} samples seen; lr {:.3e} (warm-up + cosine to 0)",
                    total_steps * layout.global as u64,
                    cfg.optim.lr
                ),
            ],
            batch: layout,
            memory: MemoryEstimate::adamw(
                params,
                "weights+grads",
                2,
                largest,
                0,
                saturate(4 * (image_act + text_act)),
                &cfg.run,
                world_size,
            )
            .accumulating(layout.accumulation, params)
            .with_loader(layout.micro, 3 * (cfg.image.size as u64).pow(2)),
        })
    }
    fn total_steps(&self) -> u64 {
        self.optim.total_steps
    }
    /// Runs (or resumes) CLIP pretraining as configured, as this process's rank of `dist` (one process:
    /// [`Dist::single`]). `stop_after` ends this process after that many steps of the schedule have
    /// completed (a checkpoint is written there); the next run resumes.
    ///
    /// Data-parallel (docs/reference/training-algorithms.md §8): each rank reads its own split of the sample
    /// stream, features are all-gathered and each rank's loss is local to its pairs ([`gather`]), so the
    /// averaged gradient is that of the loss over the global batch; the logged loss and accuracies are
    /// the global batch's; rank 0 alone writes metrics, checkpoints (with every rank's loader cursor),
    /// the tokenizer and the exports. `optim.lr` is the lr of the global batch `batch_size · world_size`
    /// (MetaCLIP gives it per recipe, unscaled).
    fn train(
        &self,
        resolved: &toml::Table,
        resume: Resume,
        device: &Device,
        stop_after: Option<u64>,
        dist: &Dist,
    ) -> Result<TrainOutcome> {
        let cfg = self;
        cfg.preflight(dist.world_size())?;
        let vit = cfg.vit()?;
        let world_size = dist.world_size();
        let session = driver::start(&cfg.data, &cfg.run, resolved, resume, dist)?;

        let tok = match &session.resume_from {
            // The vocabulary is part of the model: a resumed run uses the checkpoint's own copy.
            Some(dir) => {
                let json = CheckpointManager::load_file(dir, "tokenizer.json")?;
                let json = String::from_utf8(json).map_err(|e| TrainError::Checkpoint {
                    path: dir.clone(),
                    reason: format!("tokenizer.json: {e}"),
                })?;
                ClipTokenizer::from_json(&json, cfg.text.context_length)?
            }
            None => build_tokenizer_ranked(cfg, &session.shards, dist)?,
        };
        let trainer = ClipTrainer::new(cfg, tok, dist, device)?;
        dist.check_same("the tokenizer", trainer.tok_json.as_bytes())?;
        if dist.is_main() {
            crate::run::atomic_write(
                &session.run.path.join("tokenizer.json"),
                trainer.tok_json.as_bytes(),
            )?;
        }

        // The shared stream, one CLIP crop per image.
        let transform = SingleViewTransform {
            scale: cfg.image.scale,
            ..SingleViewTransform::clip(cfg.image.size)
        };
        let total = cfg.optim.total_steps;
        let text_cfg = &trainer.text_cfg;
        let banner = format!(
            "CLIP: image {} ({} params) + text {}×{} ({} params, vocab {}), batch {} × {world_size} process(es), lr {:.3e}, {} steps",
            cfg.model.arch,
            webssl_models::presets::param_count(&vit),
            text_cfg.layers,
            text_cfg.width,
            text_cfg.num_params(),
            text_cfg.vocab_size,
            cfg.data.layout(world_size)?.per_process_text(),
            cfg.optim.lr,
            total
        );
        let spec = LoopSpec {
            seed: cfg.seed,
            data: &cfg.data,
            run: &cfg.run,
            total_steps: total,
            banner,
            plan_bytes: Some(cfg.plan(world_size)?.memory.total()),
        };
        driver::run(
            session,
            trainer,
            spec,
            Arc::new(SingleView::new(transform)?),
            MaskSpec::None,
            stop_after,
            dist,
        )
    }
    fn exported(&self, outcome: &TrainOutcome) -> String {
        format!(
            "image tower exported to {} (full CLIP: {})",
            outcome.export_dir.display(),
            outcome.run_dir.join("clip.safetensors").display()
        )
    }
    fn eval(&self) -> &EvalConfig {
        &self.eval
    }
    fn knn_baseline(&self, device: &Device) -> Result<(u32, Vit, &'static str)> {
        let init = ClipModel::init_visual(&self.vit()?, self.seed, device);
        Ok((self.image.size, init, "trained (CLIP)"))
    }
}

/// The trainable state of a CLIP run — both towers, projections, logit scale, AdamW moments — with its
/// tokenizer, and one optimizer step on it. `Recipe::train` feeds it from the loader; the multi-process
/// equivalence test feeds it hand-made batches.
pub struct ClipTrainer<'c> {
    cfg: &'c ClipConfig,
    pub model: ClipModel,
    opt: OptimizerSet,
    tok: ClipTokenizer,
    tok_json: String,
    text_cfg: TextConfig,
    /// The image tower's config (exported beside the weights).
    vit: webssl_models::VitConfig,
    /// Parameter ranks by path (weight decay only on ≥ 2-D weights).
    ranks: HashMap<String, usize>,
    size: usize,
    ad: Device,
    /// ZeRO-1 owners when the moments are sharded over ranks.
    zero: Option<ZeroShards>,
}

impl<'c> ClipTrainer<'c> {
    /// Fresh state (seeded init, identical on every rank) with the tokenizer `tok` (its vocabulary
    /// sizes the text tower) for this rank of `dist` (with `run.shard_optimizer_state` on several
    /// ranks, this rank keeps the AdamW moments of its ZeRO-1 share of the parameters).
    pub fn new(
        cfg: &'c ClipConfig,
        tok: ClipTokenizer,
        dist: &Dist,
        device: &Device,
    ) -> Result<Self> {
        let vit = cfg.vit()?;
        let ad = device.clone().autodiff();
        let text_cfg = cfg.text_tower(tok.vocab_size())?;
        let model = ClipModel::new(&vit, &text_cfg, cfg.clip.logit_scale_init, cfg.seed, &ad)?;
        let zero = (cfg.run.shard_optimizer_state && dist.world_size() > 1)
            .then(|| ZeroShards::new(&[(OPT, trainable_params(&model))], dist));
        Ok(ClipTrainer {
            zero,
            cfg,
            ranks: param_ranks(&model),
            model,
            opt: OptimizerSet::new(&[OPT], cfg.optim.betas, cfg.optim.eps),
            tok_json: tok.to_json()?,
            tok,
            text_cfg,
            vit,
            size: cfg.image.size as usize,
            ad,
        })
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tok
    }

    /// Parameters this rank keeps AdamW moments for (all of them unless sharded with ZeRO-1).
    pub fn optimizer_states(&self) -> usize {
        self.opt.num_states()
    }

    /// Restores the model and the optimizer moments (all of them) from a checkpoint directory.
    fn load(mut self, dir: &Path) -> Result<Self> {
        let open = |name: &str| TensorStore::open_file(&dir.join(name)).map_err(TrainError::from);
        self.model =
            checkpoint::assign_named_parameters(self.model, &open("model.safetensors")?, &self.ad)?;
        self.opt.load(&read_all(&open(OPTIM_FILE)?)?)?;
        Ok(self)
    }

    /// One optimizer step at schedule position `it` on this rank's `batches` (one CLIP view per image
    /// and the captions): pairs = images with a non-empty caption; towers → symmetric InfoNCE over the
    /// global batch (one process: [`clip_loss_terms`]; several: [`gather`]) → gradients averaged over
    /// ranks → optional clipping → AdamW → logit-scale clamp. Fewer than two pairs in the global
    /// batch: no update. Returns the logged values, the same on every rank (loss and accuracies of
    /// the global batch, pair counts summed over ranks).
    ///
    /// Each of `batches` is one forward (several: gradient accumulation), one InfoNCE over its own
    /// pairs on all ranks — the negatives are those of one forward, as in a run whose global batch
    /// is that forward's — and the update follows on the mean gradient of the forwards with at
    /// least two pairs; the logged loss and accuracies are their mean, the pair counts the step's
    /// sums.
    pub fn step(
        mut self,
        it: u64,
        batches: &[Batch],
        dist: &Dist,
    ) -> Result<(Self, Vec<(&'static str, f64)>)> {
        let cfg = self.cfg;
        let lr = clip_lr(
            cfg.optim.lr,
            it,
            cfg.optim.warmup_steps,
            cfg.optim.total_steps,
        );
        let wd = cfg.optim.weight_decay;
        let (mut pairs, mut images_all, mut used) = (0, 0, 0);
        let mut sums: Option<[f64; 3]> = None;
        let mut acc: Option<ParamGrads> = None;
        for batch in batches {
            let (forward, n_pairs, n_images) = self.forward_grads(it, batch, dist)?;
            pairs += n_pairs;
            images_all += n_images;
            let Some((g, terms)) = forward else { continue };
            used += 1;
            sums = Some(match sums {
                None => terms,
                Some(s) => std::array::from_fn(|i| s[i] + terms[i]),
            });
            match acc.as_mut() {
                None => acc = Some(g),
                Some(a) => a.accumulate(g),
            }
        }
        let missing = images_all - pairs;
        let (mut loss_v, mut i2t, mut t2i, mut grad_norm) = (0.0, 0.0, 0.0, 0.0);
        if let (Some(sums), Some(mut g)) = (sums, acc) {
            [loss_v, i2t, t2i] = sums.map(|s| s / used as f64);
            g.mean_over(used);
            grad_norm = if cfg.optim.clip_grad > 0.0 {
                g.clip(cfg.optim.clip_grad)
            } else {
                g.global_norm()
            };
            if !grad_norm.is_finite() {
                return Err(TrainError::NonFinite {
                    step: it,
                    what: "grad norm".into(),
                    value: grad_norm,
                });
            }
            if let Some(z) = &self.zero {
                // Clipped (or measured) on the whole averaged gradient above; now each rank steps
                // its own share.
                z.keep_owned(OPT, &mut g);
            }
            let ranks = &self.ranks;
            let rule = |name: &str| clip_rule(name, ranks.get(name).copied().unwrap_or(1));
            self.model = self.opt.get(OPT).step(self.model, &g, lr, lr, wd, &rule);
            if let Some(z) = &self.zero {
                self.model = z.sync(OPT, self.model, dist);
            }
            self.model = self.model.clamp_logit_scale();
        } else if dist.is_main() {
            tracing::warn!(
                "step {}: only {pairs} of {images_all} images have a caption; no update",
                it + 1,
            );
        }
        if used > 0 && used < batches.len() && dist.is_main() {
            tracing::warn!(
                "step {}: {} of {} forwards had fewer than two captioned images and were left out",
                it + 1,
                batches.len() - used,
                batches.len()
            );
        }
        let t_now = self.model.logit_scale_value();
        let values = vec![
            ("loss", loss_v),
            ("i2t_acc", i2t),
            ("t2i_acc", t2i),
            ("logit_scale", t_now),
            ("temperature", (-t_now).exp()),
            ("lr", lr),
            ("wd", wd),
            ("grad_norm", grad_norm),
            ("pairs", pairs as f64),
            ("captions_missing", missing as f64),
        ];
        Ok((self, values))
    }

    /// One forward and backward of a step on this rank's `batch`: the gradient averaged over ranks
    /// and the loss and accuracies of the forward's pairs on all ranks, `None` when they are fewer
    /// than two; with the pairs and images of the forward on all ranks.
    #[allow(clippy::type_complexity)]
    fn forward_grads(
        &self,
        it: u64,
        batch: &Batch,
        dist: &Dist,
    ) -> Result<(Option<(ParamGrads, [f64; 3])>, usize, usize)> {
        let b = batch.batch_size;
        // Pairs: images with a non-empty caption.
        let keep: Vec<usize> = (0..b)
            .filter(|&i| {
                batch
                    .captions
                    .get(i)
                    .and_then(|c| c.as_deref())
                    .is_some_and(|c| !c.trim().is_empty())
            })
            .collect();
        let counts = if dist.world_size() > 1 {
            gather::pair_counts(dist, keep.len())
        } else {
            vec![keep.len()]
        };
        let (pairs, images_all) = (counts.iter().sum::<usize>(), b * dist.world_size());
        if pairs < 2 {
            return Ok((None, pairs, images_all));
        }
        let features = if keep.is_empty() {
            None
        } else {
            let view = batch
                .views
                .first()
                .ok_or_else(|| TrainError::config("data", "the batch holds no image view"))?;
            let size = self.size;
            let ad = &self.ad;
            let images =
                Tensor::<4>::from_data(TensorData::new(view.clone(), [b, 3, size, size]), ad);
            let images = if keep.len() < b {
                let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
                images.select(
                    0,
                    Tensor::<1, Int>::from_data(TensorData::new(idx, [keep.len()]), ad),
                )
            } else {
                images
            };
            let captions: Vec<&str> = keep
                .iter()
                .filter_map(|&i| batch.captions[i].as_deref())
                .collect();
            let tokens = self.tok.encode_batch(&captions)?;
            let ids = Tensor::<2, Int>::from_data(
                TensorData::new(tokens.ids.clone(), [tokens.batch, tokens.len]),
                ad,
            );
            Some((
                self.model.encode_image(images),
                self.model.encode_text(ids, &tokens.eot),
            ))
        };
        let (g, terms) = if dist.world_size() == 1 {
            let (img_f, txt_f) = features.expect("one process with pairs has features");
            let terms = clip_loss_terms(img_f, txt_f, self.model.logit_scale.val());
            let loss_v = scalar(terms.loss.clone());
            if !loss_v.is_finite() {
                return Err(TrainError::NonFinite {
                    step: it,
                    what: "loss".into(),
                    value: loss_v,
                });
            }
            let (i2t, t2i) = (terms.i2t_acc, terms.t2i_acc);
            let grads = terms.loss.backward();
            (
                ParamGrads::from_module(&self.model, &grads),
                (loss_v, i2t, t2i),
            )
        } else {
            self.gathered_grads(it, features, &counts, dist)?
        };
        Ok((Some((g, [terms.0, terms.1, terms.2])), pairs, images_all))
    }

    /// The parameter gradient of the global-batch loss across ranks, averaged over them ([`gather`]),
    /// and the global loss and accuracies. `features`: this rank's unnormalised `[n, E]` image and
    /// text features, `None` when it has no pair.
    #[allow(clippy::type_complexity)]
    fn gathered_grads(
        &self,
        it: u64,
        features: Option<(Tensor<2>, Tensor<2>)>,
        counts: &[usize],
        dist: &Dist,
    ) -> Result<(ParamGrads, (f64, f64, f64))> {
        let (rank, world) = (dist.rank(), dist.world_size());
        let dim = self.text_cfg.embed_dim;
        let normalised = features.map(|(i, t)| (l2_normalize(i), l2_normalize(t)));
        let host = |t: &Tensor<2>| to_host(t.clone().inner());
        let (img_h, txt_h) = normalised
            .as_ref()
            .map_or((Vec::new(), Vec::new()), |(i, t)| (host(i), host(t)));
        let gathered = gather::gather(dist, &img_h, &txt_h, counts, dim);
        let t = self.model.logit_scale_value() as f32;
        let mut local = gather::local_loss_grads(&gathered, rank, world, t, &self.ad);
        // The global loss (the shares' sum) and accuracies, the same on every rank.
        let mut logged = [
            local.share,
            local.i2t_correct as f64,
            local.t2i_correct as f64,
        ];
        dist.all_reduce_f64("CLIP loss values", &mut logged, ReduceOp::Sum);
        let n_all = gathered.total() as f64;
        let (loss, i2t, t2i) = (logged[0], logged[1] / n_all, logged[2] / n_all);
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: it,
                what: "loss".into(),
                value: loss,
            });
        }
        gather::sum_feature_grads(dist, &mut local);
        let mut g = match normalised {
            Some((i, t_f)) => {
                let rows = gathered.rows(rank);
                let span = rows.start * dim..rows.end * dim;
                let s = gather::surrogate(
                    i,
                    t_f,
                    self.model.logit_scale.val(),
                    &local.d_image[span.clone()],
                    &local.d_text[span],
                    local.d_logit_scale,
                );
                ParamGrads::from_module(&self.model, &s.backward())
            }
            None => ParamGrads::default(),
        };
        g.all_reduce_mean(&self.model, dist);
        Ok((g, (loss, i2t, t2i)))
    }
}

impl TrainState for ClipTrainer<'_> {
    fn step(
        self,
        it: u64,
        batches: &[Batch],
        dist: &Dist,
    ) -> Result<(Self, Vec<(&'static str, f64)>)> {
        ClipTrainer::step(self, it, batches, dist)
    }

    fn load(self, dir: &Path) -> Result<Self> {
        ClipTrainer::load(self, dir)
    }

    fn optimizer(&mut self) -> (&mut OptimizerSet, Option<&ZeroShards>) {
        (&mut self.opt, self.zero.as_ref())
    }

    fn checkpoint_files(&self) -> Vec<&'static str> {
        vec!["model.safetensors", OPTIM_FILE, "tokenizer.json"]
    }

    fn checkpoint_file(&self, name: &str, ckpts: &CheckpointManager) -> Result<Vec<u8>> {
        match name {
            "model.safetensors" => tensors_bytes(ckpts, &checkpoint::named_parameters(&self.model)),
            "tokenizer.json" => Ok(self.tok_json.clone().into_bytes()),
            other => unreachable!("not a CLIP checkpoint file: {other}"),
        }
    }

    fn export(&self, run_dir: &Path, export_dir: &Path) -> Result<()> {
        save_outputs(&self.model, &self.vit, &self.text_cfg, run_dir, export_dir)
    }

    fn progress_terms(&self, values: &[(&'static str, f64)]) -> Vec<(&'static str, f64)> {
        vec![
            ("loss", value(values, "loss")),
            ("i2t", value(values, "i2t_acc")),
            ("scale", value(values, "logit_scale").exp()),
        ]
    }
}

/// The image tower in HF layout (`export/`) and the whole model as native safetensors
/// (`clip.safetensors`, both tower configs in `clip_config.json`).
fn save_outputs(
    model: &ClipModel,
    vit: &webssl_models::VitConfig,
    text: &TextConfig,
    run_dir: &Path,
    export_dir: &Path,
) -> Result<()> {
    let visual = model.visual.valid();
    export::export_hf(&visual, export_dir, Some(&preprocessor(vit.img_size)))?;
    // The configs go to a JSON file beside the weights rather than into the safetensors metadata,
    // whose map order is not stable (the file must be byte-identical after a resume).
    let config = serde_json::json!({ "vit": vit, "text": text });
    let config = serde_json::to_vec_pretty(&config)
        .map_err(|e| TrainError::config("model", format!("serialising the config: {e}")))?;
    crate::run::atomic_write(&run_dir.join("clip_config.json"), &config)?;
    export::write_safetensors(
        &run_dir.join("clip.safetensors"),
        &checkpoint::named_parameters(model),
    )?;
    Ok(())
}

/// Reads back the full model a run saved (`<run>/clip.safetensors` with `<run>/clip_config.json`).
pub fn load_clip(run_dir: &Path, device: &Device) -> Result<ClipModel> {
    let path = run_dir.join("clip_config.json");
    let text = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    #[derive(serde::Deserialize)]
    struct Configs {
        vit: webssl_models::VitConfig,
        text: TextConfig,
    }
    let c: Configs = serde_json::from_slice(&text)
        .map_err(|e| TrainError::config("clip_config.json", format!("{}: {e}", path.display())))?;
    let fresh = ClipModel::new(&c.vit, &c.text, 0.0, 0, device)?;
    let store = TensorStore::open_file(&run_dir.join("clip.safetensors"))?;
    Ok(checkpoint::assign_named_parameters(fresh, &store, device)?)
}
