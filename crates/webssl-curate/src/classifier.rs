//! Image classifiers behind the Light ("contains readable text") and Heavy ("charts, tables or
//! documents") filters, and the filter that turns a score into a keep/drop decision.
//!
//! Web-SSL (docs/reference/webssl-paper.md §5) filtered MC-2B with SmolVLM2 answering *"Does this image
//! contain any readable text? Answer only yes or no."* (Light, keeps 50.3%) and *"... charts, tables, or
//! documents with readable text?"* (Heavy, 1.3%). Its decision is the binary answer; ours is a
//! score in [0, 1] against a threshold, which covers that case (score 1 = yes) and graded scorers.
//!
//! # Implementing [`Classifier`]
//! - **A yes/no MLLM** (the paper's filter): preprocess each image as the MLLM expects, run the
//!   prompt, and return `P(yes) = softmax([logit("yes"), logit("no")])[0]` of the first answer
//!   token (or 1.0 / 0.0 for a sampled answer), with `threshold() = 0.5`. Batch the images of
//!   `score_batch` into one generation call; a failure on one image is an `Err` for that image.
//! - **An OCR detector** (e.g. PP-OCRv4 det, tesseract): return the fraction of the image area
//!   covered by text boxes with confidence above the detector's cut-off (Light: any text →
//!   `threshold` ≈ 0.005), or for Heavy the fraction covered by text *lines* (documents and tables
//!   are mostly text), with a higher threshold chosen on labelled data.
//! - Register it in the chain by giving [`crate::filters::Chain::build`] a loader that returns it
//!   for a `kind = "probe"` entry (or add a `FilterConfig` kind).
//!
//! The built-in classifier is [`crate::probe::ProbeClassifier`]: a logistic-regression probe on
//! frozen webssl backbone features, trained by `webssl curate train-filter`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use image::RgbImage;

use crate::filters::{Candidate, Filter, Judgement};

/// Scores images for one yes/no question.
pub trait Classifier: Send {
    /// Scores in [0, 1] (higher = yes), one per image, in order; `Err` for an image that could not
    /// be scored. May panic on a bad batch: [`ClassifierFilter`] then retries image by image.
    fn score_batch(&mut self, images: &[&RgbImage]) -> Vec<Result<f64, String>>;

    /// The default decision threshold: `score >= threshold` means yes.
    fn threshold(&self) -> f64;
}

/// A chain filter around a [`Classifier`]: keeps `score >= threshold` (or `<` when inverted).
pub struct ClassifierFilter {
    classifier: Box<dyn Classifier>,
    threshold: f64,
    invert: bool,
}

impl ClassifierFilter {
    pub fn new(classifier: Box<dyn Classifier>, threshold: f64, invert: bool) -> Self {
        ClassifierFilter {
            classifier,
            threshold,
            invert,
        }
    }

    fn score_guarded(&mut self, images: &[&RgbImage]) -> Vec<Result<f64, String>> {
        let n = images.len();
        match catch_unwind(AssertUnwindSafe(|| self.classifier.score_batch(images))) {
            Ok(scores) if scores.len() == n => scores,
            Ok(scores) => vec![
                Err(format!(
                    "classifier returned {} scores for {n} images",
                    scores.len()
                ));
                n
            ],
            Err(_) if n > 1 => images
                .iter()
                .map(|img| self.score_guarded(std::slice::from_ref(img)).remove(0))
                .collect(),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                vec![Err(format!("classifier panicked: {msg}"))]
            }
        }
    }
}

impl Filter for ClassifierFilter {
    fn judge(&mut self, batch: &[&Candidate], _alive: &[bool]) -> Vec<Result<Judgement, String>> {
        let mut out: Vec<Option<Result<Judgement, String>>> = vec![None; batch.len()];
        let mut images = Vec::new();
        let mut at = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            match c.image() {
                Ok(img) => {
                    images.push(img);
                    at.push(i);
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        if !images.is_empty() {
            let scores = self.score_guarded(&images);
            for (i, s) in at.into_iter().zip(scores) {
                out[i] = Some(s.and_then(|s| {
                    if !(0.0..=1.0).contains(&s) {
                        return Err(format!("classifier score {s} is not in [0, 1]"));
                    }
                    let yes = s >= self.threshold;
                    let keep = yes != self.invert;
                    Ok(Judgement {
                        keep,
                        score: Some(s),
                        reason: (!keep).then(|| {
                            format!(
                                "score {s:.3} {} threshold {}",
                                if yes { ">=" } else { "<" },
                                self.threshold
                            )
                        }),
                        hash: None,
                    })
                }));
            }
        }
        out.into_iter()
            .map(|o| o.expect("every sample answered"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean brightness as the score; panics on a batch that holds a 1x1 image.
    struct Brightness;
    impl Classifier for Brightness {
        fn score_batch(&mut self, images: &[&RgbImage]) -> Vec<Result<f64, String>> {
            assert!(images.iter().all(|i| i.width() > 1), "1x1 image");
            images
                .iter()
                .map(|i| {
                    let s: u64 = i.as_raw().iter().map(|&v| u64::from(v)).sum();
                    Ok(s as f64 / i.as_raw().len() as f64 / 255.0)
                })
                .collect()
        }
        fn threshold(&self) -> f64 {
            0.5
        }
    }

    fn cand(v: u8, side: u32) -> Candidate {
        let img = RgbImage::from_pixel(side, side, image::Rgb([v, v, v]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        Candidate::new("k".into(), "k".into(), out.into_inner(), None, 1 << 20)
    }

    #[test]
    fn thresholds_inversion_and_panic_isolation() {
        let mut f = ClassifierFilter::new(Box::new(Brightness), 0.5, false);
        let batch = [cand(250, 4), cand(10, 4), cand(250, 1)];
        let refs: Vec<&Candidate> = batch.iter().collect();
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let out = f.judge(&refs, &[true; 3]);
        std::panic::set_hook(prev);
        assert!(out[0].as_ref().unwrap().keep);
        assert!(!out[1].as_ref().unwrap().keep);
        let err = out[2].as_ref().unwrap_err();
        assert!(err.contains("1x1 image"), "{err}");

        let mut inv = ClassifierFilter::new(Box::new(Brightness), 0.5, true);
        let out = inv.judge(&refs[..2], &[true; 2]);
        assert!(!out[0].as_ref().unwrap().keep && out[1].as_ref().unwrap().keep);
    }
}
