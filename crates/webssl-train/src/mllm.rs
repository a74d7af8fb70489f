//! Training the MLLM probe (`webssl probe vqa train`): Cambrian-1's two stages on a frozen encoder's
//! cached tokens — stage 1 trains the `mlp2x_gelu` connector alone, stage 2 the connector (from
//! stage 1's run) and the language model.
//!
//! It lives here rather than in webssl-eval because it is a training loop built from this crate's
//! pieces (run directory and lock, config + `--set`, metrics writer, atomic checkpoints, cosine
//! schedule, AdamW); the model, data and loss are webssl-eval's MLLM probe
//! (`webssl_eval::vqa::mllm`). It does not go through `run::driver` (which knows image shards
//! only): each step is one batch of preprocessed conversations, in an order fixed by the seed, so a
//! resume from a checkpoint (step, connector, LM in stage 2, optimizer state) repeats the
//! uninterrupted run exactly.
//!
//! Recipe (docs/reference/webssl-paper.md §6.1, Cambrian-1 / LLaVA-1.5): cosine decay after a 3 %
//! linear warm-up, one epoch, `max_length` 2048, lr `base · sqrt(batch / 512)` (issue #18's scaling;
//! at batch 512 the base itself). The run directory doubles as the probe run that
//! `webssl probe vqa answer` loads (`webssl_eval::vqa::mllm::run`).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use webssl_eval::vqa::mllm::connector::{Connector, ImageTokenTable, ImageTokens, image_key};
use webssl_eval::vqa::mllm::conversation::{
    Batch, LLAMA_V3_SYSTEM, Preprocessed, Record, preprocess_llama_v3,
};
use webssl_eval::vqa::mllm::model::Mllm;
use webssl_eval::vqa::mllm::run::{CONNECTOR_FILE, LM_FILE, ProbeConfig, write_run};
use webssl_models::checkpoint::export::safetensors_bytes;
use webssl_models::checkpoint::store::TensorStore;
use webssl_models::checkpoint::{assign_named_parameters, named_parameters};
use webssl_models::lm::load_lm;
use webssl_models::params::NamedTensor;

use crate::clip_grad::ParamGrads;
use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::param_groups::ParamRule;
use crate::run::RunDir;
use crate::run::checkpoint::CheckpointManager;
use crate::run::metrics::{MetricsWriter, check_finite};
use crate::schedule::CosineSchedule;

const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// `probe vqa train`'s config (TOML, `--set` overrides).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllmTrainConfig {
    /// 1: connector only; 2: connector (from `init`) + language model.
    pub stage: u8,
    /// The base language model: HF directory or `.gguf`.
    pub lm: PathBuf,
    /// Stage 2: stage 1's run directory (its connector is the start).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Conversations (LLaVA/Cambrian JSON or JSONL: `{"id", "image", "conversations"}`).
    pub data: PathBuf,
    /// The encoder's tokens of the images: a `webssl embed --features patch-tokens[,cls]` file.
    pub image_tokens_file: PathBuf,
    pub image_tokens: ImageTokens,
    /// Learning rate at batch 512 (scaled by `sqrt(batch_size / 512)`).
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_warmup")]
    pub warmup_ratio: f64,
    pub batch_size: usize,
    #[serde(default = "one")]
    pub epochs: usize,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default)]
    pub seed: u64,
    /// Save a checkpoint every N steps (and at the end).
    #[serde(default = "one_u64")]
    pub checkpoint_every: u64,
}

fn default_warmup() -> f64 {
    0.03
}
fn one() -> usize {
    1
}
fn one_u64() -> u64 {
    1
}
fn default_max_length() -> usize {
    2048
}

impl MllmTrainConfig {
    fn validate(&self) -> Result<()> {
        if !matches!(self.stage, 1 | 2) {
            return Err(TrainError::config(
                "stage",
                "1 (connector) or 2 (connector + LM)",
            ));
        }
        if self.stage == 2 && self.init.is_none() {
            return Err(TrainError::config(
                "init",
                "stage 2 starts from stage 1's run directory",
            ));
        }
        if self.batch_size == 0 || self.epochs == 0 || self.max_length < 2 {
            return Err(TrainError::config(
                "batch_size",
                "batch_size and epochs must be positive, max_length at least 2",
            ));
        }
        let lr_ok = self.lr.is_finite() && self.lr > 0.0;
        if !lr_ok || !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(TrainError::config(
                "lr",
                "lr must be positive and warmup_ratio in [0, 1)",
            ));
        }
        Ok(())
    }

    /// Web-SSL's batch scaling of the learning rate.
    pub fn scaled_lr(&self) -> f64 {
        self.lr * (self.batch_size as f64 / 512.0).sqrt()
    }
}

