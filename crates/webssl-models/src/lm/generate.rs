//! Greedy decoding with the KV cache, batched: transformers' `generate(do_sample=False)` for a
//! decoder-only model — prompts left-padded, positions from the mask, one new token per step from
//! the argmax of the last position's logits (the first index on ties, as `torch.argmax`), a row
//! finished at its first end-of-sequence token (kept in its output, as transformers returns it).

use burn::tensor::{Int, Tensor, TensorData};

use super::llama::{CausalLm, KvCache};
use crate::error::{ModelError, Result};
use crate::params::to_host;

/// Greedy continuation of every prompt (token ids), at most `max_new_tokens` each, stopping a row
/// at the first id in `eos`. Returns the new ids per prompt (an `eos` that ended a row included).
pub fn greedy_generate(
    lm: &CausalLm,
    prompt_ids: &[Vec<u32>],
    max_new_tokens: usize,
    eos: &[u32],
) -> Result<Vec<Vec<u32>>> {
    let b = prompt_ids.len();
    let len = prompt_ids.iter().map(Vec::len).max().unwrap_or(0);
    let vocab = lm.config().vocab_size;
    for (i, p) in prompt_ids.iter().enumerate() {
        if p.is_empty() {
            return Err(ModelError::config(
                format!("prompt {i}"),
                "is empty (no token to continue from)",
            ));
        }
        if let Some(bad) = p.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::config(
                format!("prompt {i}"),
                format!("token id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
    }
    if b == 0 {
        return Ok(Vec::new());
    }
    // Left padding with id 0 (masked out, so its embedding never matters).
    let mut ids = Vec::with_capacity(b * len);
    let mut mask = Vec::with_capacity(b * len);
    for p in prompt_ids {
        let pad = len - p.len();
        ids.extend(std::iter::repeat_n(0i64, pad).chain(p.iter().map(|&t| t as i64)));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, p.len())));
    }
    let device = lm.model.embed_tokens.weight.val().device();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, len]), &device);
    let mask = Tensor::<2, Int>::from_data(TensorData::new(mask, [b, len]), &device);
    Ok(greedy_generate_embeds(
        lm,
        lm.embed_tokens(ids),
        Some(mask),
        max_new_tokens,
        eos,
    ))
}

/// [`greedy_generate`] from input embeddings (e.g. text with image tokens spliced in), which the
/// caller left-pads as `attention_mask` says.
///
/// # Shapes
/// `embeds`: `[B, T, D]`, `attention_mask`: `[B, T]`
pub fn greedy_generate_embeds(
    lm: &CausalLm,
    embeds: Tensor<3>,
    attention_mask: Option<Tensor<2, Int>>,
    max_new_tokens: usize,
    eos: &[u32],
) -> Vec<Vec<u32>> {
    let [b, _, _] = embeds.dims();
    let device = embeds.device();
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    if max_new_tokens == 0 {
        return out;
    }
    let mut cache = KvCache::new();
    let mut hidden = lm.hidden_states(embeds, attention_mask, Some(&mut cache));
    loop {
        let [_, t, d] = hidden.dims();
        let last = hidden.slice([0..b, t - 1..t, 0..d]);
        let logits = to_host(lm.lm_head(last));
        let vocab = logits.len() / b;
        let mut next = Vec::with_capacity(b);
        for (r, row) in logits.chunks_exact(vocab).enumerate() {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            let tok = best as u32;
            if !done[r] {
                out[r].push(tok);
                done[r] = eos.contains(&tok) || out[r].len() >= max_new_tokens;
            }
            // A finished row keeps decoding its last token; nothing reads it.
            next.push(*out[r].last().unwrap_or(&tok) as i64);
        }
        if done.iter().all(|&d| d) {
            return out;
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(next, [b, 1]), &device);
        hidden = lm.hidden_states(lm.embed_tokens(ids), None, Some(&mut cache));
    }
}
