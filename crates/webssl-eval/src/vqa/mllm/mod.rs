//! The MLLM probe (Web-SSL's VQA evaluation, Cambrian-1's recipe with an MLP connector): what the
//! language model is fed and what it answers.
//!
//! * [`prompt`] — each benchmark's question prompt (Cambrian-1's answering scripts).
//! * [`conversation`] — training records, Cambrian's `llama_v3` template, answer-only labels, the
//!   batch with image slots.
//! * [`connector`] — the image tokens (patch tokens after the final norm, optional CLS, bilinear
//!   resampling to a fixed count) and the `mlp2x_gelu` connector.
//! * [`model`] — [`model::Mllm`] = connector + language model (`webssl_models::lm`): image
//!   embeddings spliced into the token embeddings, the answer-only loss, greedy answers.
//! * [`answer`] — the question file, the resumable predictions file `vqa-score` reads, the loop.
//! * [`run`] — a trained probe's run directory ([`run::Probe`]) and answering a benchmark with it.
//!
//! Unlike the rest of [`crate::vqa`], [`connector`] and [`model`] use burn; the text side stays tensor-free
//! (token ids and labels are plain vectors).

pub mod answer;
pub mod connector;
pub mod conversation;
pub mod model;
pub mod prompt;
pub mod run;
