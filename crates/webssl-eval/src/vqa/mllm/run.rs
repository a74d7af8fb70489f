//! A trained MLLM probe's run directory, and answering a benchmark with it.
//!
//! Layout (what `webssl probe vqa train` writes and `webssl probe vqa answer` reads):
//! * `mllm.toml` — [`ProbeConfig`]: the base language model (`lm`: an HF directory or a `.gguf`
//!   file; a relative path is resolved from the run directory), the encoder's token width
//!   (`d_vis`) and which of its tokens feed the connector (`[image_tokens]`).
//! * `connector.safetensors` — the `mlp2x_gelu` connector in burn's names and layout (`fc1.weight`
//!   `[d_vis, d_lm]`, …): stage 1's product.
//! * `lm.safetensors` — optional: every language-model parameter after stage 2 (burn's names and
//!   layout), replacing the base weights. The tokenizer is always the base model's.
//!
//! Images come from a `webssl embed --features patch-tokens[,cls]` file of the frozen encoder
//! ([`ImageTokenTable`]); that is exact because the encoder is frozen and evaluated without
//! augmentation, so its tokens for an image do not depend on when they are computed.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use webssl_models::checkpoint::export::write_safetensors;
use webssl_models::checkpoint::store::TensorStore;
use webssl_models::checkpoint::{assign_named_parameters, named_parameters};
use webssl_models::lm::{CausalLm, Tokenizer, load_lm};

use super::answer::{AnswerLog, AnswerSummary, answer_all};
use super::connector::{Connector, ImageTokenTable, ImageTokens, image_key};
use super::conversation::{LLAMA_V3_SYSTEM, llama_v3_prompt, tokenize_with_image};
use super::model::Mllm;
use super::prompt::{Question, max_new_tokens};
use crate::error::{EvalError, Result};
use crate::vqa::Benchmark;

pub const CONFIG_FILE: &str = "mllm.toml";
pub const CONNECTOR_FILE: &str = "connector.safetensors";
pub const LM_FILE: &str = "lm.safetensors";

/// `mllm.toml`: what the run's weights sit on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// The base language model: HF directory or `.gguf` file (relative: from the run directory).
    pub lm: PathBuf,
    /// Width of the encoder's tokens (the connector's input).
    pub d_vis: usize,
    pub image_tokens: ImageTokens,
}

/// Writes a run directory: `mllm.toml`, the connector, and (stage 2) the language model.
pub fn write_run(
    run: &Path,
    config: &ProbeConfig,
    connector: &Connector,
    lm: Option<&CausalLm>,
) -> Result<()> {
    let io = |path: &Path, source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(run).map_err(|e| io(run, e))?;
    let text = toml::to_string(config).expect("the probe config serialises to TOML");
    let cfg_path = run.join(CONFIG_FILE);
    std::fs::write(&cfg_path, text).map_err(|e| io(&cfg_path, e))?;
    write_safetensors(&run.join(CONNECTOR_FILE), &named_parameters(connector))?;
    if let Some(lm) = lm {
        write_safetensors(&run.join(LM_FILE), &named_parameters(lm))?;
    }
    Ok(())
}

/// A loaded probe: the MLLM, its tokenizer, and the ids that end an answer.
pub struct Probe {
    pub model: Mllm,
    pub tokenizer: Tokenizer,
    pub config: ProbeConfig,
    /// The tokenizer's end-of-sequence ids and `<|eot_id|>`, which ends a `llama_v3` turn.
    pub eos: Vec<u32>,
    device: Device,
}

impl Probe {
    /// Loads the run directory `run` (see the module docs).
    pub fn load(run: &Path, device: &Device) -> Result<Self> {
        let cfg_path = run.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| EvalError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let config: ProbeConfig = toml::from_str(&text).map_err(|e| EvalError::Parse {
            path: cfg_path.clone(),
            line: None,
            message: e.to_string(),
        })?;
        let lm_path = run.join(&config.lm);
        let mut loaded = load_lm(&lm_path, device)?;
        let lm_weights = run.join(LM_FILE);
        if lm_weights.is_file() {
            loaded.model = assign_named_parameters(
                loaded.model,
                &TensorStore::open_file(&lm_weights)?,
                device,
            )?;
        }
        let d_lm = loaded.model.config().hidden_size;
        let connector = assign_named_parameters(
            Connector::new(config.d_vis, d_lm, 0, device),
            &TensorStore::open_file(&run.join(CONNECTOR_FILE))?,
            device,
        )?;
        let mut eos = loaded.tokenizer.eos_ids.clone();
        eos.extend(loaded.tokenizer.token_to_id("<|eot_id|>"));
        eos.sort_unstable();
        eos.dedup();
        Ok(Self {
            model: Mllm {
                connector,
                lm: loaded.model,
            },
            tokenizer: loaded.tokenizer,
            config,
            eos,
            device: device.clone(),
        })
    }

    /// The image tokens of an embed file, selected as this probe was trained
    /// (`[image_tokens]`), their width checked against `d_vis`.
    pub fn image_tokens(&self, embed: &Path) -> Result<ImageTokenTable> {
        let table = ImageTokenTable::from_embed(embed, self.config.image_tokens)?;
        if table.dim != self.config.d_vis {
            return Err(EvalError::Probe {
                context: embed.display().to_string(),
                message: format!(
                    "tokens of width {}, but the probe's connector takes d_vis = {}",
                    table.dim, self.config.d_vis
                ),
            });
        }
        Ok(table)
    }

    /// Greedy answer (decoded, special tokens skipped) to the user message `user` about `image`
    /// (`[len, d_vis]` row-major, or `None`), in Cambrian's `llama_v3` conversation.
    pub fn ask(&self, user: &str, image: Option<&[f32]>, max_new: usize) -> Result<String> {
        let encode = |s: &str| -> Result<Vec<u32>> { Ok(self.tokenizer.encode(s, false)?) };
        let prompt = tokenize_with_image(&llama_v3_prompt(LLAMA_V3_SYSTEM, &[user]), &encode)?;
        let image = image.map(|v| {
            let d = self.config.d_vis;
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), [v.len() / d, d]), &self.device)
        });
        let ids = self.model.answer(&prompt, image, max_new, &self.eos)?;
        Ok(self.tokenizer.decode(&ids, true)?)
    }

    /// Answers every question of `questions` not yet in `log` (benchmark `b`'s prompt and decoding
    /// budget), each image's tokens looked up in `images` by [`image_key`].
    pub fn answer_benchmark(
        &self,
        b: Benchmark,
        questions: &[Question],
        images: &ImageTokenTable,
        log: &mut AnswerLog,
    ) -> Result<AnswerSummary> {
        answer_all(b, questions, log, |q, user| {
            let image = match q.image.as_deref() {
                Some(name) => {
                    Some(
                        images
                            .get(&image_key(name))
                            .ok_or_else(|| EvalError::Probe {
                                context: format!("question {}", q.question_id.shown()),
                                message: format!(
                                    "image `{name}` (key `{}`) is not in the image-token file",
                                    image_key(name)
                                ),
                            })?,
                    )
                }
                None => None,
            };
            self.ask(user, image, max_new_tokens(b))
        })
    }
}
