//! The MLLM ([`Mllm`]): the `mlp2x_gelu` [`Connector`] from cached image tokens into a decoder
//! [`CausalLm`]; its image embeddings spliced into the token embeddings at the image slots, the
//! answer-only next-token loss, greedy answers.
//!
//! The encoder is not part of the module: it is frozen, and its tokens come from the cache
//! ([`super::connector::ImageTokenTable`]), so a training step touches only what stage 1
//! (connector) or stage 2 (connector + LM) trains.
//!
//! Reference: LLaVA-1.5 `llava/model/llava_arch.py` `prepare_inputs_labels_for_multimodal` (the image
//! features replace the placeholder in the embedding sequence, the LM runs on `inputs_embeds`),
//! `docs/reference/evaluation.md` §A.4, transformers' causal-LM loss
//! (`logits[:, :-1]` against `labels[:, 1:]`, cross-entropy with `ignore_index = -100`, the mean over
//! the positions that carry a label). Golden: `fixtures/mllm/make_mllm.py` (torch) →
//! `fixtures/mllm/connector.json` `loss`.

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use webssl_models::lm::{CausalLm, greedy_generate_embeds};

use super::connector::Connector;
use super::conversation::{Batch, IGNORE_INDEX, Preprocessed};
use crate::error::{EvalError, Result};

/// Writes `images` (one `[len, d]` block per row that has an image, in row order) into `text`
/// (`[b, t, d]`, the embeddings of the batch's token ids) at `slots` (per row: first slot and how
/// many survived truncation; `None` = no image). A truncated image keeps its first slots' tokens.
///
/// # Shapes
/// - text: `[B, T, D]`; images: `[I, L, D]` with I = rows with an image; returns `[B, T, D]`
pub fn splice_images(
    text: Tensor<3>,
    images: Tensor<3>,
    slots: &[Option<(usize, usize)>],
) -> Result<Tensor<3>> {
    let [b, t, d] = text.dims();
    let [i, l, di] = images.dims();
    let with_image = slots.iter().flatten().count();
    if slots.len() != b || with_image != i || di != d {
        return Err(EvalError::Probe {
            context: "image splice".into(),
            message: format!(
                "{b} rows with {with_image} images of width {d}, got {} slot entries and {i} images of width {di}",
                slots.len()
            ),
        });
    }
    let mut out = text;
    for (k, (row, (start, n))) in slots
        .iter()
        .enumerate()
        .filter_map(|(r, s)| s.map(|s| (r, s)))
        .enumerate()
    {
        if n > l || start + n > t {
            return Err(EvalError::Probe {
                context: "image splice".into(),
                message: format!(
                    "row {row}: slots {start}..{} outside {t} positions or {l} image tokens",
                    start + n
                ),
            });
        }
        let block = images.clone().slice([k..k + 1, 0..n, 0..d]);
        out = out.slice_assign([row..row + 1, start..start + n, 0..d], block);
    }
    Ok(out)
}

/// The mean next-token cross-entropy over the positions with a label: position `j`'s logits
/// predict `labels[j + 1]`; [`IGNORE_INDEX`] positions carry no loss. Computed in f32.
///
/// # Shapes
/// - logits: `[B, T, V]`; labels: `B·T` row-major; returns `[1]`
pub fn answer_loss(logits: Tensor<3>, labels: &[i64]) -> Result<Tensor<1>> {
    let [b, t, v] = logits.dims();
    if labels.len() != b * t || t < 2 {
        return Err(EvalError::Probe {
            context: "answer loss".into(),
            message: format!(
                "{} labels for a {b}x{t} batch (at least 2 positions per row)",
                labels.len()
            ),
        });
    }
    let device = logits.device();
    let mut idx = Vec::with_capacity(b * t.saturating_sub(1));
    let mut weight = Vec::with_capacity(idx.capacity());
    for r in 0..b {
        for &l in &labels[r * t + 1..(r + 1) * t] {
            let keep = l != IGNORE_INDEX;
            if keep && !(0..v as i64).contains(&l) {
                return Err(EvalError::Probe {
                    context: "answer loss".into(),
                    message: format!("label {l} outside the vocabulary of {v}"),
                });
            }
            idx.push(if keep { l } else { 0 });
            weight.push(if keep { 1f32 } else { 0.0 });
        }
    }
    let count = weight.iter().filter(|&&w| w > 0.0).count();
    if count == 0 {
        return Err(EvalError::Probe {
            context: "answer loss".into(),
            message: "no position in the batch carries a label".into(),
        });
    }
    let shifted = logits.slice([0..b, 0..t - 1, 0..v]);
    let logp = log_softmax(webssl_models::precision::to_f32(shifted), 2);
    let idx = Tensor::<3, Int>::from_data(TensorData::new(idx, [b, t - 1, 1]), &device);
    let weight = Tensor::<3>::from_data(TensorData::new(weight, [b, t - 1, 1]), &device);
    let picked = logp.gather(2, idx) * weight;
    Ok(-picked.sum().div_scalar(count as f64))
}

