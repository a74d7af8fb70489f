//! The CLIP tokenizer: a byte-level BPE (HF `tokenizers`) trained on the run's own captions, or any
//! `tokenizer.json` given by path.
//!
//! OpenAI CLIP ships a fixed 49,408-token BPE; the Web-SSL CLIP baseline trains on MetaCLIP data with
//! that vocabulary (docs/reference/training-algorithms.md §8). Here the vocabulary is learned from the
//! training shards so that any caption language works offline: normalise (NFC, collapse whitespace, strip,
//! lowercase — CLIP's `whitespace_clean(basic_clean(text)).lower()` without ftfy), GPT-2 byte-level
//! pre-tokenisation, BPE over the first `tokenizer_train_samples` captions in shard-index order (a
//! bounded, deterministic pass: the same shards give the same vocabulary), then
//! `<|startoftext|> … <|endoftext|>` around every caption, truncated to the context length with the
//! EOT kept (as open_clip's tokenizer does). Special ids: SOT 0, EOT 1, PAD 2.
//!
//! The EOT position is taken from the encoding (its last token), never from `argmax(ids)`: OpenAI's
//! trick relies on EOT having the largest id, which a trained vocabulary does not give. For a loaded
//! `tokenizer.json` the same rule holds: the feature is read at the last token its post-processor
//! emits (EOT for CLIP-style tokenizers); its own padding is switched off (padding is done here, and
//! never reaches the feature because the text tower is causal).

use std::path::Path;

use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence, Strip};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, NormalizerWrapper, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::error::{Result, TrainError};

pub const SOT: &str = "<|startoftext|>";
pub const EOT: &str = "<|endoftext|>";
pub const PAD: &str = "<|pad|>";

/// A batch of captions as token ids, right-padded to the longest one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// `[B, len]` row-major.
    pub ids: Vec<i64>,
    pub batch: usize,
    /// Tokens per row (the longest caption's, ≤ the context length).
    pub len: usize,
    /// Position of each row's EOT token (its last real token).
    pub eot: Vec<usize>,
}

/// A tokenizer with CLIP's framing; see the module docs.
pub struct ClipTokenizer {
    tok: Tokenizer,
    context_length: usize,
    pad_id: u32,
}

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> TrainError {
    TrainError::config("text.tokenizer", format!("{what}: {e}"))
}

impl ClipTokenizer {
    /// Trains a byte-level BPE with `vocab_size` tokens (specials and the 256 byte symbols included)
    /// on `captions`.
    pub fn train<I>(captions: I, vocab_size: usize, context_length: usize) -> Result<Self>
    where
        I: Iterator<Item = String> + Send,
    {
        let normalizer = Sequence::new(vec![
            NormalizerWrapper::from(NFC),
            Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
                .map_err(|e| err("whitespace normaliser", e))?
                .into(),
            Strip::new(true, true).into(),
            Lowercase.into(),
        ]);
        let mut tok = Tokenizer::new(BPE::default());
        tok.with_normalizer(Some(normalizer))
            .with_pre_tokenizer(Some(ByteLevel::default()))
            .with_decoder(Some(ByteLevel::default()));
        let specials = [SOT, EOT, PAD].map(|s| AddedToken::from(s, true)).to_vec();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(0)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        tok.train(&mut trainer, captions)
            .map_err(|e| err("training the BPE", e))?;
        let template = TemplateProcessing::builder()
            .try_single(format!("{SOT} $A {EOT}"))
            .map_err(|e| err("template", e))?
            .special_tokens(vec![(SOT, 0u32), (EOT, 1u32)])
            .build()
            .map_err(|e| err("template", e))?;
        tok.with_post_processor(Some(template));
        Self::finish(tok, context_length, "trained BPE")
    }

    /// Loads a `tokenizer.json` (ours or any HF one).
    pub fn load(path: &Path, context_length: usize) -> Result<Self> {
        let tok = Tokenizer::from_file(path).map_err(|e| err(path.display(), e))?;
        Self::finish(tok, context_length, &path.display().to_string())
    }

    /// Parses a `tokenizer.json` held in memory.
    pub fn from_json(json: &str, context_length: usize) -> Result<Self> {
        let tok: Tokenizer = json.parse().map_err(|e| err("tokenizer.json", e))?;
        Self::finish(tok, context_length, "tokenizer.json")
    }

    fn finish(mut tok: Tokenizer, context_length: usize, what: &str) -> Result<Self> {
        if context_length < 2 {
            return Err(TrainError::config(
                "text.context_length",
                "must be ≥ 2 (SOT + EOT)",
            ));
        }
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: context_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| err(what, e))?;
        let pad_id = tok
            .token_to_id(PAD)
            .or_else(|| tok.get_padding().map(|p| p.pad_id))
            .unwrap_or(0);
        Ok(Self {
            tok,
            context_length,
            pad_id,
        })
    }

    /// The whole tokenizer as `tokenizer.json` text (deterministic for a given tokenizer).
    pub fn to_json(&self) -> Result<String> {
        self.tok
            .to_string(true)
            .map_err(|e| err("serialising tokenizer.json", e))
    }

    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::run::atomic_write(path, self.to_json()?.as_bytes())
    }

    /// Vocabulary size including special tokens: the text tower's embedding rows.
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tok.token_to_id(token)
    }

    /// One caption as ids (SOT … EOT for our tokenizer), at most the context length.
    pub fn encode(&self, caption: &str) -> Result<Vec<u32>> {
        let enc = self
            .tok
            .encode(caption, true)
            .map_err(|e| err("encoding a caption", e))?;
        let ids = enc.get_ids();
        if ids.is_empty() {
            return Err(err(
                "encoding a caption",
                format!("{caption:?} gave no tokens"),
            ));
        }
        Ok(ids[..ids.len().min(self.context_length)].to_vec())
    }

    /// Ids back to text (special tokens dropped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode(ids, true)
            .map_err(|e| err("decoding ids", e))
    }

    /// A batch of captions, right-padded with PAD to the longest.
    pub fn encode_batch(&self, captions: &[&str]) -> Result<TokenBatch> {
        let rows: Vec<Vec<u32>> = captions
            .iter()
            .map(|c| self.encode(c))
            .collect::<Result<_>>()?;
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * len);
        for r in &rows {
            ids.extend(r.iter().map(|&t| t as i64));
            ids.extend(std::iter::repeat_n(self.pad_id as i64, len - r.len()));
        }
        Ok(TokenBatch {
            ids,
            batch: rows.len(),
            len,
            eot: rows.iter().map(|r| r.len() - 1).collect(),
        })
    }
}
