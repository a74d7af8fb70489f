//! Conversation data for MLLM training: the LLaVA/Cambrian JSON records, Cambrian's `llama_v3` chat
//! template, the tokenisation with the image placeholder, the answer-only labels, and the batch
//! (image slots spliced in, truncation, right padding, attention mask).
//!
//! Reference: cambrian-mllm/cambrian @ 539ffc3 — `cambrian/conversation.py` (`conv_llama_3`,
//! `SeparatorStyle.LLAMA_3` in `get_prompt`), `cambrian/train/train_fsdp.py` (`preprocess_multimodal`,
//! `preprocess_llama_3`), `cambrian/mm_utils.py` (`tokenizer_image_token_llama3`); the splice and
//! padding follow LLaVA-1.5's `prepare_inputs_labels_for_multimodal` (an MLP connector: the image
//! placeholder becomes N embeddings, labels `IGNORE_INDEX` there, truncation to the maximum length,
//! right padding). Golden: `fixtures/mllm/make_mllm.py` transcribes those functions and runs them
//! with `fixtures/mllm/tokenizer.json` → `fixtures/mllm/golden.json`.
//!
//! Deliberate deviations (the per-sample tokens and labels are Cambrian's):
//! * A sample whose labels end up all ignored (Cambrian's "tokenization mismatch", or no answer) is
//!   returned as [`Preprocessed::all_ignored`] for the caller to skip and count; Cambrian's dataset
//!   silently substitutes sample 0.
//! * A text-only sample has no image slots; Cambrian's collator splices a dummy image at a fixed
//!   position (its SVA connector needs one per sample), which an MLP connector does not.
//! * Cambrian's SVA layout adds one "newline" embedding per row of the image grid; the MLP connector
//!   of Web-SSL (and LLaVA) does not, so the image takes exactly `image_tokens` slots.
//!
//! Tokenisation: `encode` must tokenise *without* adding special tokens — Cambrian's bookkeeping
//! (one `tokenizer(round)` per `<|eot_id|>`-terminated round summing to the whole) is consistent only
//! then; a tokenizer that prepends BOS to every call makes Cambrian mask every sample.

use serde::Deserialize;

use super::prompt::IMAGE_TOKEN;
use crate::error::{EvalError, Result};

/// Label of a position that carries no loss (PyTorch's `ignore_index`, LLaVA's `IGNORE_INDEX`).
pub const IGNORE_INDEX: i64 = -100;
/// The image placeholder in token ids before the splice (LLaVA's `IMAGE_TOKEN_INDEX`).
pub const IMAGE_TOKEN_INDEX: i64 = -200;

/// Cambrian's `conv_llama_3.system`, byte for byte (the indentation of its triple-quoted literal and
/// the trailing space included).
pub const LLAMA_V3_SYSTEM: &str = "You are Cambrian, a highly intelligent multimodal AI trained by NYU Vision X. \n    As a multimodal AI, you have the ability to process and analyze images. Whenever an image is present in the conversation, very carefully examine it and consider its content when formulating your response.\n    You should give concise responses to very simple questions, but provide thorough responses to more complex and open-ended questions. ";

const BOT: &str = "<|begin_of_text|>";
const EOT: &str = "<|eot_id|>";
const ASSISTANT_HEADER: &str = "<|start_header_id|>assistant<|end_header_id|>";

/// One turn of a conversation record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Turn {
    /// `"human"` or `"gpt"`.
    pub from: String,
    pub value: String,
}

/// One LLaVA/Cambrian training record: `{"id", "image", "conversations": [...]}` (a file of them,
/// JSON array or JSONL, reads with [`crate::vqa::io::read_records`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Record {
    #[serde(default, deserialize_with = "id_string")]
    pub id: String,
    /// Image path relative to the image folder, or a shard key; absent (or `""`, `"None"`, `"none"`,
    /// `"nan"`, as Cambrian's `_has_image`) for text-only samples.
    #[serde(default)]
    pub image: Option<String>,
    pub conversations: Vec<Turn>,
}

impl Record {
    /// Cambrian's `_has_image`.
    pub fn has_image(&self) -> bool {
        self.image
            .as_deref()
            .is_some_and(|i| !matches!(i, "" | "None" | "none" | "nan"))
    }
}

fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// Cambrian's `llama_v3` prompt for alternating user/assistant messages (`get_prompt`, LLAMA_3
/// style): the system block, each message wrapped in its header and `<|eot_id|>` (an empty message
/// is skipped, Python's `if message:`), then the assistant header that starts the answer.
pub fn llama_v3_prompt(system: &str, messages: &[&str]) -> String {
    let mut ret = String::new();
    for (i, m) in messages.iter().enumerate() {
        if m.is_empty() {
            continue;
        }
        if i == 0 && !system.is_empty() {
            ret.push_str(&format!(
                "{BOT}<|start_header_id|>system<|end_header_id|>{system}{EOT}"
            ));
        }
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        ret.push_str(&format!(
            "<|start_header_id|>{role}<|end_header_id|>{m}{EOT}"
        ));
    }
    ret.push_str(ASSISTANT_HEADER);
    ret
}