/// What a finished (or resumed and finished) run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub steps: u64,
    pub resumed_from: u64,
    pub samples: usize,
    pub last_loss: f64,
}

fn probe_err(e: webssl_eval::error::EvalError) -> TrainError {
    TrainError::config("probe", e.to_string())
}

/// Step `step`'s sample indices: epoch `e` visits all samples in a seeded permutation, batches
/// cut in order (the last one of an epoch may be short).
fn batch_indices(n: usize, bs: usize, seed: u64, step: u64) -> Vec<usize> {
    let per_epoch = n.div_ceil(bs) as u64;
    let (epoch, k) = (step / per_epoch, (step % per_epoch) as usize);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        perm.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    perm[k * bs..((k + 1) * bs).min(n)].to_vec()
}

fn read_store(path: &Path) -> Result<Vec<NamedTensor>> {
    let store = TensorStore::open_file(path)?;
    let keys: Vec<String> = store.keys().map(str::to_owned).collect();
    keys.into_iter()
        .map(|k| {
            let (shape, v) = store.read_f32(&k)?;
            Ok((k, shape, v))
        })
        .collect()
}

fn bytes(tensors: &[NamedTensor], what: &str) -> Result<Vec<u8>> {
    safetensors_bytes(tensors, &[]).map_err(|e| TrainError::config(what, e))
}

