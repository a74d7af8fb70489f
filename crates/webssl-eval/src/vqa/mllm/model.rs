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
    use webssl_models::lm::{LmConfig, LmFlavour};
    use webssl_models::params::to_host;

    use crate::vqa::mllm::conversation::IMAGE_TOKEN_INDEX;

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

    fn tiny(device: &Device) -> Mllm {
        let cfg = LmConfig {
            flavour: LmFlavour::Llama,
            vocab_size: 50,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 128,
            tie_word_embeddings: true,
            attention_bias: false,
            bos_token_id: Some(1),
            eos_token_id: vec![2],
        };
        Mllm {
            connector: Connector::new(6, 16, 7, device),
            lm: CausalLm::new(&cfg, 3, device).unwrap(),
        }
    }

    fn sample(ids: &[i64], answer_from: usize) -> Preprocessed {
        let labels = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if i >= answer_from && t >= 0 {
                    t
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        Preprocessed {
            input_ids: ids.to_vec(),
            labels,
        }
    }

    fn images(n: usize, l: usize, seed: f32, device: &Device) -> Tensor<3> {
        let v: Vec<f32> = (0..n * l * 6).map(|i| (i as f32 * seed).sin()).collect();
        Tensor::from_data(TensorData::new(v, [n, l, 6]), device)
    }

    fn scalar(t: Tensor<1>) -> f32 {
        to_host(t)[0]
    }

    #[test]
    fn padded_rows_do_not_change_real_rows_and_gradients_reach_the_connector() {
        let device = Device::flex().autodiff();
        let m = tiny(&device);
        let a = sample(&[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8, 9, 10, 2], 5);
        let b = sample(&[1, 11, 12, 13, 2], 3);
        let n_img = 4;
        let both = Batch::collate(&[a.clone(), b.clone()], n_img, 64, 0).unwrap();
        let imgs = images(1, n_img, 0.37, &device);
        let loss_ab = m.loss(&both, Some(imgs.clone())).unwrap();
        let loss_a = m
            .loss(
                &Batch::collate(&[a], n_img, 64, 0).unwrap(),
                Some(imgs.clone()),
            )
            .unwrap();
        let loss_b = m
            .loss(&Batch::collate(&[b], n_img, 64, 0).unwrap(), None)
            .unwrap();
        // Labelled positions: a has 4 (8, 9, 10, 2 after the 4 image slots), b has 2 (13, 2).
        let (ab, la, lb) = (scalar(loss_ab.clone()), scalar(loss_a), scalar(loss_b));
        assert!(
            (ab * 6.0 - (la * 4.0 + lb * 2.0)).abs() < 1e-4,
            "{ab} vs {la}, {lb}"
        );
        // A random-init LM (weights N(0, 0.02²)) is near uniform over the 50 tokens.
        assert!((ab - 50f32.ln()).abs() < 0.1, "{ab}");
        let grads = loss_ab.backward();
        let g = to_host(m.connector.fc1.weight.val().grad(&grads).unwrap());
        assert!(
            g.iter().any(|&x| x != 0.0),
            "the image tokens reach the loss"
        );
        // Other image tokens, another loss.
        let other = m
            .loss(&both, Some(images(1, n_img, 1.91, &device)))
            .unwrap();
        assert_ne!(scalar(other), ab);
        assert!(m.loss(&both, None).is_err());
    }

    #[test]
    fn answers_are_greedy_and_bounded() {
        let device = Device::flex();
        let m = tiny(&device);
        let prompt = [1, 5, IMAGE_TOKEN_INDEX, 6, 7];
        let img = images(1, 3, 0.5, &device).reshape([3, 6]);
        let a = m.answer(&prompt, Some(img.clone()), 6, &[2]).unwrap();
        assert!(!a.is_empty() && a.len() <= 6);
        assert_eq!(a, m.answer(&prompt, Some(img), 6, &[2]).unwrap());
        let text_only = m.answer(&[1, 5, 6, 7], None, 4, &[]).unwrap();
        assert_eq!(text_only.len(), 4);
        assert!(m.answer(&prompt, None, 4, &[]).is_err());
    }
}