/// `preprocess_multimodal`: the `<image>` placeholder moved to the front of its message, on its own
/// line.
fn move_image_first(value: &str) -> String {
    if !value.contains(IMAGE_TOKEN) {
        return value.to_string();
    }
    let rest = value.replace(IMAGE_TOKEN, "");
    let v = format!("{IMAGE_TOKEN}\n{}", crate::vqa::py::strip(&rest));
    crate::vqa::py::strip(&v).to_string()
}

/// `tokenizer_image_token_llama3`: the text around each `<image>` tokenised separately, the pieces
/// joined by [`IMAGE_TOKEN_INDEX`].
pub fn tokenize_with_image(
    text: &str,
    encode: &impl Fn(&str) -> Result<Vec<u32>>,
) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for (i, chunk) in text.split(IMAGE_TOKEN).enumerate() {
        if i > 0 {
            out.push(IMAGE_TOKEN_INDEX);
        }
        out.extend(encode(chunk)?.into_iter().map(i64::from));
    }
    Ok(out)
}

/// One record after Cambrian's `preprocess` (before the image splice).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    /// Token ids, [`IMAGE_TOKEN_INDEX`] at the image.
    pub input_ids: Vec<i64>,
    /// Same length; [`IGNORE_INDEX`] except on the answer tokens.
    pub labels: Vec<i64>,
}

impl Preprocessed {
    /// No position carries loss: Cambrian would not train on this sample.
    pub fn all_ignored(&self) -> bool {
        self.labels.iter().all(|&l| l == IGNORE_INDEX)
    }
}

/// Cambrian's `preprocess_llama_3` for one record (after `preprocess_multimodal` when it has an
/// image). `max_length` is the tokenizer's `model_max_length`: it truncates text-only samples here
/// (image samples are truncated after the splice, [`Batch::collate`]).
pub fn preprocess_llama_v3(
    record: &Record,
    system: &str,
    max_length: usize,
    encode: &impl Fn(&str) -> Result<Vec<u32>>,
) -> Result<Preprocessed> {
    let bad = |message: String| EvalError::BadField {
        benchmark: "conversation".into(),
        question_id: record.id.clone(),
        field: "conversations",
        message,
    };
    let has_image = record.has_image();
    let mut turns: &[Turn] = &record.conversations;
    // "Skip the first one if it is not from human".
    if turns.first().is_some_and(|t| t.from != "human") {
        turns = &turns[1..];
    }
    if turns.is_empty() {
        return Err(bad("no turns".into()));
    }
    let mut messages = Vec::with_capacity(turns.len());
    for (j, t) in turns.iter().enumerate() {
        let want = if j % 2 == 0 { "human" } else { "gpt" };
        if t.from != want {
            return Err(bad(format!(
                "turn {j} is from {:?}, expected {want:?} (turns alternate human/gpt)",
                t.from
            )));
        }
        messages.push(if has_image {
            move_image_first(&t.value)
        } else {
            t.value.clone()
        });
    }
    let refs: Vec<&str> = messages.iter().map(String::as_str).collect();
    let mut prompt = llama_v3_prompt(system, &refs);
    prompt.truncate(prompt.len() - ASSISTANT_HEADER.len());

    let input_ids = if has_image {
        tokenize_with_image(&prompt, encode)?
    } else {
        let mut ids: Vec<i64> = encode(&prompt)?.into_iter().map(i64::from).collect();
        ids.truncate(max_length);
        ids
    };
    let total_len = input_ids.len();
    let mut labels = input_ids.clone();
    let mut ignore = |from: usize, to: usize| {
        let (from, to) = (from.min(total_len), to.min(total_len));
        labels[from..to].fill(IGNORE_INDEX);
    };
    let mut cur_len = 0usize;
    for (i, round) in prompt.split(EOT).enumerate() {
        if round.is_empty() {
            break;
        }
        let rou = format!("{round}{EOT}");
        let round_len = if i == 1 && has_image {
            tokenize_with_image(&rou, encode)?.len()
        } else {
            encode(&rou)?.len()
        };
        if i == 0 || i % 2 == 1 {
            // System prompt and user turns: no loss.
            ignore(cur_len, cur_len + round_len);
        } else {
            // Assistant turn: the 3 header tokens carry no loss, the answer and its <|eot_id|> do.
            ignore(cur_len, cur_len + 3);
        }
        cur_len += round_len;
    }
    ignore(cur_len, total_len);
    if cur_len < max_length && cur_len != total_len {
        // Cambrian: "WARNING: tokenization mismatch ... (ignored)".
        ignore(0, total_len);
    }
    Ok(Preprocessed { input_ids, labels })
}