/// Trains (or resumes) the run in `run_dir` with `cfg` (`resolved`: the config as a table, written
/// to the run dir). `device` is the compute device (an autodiff one is made from it).
pub fn train(
    cfg: &MllmTrainConfig,
    resolved: &toml::Table,
    run_dir: &Path,
    device: &Device,
) -> Result<TrainSummary> {
    cfg.validate()?;
    let run = RunDir::start(run_dir, resolved)?;
    let device = device.clone().autodiff();
    let loaded = load_lm(&cfg.lm, &device)?;
    let tok = loaded.tokenizer;
    let images =
        ImageTokenTable::from_embed(&cfg.image_tokens_file, cfg.image_tokens).map_err(probe_err)?;
    let d_lm = loaded.model.config().hidden_size;
    let mut connector = Connector::new(images.dim, d_lm, cfg.seed, &device);
    if let Some(init) = cfg.init.as_ref().filter(|_| cfg.stage == 2) {
        connector = assign_named_parameters(
            connector,
            &TensorStore::open_file(&init.join(CONNECTOR_FILE))?,
            &device,
        )?;
    }
    let mut lm = loaded.model;
    if cfg.stage == 1 {
        lm = lm.no_grad();
    }

    // Samples: preprocessed once; those whose labels are all masked (Cambrian's "tokenization
    // mismatch" cases) carry no loss and are left out.
    let records: Vec<Record> = webssl_eval::vqa::io::read_records(&cfg.data).map_err(probe_err)?;
    let encode = |s: &str| -> webssl_eval::error::Result<Vec<u32>> { Ok(tok.encode(s, false)?) };
    let mut samples: Vec<(Preprocessed, Option<String>)> = Vec::new();
    for r in &records {
        let p =
            preprocess_llama_v3(r, LLAMA_V3_SYSTEM, cfg.max_length, &encode).map_err(probe_err)?;
        if p.all_ignored() {
            continue;
        }
        let key = r
            .has_image()
            .then(|| image_key(r.image.as_deref().unwrap_or("")));
        if let Some(k) = key.as_ref().filter(|k| images.get(k).is_none()) {
            return Err(TrainError::config(
                "image_tokens_file",
                format!(
                    "record {}: image key `{k}` is not in {}",
                    r.id,
                    cfg.image_tokens_file.display()
                ),
            ));
        }
        samples.push((p, key));
    }
    if samples.is_empty() {
        return Err(TrainError::config(
            "data",
            "no sample carries an answer to train on",
        ));
    }
    let skipped = records.len() - samples.len();
    if skipped > 0 {
        tracing::warn!(
            "{skipped} of {} records have no answer token left (skipped)",
            records.len()
        );
    }
    let total = (samples.len().div_ceil(cfg.batch_size) * cfg.epochs) as u64;
    let warmup = (cfg.warmup_ratio * total as f64).ceil() as u64;
    let lr = CosineSchedule::try_new("lr", cfg.scaled_lr(), 0.0, total, warmup, 0.0, 0)?;
    let pad = tok.eos_ids.first().copied().unwrap_or(0);

    // Resume.
    let ckpts = CheckpointManager::new(&run.path, 2);
    let mut opt = AdamW::new(0.9, 0.999, 1e-8);
    let mut start = 0;
    if let Some((step, dir)) = ckpts.latest_intact()? {
        connector = assign_named_parameters(
            connector,
            &TensorStore::open_file(&dir.join(CONNECTOR_FILE))?,
            &device,
        )?;
        if cfg.stage == 2 {
            lm =
                assign_named_parameters(lm, &TensorStore::open_file(&dir.join(LM_FILE))?, &device)?;
        }
        opt.load_state_tensors(&read_store(&dir.join(OPTIMIZER_FILE))?)?;
        start = step;
        tracing::info!("resumed from step {step} ({})", dir.display());
    }
    let mut metrics = MetricsWriter::open(&run.path, start)?;
    let rule = |_: &str| ParamRule {
        lr_mult: 1.0,
        wd_mult: 1.0,
        is_last_layer: false,
    };
    let mut last_loss = f64::NAN;
    for step in start..total {
        let idx = batch_indices(samples.len(), cfg.batch_size, cfg.seed, step);
        let batch_samples: Vec<Preprocessed> = idx.iter().map(|&i| samples[i].0.clone()).collect();
        let batch =
            Batch::collate(&batch_samples, images.len, cfg.max_length, pad).map_err(probe_err)?;
        let mut img = Vec::new();
        let mut n_img = 0;
        for (&i, slot) in idx.iter().zip(&batch.image_slots) {
            if let (Some(_), Some(k)) = (slot, &samples[i].1) {
                img.extend_from_slice(images.get(k).expect("checked above"));
                n_img += 1;
            }
        }
        let img = (n_img > 0).then(|| {
            Tensor::<3>::from_data(
                TensorData::new(img, [n_img, images.len, images.dim]),
                &device,
            )
        });
        let model = Mllm { connector, lm };
        let loss = model.loss(&batch, img).map_err(probe_err)?;
        let value = f64::from(webssl_models::params::to_host(loss.clone())[0]);
        let grads = loss.backward();
        let Mllm {
            connector: c,
            lm: l,
        } = model;
        let rate = lr.at(step);
        let gc = ParamGrads::from_module(&c, &grads);
        connector = opt.step_prefixed("connector", c, &gc, rate, rate, cfg.weight_decay, &rule);
        lm = if cfg.stage == 2 {
            let g = ParamGrads::from_module(&l, &grads);
            opt.step_prefixed("lm", l, &g, rate, rate, cfg.weight_decay, &rule)
        } else {
            l
        };
        check_finite(step + 1, &[("loss", value)])?;
        metrics.write(step + 1, &[("loss", value), ("lr", rate)], &[])?;
        last_loss = value;
        let done = step + 1;
        if done % cfg.checkpoint_every == 0 || done == total {
            metrics.sync()?;
            let mut files = vec![
                (
                    CONNECTOR_FILE,
                    bytes(&named_parameters(&connector), "connector")?,
                ),
                (OPTIMIZER_FILE, bytes(&opt.state_tensors(), "optimizer")?),
            ];
            if cfg.stage == 2 {
                files.push((LM_FILE, bytes(&named_parameters(&lm), "lm")?));
            }
            ckpts.save(done, &files)?;
        }
    }

    let lm_path = std::fs::canonicalize(&cfg.lm).map_err(|e| TrainError::io(&cfg.lm, e))?;
    let probe = ProbeConfig {
        lm: lm_path,
        d_vis: images.dim,
        image_tokens: cfg.image_tokens,
    };
    write_run(
        &run.path,
        &probe,
        &connector,
        (cfg.stage == 2).then_some(&lm),
    )
    .map_err(probe_err)?;
    Ok(TrainSummary {
        steps: total,
        resumed_from: start,
        samples: samples.len(),
        last_loss,
    })
}
