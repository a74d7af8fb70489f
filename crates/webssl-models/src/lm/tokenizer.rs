//! The LM tokenizer: a `tokenizers` tokenizer from `tokenizer.json`, or rebuilt from GGUF metadata
//! the way transformers' GGUF loader does (`integrations/ggml.py`: for `tokenizer.ggml.model` =
//! `gpt2`, a byte-level BPE over `tokenizer.ggml.tokens` + `merges`, GPT-2's split regex, every
//! control token (`token_type` 3) a special added token), plus the special ids generation needs.

use std::path::Path;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::error::{ModelError, Result};

/// A tokenizer with the model's special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: HfTokenizer,
    pub bos_token: Option<String>,
    /// Ids that end generation (the config's, the generation config's and the tokenizer's own).
    pub eos_ids: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("bos_token", &self.bos_token)
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

fn tok_err(path: &Path, what: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::format(path, format!("{what}: {e}"))
}

impl Tokenizer {
    /// Wraps a loaded `tokenizers` tokenizer.
    pub fn new(inner: HfTokenizer, bos_token: Option<String>, eos_ids: Vec<u32>) -> Self {
        Tokenizer {
            inner,
            bos_token,
            eos_ids,
        }
    }

    /// Reads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<HfTokenizer> {
        HfTokenizer::from_file(path).map_err(|e| tok_err(path, "not a readable tokenizer.json", e))
    }

    /// transformers' tokenizer for a GGUF file of type `gpt2` (byte-level BPE); `path` names the
    /// file in errors.
    pub fn from_gguf_bpe(
        path: &Path,
        tokens: &[String],
        merges: &[String],
        token_types: &[i64],
        bos_id: Option<u32>,
        add_bos: bool,
    ) -> Result<HfTokenizer> {
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| {
                        ModelError::format(
                            path,
                            format!("tokenizer.ggml.merges entry `{m}` is not `left right`"),
                        )
                    })
            })
            .collect::<Result<_>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tok_err(path, "tokenizer.ggml.tokens/merges do not form a BPE", e))?;
        let mut tok = HfTokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
        tok.with_decoder(Some(ByteLevel::new(false, false, true)));
        let special: Vec<AddedToken> = token_types
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t == 3)
            .filter_map(|(i, _)| tokens.get(i))
            .map(|t| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        tok.add_special_tokens(&special);
        if let (true, Some(bos)) = (add_bos, bos_id) {
            let bos_tok = tokens.get(bos as usize).cloned().ok_or_else(|| {
                ModelError::format(
                    path,
                    format!("bos_token_id {bos} is outside the vocabulary"),
                )
            })?;
            let post = TemplateProcessing::builder()
                .try_single(format!("{bos_tok}:0 $A:0"))
                .and_then(|b| b.try_pair(format!("{bos_tok}:0 $A:0 {bos_tok}:1 $B:1")))
                .map_err(|e| tok_err(path, "bos template", e))?
                .special_tokens(vec![(bos_tok, bos)])
                .build()
                .map_err(|e| tok_err(path, "bos template", e))?;
            tok.with_post_processor(Some(post));
        }
        Ok(tok)
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (e.g. a
    /// leading BOS). A rendered chat prompt already holds its special tokens: encode it without.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::config("text", format!("cannot tokenize: {e}")))
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::config("ids", format!("cannot decode: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &HfTokenizer {
        &self.inner
    }
}