/// A padded batch, ready for the model: row-major `[batch, len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub len: usize,
    /// Text token ids; `pad_id` at image slots and padding.
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    /// 1 on real tokens and image slots, 0 on padding.
    pub attention_mask: Vec<u8>,
    /// Per row: the first image slot and how many slots survived truncation (`None`: no image).
    pub image_slots: Vec<Option<(usize, usize)>>,
}

impl Batch {
    /// LLaVA's splice: each [`IMAGE_TOKEN_INDEX`] becomes `image_tokens` slots (labels ignored),
    /// rows are cut to `max_length` and right-padded to the longest row. One image per sample at
    /// most (Cambrian asserts exactly one).
    pub fn collate(
        samples: &[Preprocessed],
        image_tokens: usize,
        max_length: usize,
        pad_id: u32,
    ) -> Result<Batch> {
        let mut rows = Vec::with_capacity(samples.len());
        for (n, s) in samples.iter().enumerate() {
            let images = s
                .input_ids
                .iter()
                .filter(|&&t| t == IMAGE_TOKEN_INDEX)
                .count();
            if images > 1 {
                return Err(EvalError::Probe {
                    context: format!("batch sample {n}"),
                    message: format!("{images} <image> placeholders; one image per sample"),
                });
            }
            let mut ids = Vec::with_capacity(s.input_ids.len() + image_tokens);
            let mut labels = Vec::with_capacity(ids.capacity());
            let mut slot = None;
            for (&t, &l) in s.input_ids.iter().zip(&s.labels) {
                if t == IMAGE_TOKEN_INDEX {
                    slot = Some(ids.len());
                    ids.extend(std::iter::repeat_n(pad_id, image_tokens));
                    labels.extend(std::iter::repeat_n(IGNORE_INDEX, image_tokens));
                } else {
                    let id = u32::try_from(t).map_err(|_| EvalError::Probe {
                        context: format!("batch sample {n}"),
                        message: format!("token id {t} is not a vocabulary id"),
                    })?;
                    ids.push(id);
                    labels.push(l);
                }
            }
            ids.truncate(max_length);
            labels.truncate(max_length);
            let slots = slot
                .filter(|&start| start < ids.len())
                .map(|start| (start, image_tokens.min(ids.len() - start)));
            rows.push((ids, labels, slots));
        }
        let len = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let mut b = Batch {
            batch: rows.len(),
            len,
            input_ids: Vec::with_capacity(rows.len() * len),
            labels: Vec::with_capacity(rows.len() * len),
            attention_mask: Vec::with_capacity(rows.len() * len),
            image_slots: Vec::with_capacity(rows.len()),
        };
        for (ids, labels, slots) in rows {
            let pad = len - ids.len();
            b.attention_mask.extend(std::iter::repeat_n(1, ids.len()));
            b.attention_mask.extend(std::iter::repeat_n(0, pad));
            b.input_ids.extend(ids);
            b.input_ids.extend(std::iter::repeat_n(pad_id, pad));
            b.labels.extend(labels);
            b.labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
            b.image_slots.push(slots);
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Result<Vec<u32>> {
        Ok(s.chars().map(u32::from).collect())
    }

    #[test]
    fn collate_splices_truncates_and_pads() {
        let a = Preprocessed {
            input_ids: vec![1, IMAGE_TOKEN_INDEX, 2, 3],
            labels: vec![IGNORE_INDEX, IGNORE_INDEX, 2, 3],
        };
        let b = Preprocessed {
            input_ids: vec![5, 6],
            labels: vec![IGNORE_INDEX, 6],
        };
        let batch = Batch::collate(&[a.clone(), b], 3, 100, 0).unwrap();
        assert_eq!((batch.batch, batch.len), (2, 6));
        assert_eq!(batch.input_ids, vec![1, 0, 0, 0, 2, 3, 5, 6, 0, 0, 0, 0]);
        assert_eq!(
            batch.attention_mask,
            vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
        );
        assert_eq!(batch.labels[..6], [IGNORE_INDEX, -100, -100, -100, 2, 3]);
        assert_eq!(batch.image_slots, vec![Some((1, 3)), None]);
        let cut = Batch::collate(&[a], 3, 3, 0).unwrap();
        assert_eq!(cut.image_slots, vec![Some((1, 2))]);
        assert_eq!(cut.len, 3);
    }

    #[test]
    fn bad_conversations_are_errors_naming_the_record() {
        let r: Record = serde_json::from_str(
            r#"{"id": 7, "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}"#,
        )
        .unwrap();
        let e = preprocess_llama_v3(&r, "", 100, &chars)
            .unwrap_err()
            .to_string();
        assert!(e.contains("question 7") && e.contains("turn 1"), "{e}");
    }
}