/// Connector + language model.
#[derive(Module, Debug)]
pub struct Mllm {
    pub connector: Connector,
    pub lm: CausalLm,
}

impl Mllm {
    /// The token embeddings of `batch` with the connector's image embeddings at the image slots.
    ///
    /// # Shapes
    /// `images`: `[I, L, d_vis]`, one per row with an image (`None` when no row has one) →
    /// `[B, T, d_lm]`
    fn embed(&self, batch: &Batch, images: Option<Tensor<3>>) -> Result<Tensor<3>> {
        let device = self.lm.model.embed_tokens.weight.val().device();
        let ids: Vec<i64> = batch.input_ids.iter().map(|&t| i64::from(t)).collect();
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(ids, [batch.batch, batch.len]), &device);
        let text = self.lm.embed_tokens(ids);
        match images {
            Some(images) => splice_images(text, self.connector.forward(images), &batch.image_slots),
            None if batch.image_slots.iter().all(Option::is_none) => Ok(text),
            None => Err(EvalError::Probe {
                context: "MLLM".into(),
                message: "the batch has image slots but no image tokens were given".into(),
            }),
        }
    }

    /// The mean cross-entropy of the batch's answer tokens ([`answer_loss`]).
    pub fn loss(&self, batch: &Batch, images: Option<Tensor<3>>) -> Result<Tensor<1>> {
        let device = self.lm.model.embed_tokens.weight.val().device();
        let x = self.embed(batch, images)?;
        let mask: Vec<i64> = batch.attention_mask.iter().map(|&m| i64::from(m)).collect();
        let mask =
            Tensor::<2, Int>::from_data(TensorData::new(mask, [batch.batch, batch.len]), &device);
        answer_loss(self.lm.forward_embeds(x, Some(mask), None), &batch.labels)
    }

    /// Greedy answer to one prompt (token ids with [`super::conversation::IMAGE_TOKEN_INDEX`] at
    /// the image, [`super::conversation::tokenize_with_image`]) about `image` (`[L, d_vis]`, or
    /// `None` for a text-only question): the new token ids, the `eos` that ended it included.
    pub fn answer(
        &self,
        prompt: &[i64],
        image: Option<Tensor<2>>,
        max_new_tokens: usize,
        eos: &[u32],
    ) -> Result<Vec<u32>> {
        let (l, images) = match image {
            Some(t) => {
                let [l, d] = t.dims();
                (l, Some(t.reshape([1, l, d])))
            }
            None => (0, None),
        };
        let sample = Preprocessed {
            input_ids: prompt.to_vec(),
            labels: vec![IGNORE_INDEX; prompt.len()],
        };
        let batch = Batch::collate(&[sample], l, usize::MAX, 0)?;
        let x = self.embed(&batch, images)?;
        Ok(
            greedy_generate_embeds(&self.lm, x, None, max_new_tokens, eos)
                .pop()
                .unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use webssl_models::params::to_host;

    #[test]
    fn splice_writes_each_image_at_its_slots() {
        let dev = Device::default();
        let text = Tensor::<3>::from_data(
            TensorData::new((0..2 * 5 * 2).map(|x| x as f32).collect(), [2, 5, 2]),
            &dev,
        );
        let images = Tensor::<3>::from_data(
            TensorData::new(vec![-1f32, -2., -3., -4., -5., -6.], [1, 3, 2]),
            &dev,
        );
        // Row 1's image starts at slot 3 and was cut to 2 tokens by truncation.
        let out = to_host(splice_images(text, images.clone(), &[None, Some((3, 2))]).unwrap());
        let mut want: Vec<f32> = (0..20).map(|x| x as f32).collect();
        want[10 + 6..10 + 10].copy_from_slice(&[-1., -2., -3., -4.]);
        assert_eq!(out, want);
        let text = Tensor::<3>::zeros([2, 5, 2], &dev);
        assert!(splice_images(text.clone(), images.clone(), &[None, None]).is_err());
        assert!(splice_images(text, images, &[None, Some((4, 2))]).is_err());
    }

    #[test]
    fn loss_rejects_unlabelled_batches_and_bad_labels() {
        let dev = Device::default();
        let logits = Tensor::<3>::zeros([1, 3, 4], &dev);
        assert!(answer_loss(logits.clone(), &[5, IGNORE_INDEX, IGNORE_INDEX]).is_err());
        assert!(answer_loss(logits.clone(), &[0, 9, 1]).is_err());
        // Uniform logits: every labelled position costs ln 4.
        let l = to_host(answer_loss(logits, &[0, 3, 1]).unwrap())[0];
        assert!((l - 4f32.ln()).abs() < 1e-6, "{l}");
    }
}
