//! The network MAE trains: a timm ViT encoder and the MAE decoder (`models_mae.py`
//! `MaskedAutoencoderViT`). Parameter paths are `encoder.*` (the exported backbone, [`Vit`] names)
//! and `decoder.*` ([`MaeDecoder`] names, MAE's `decoder_*` keys).

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use webssl_data::sampler::rng_stream;
use webssl_models::Vit;
use webssl_models::mae::{MaeDecoder, MaeDecoderConfig, mae_encoder};

use crate::error::Result;

/// The random stream of the initial weights: encoder draws first, then the decoder, so the encoder
/// at step 0 depends on the seed and the encoder shape only (the kNN baseline rebuilds it alone).
const INIT_STREAM: &str = "mae_init";

#[derive(Module, Debug)]
pub struct MaeModel {
    pub encoder: Vit,
    pub decoder: MaeDecoder,
}

impl MaeModel {
    /// MAE's initialisation (see `webssl_models::mae`), from the run seed.
    pub fn new(
        encoder: &webssl_models::VitConfig,
        decoder: &MaeDecoderConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = rng_stream(seed, INIT_STREAM, &[]);
        let encoder = mae_encoder(encoder, &mut rng, device)?;
        let decoder = MaeDecoder::new(decoder, &mut rng, device);
        Ok(MaeModel { encoder, decoder })
    }

    /// The encoder exactly as [`MaeModel::new`] initialises it, without building the decoder.
    pub fn initial_encoder(
        encoder: &webssl_models::VitConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Vit> {
        let mut rng = rng_stream(seed, INIT_STREAM, &[]);
        Ok(mae_encoder(encoder, &mut rng, device)?)
    }

    /// Encoder on the visible patches, decoder on all: the predicted (normalised) pixels of every
    /// patch, in [`webssl_models::mae::patchify`] order.
    ///
    /// # Shapes
    /// - imgs: `[B, C, H, W]`
    /// - ids_keep: `[B, K]` (each sample's `ids_shuffle[..K]`), ids_restore: `[B, N]`
    /// - returns: `[B, N, p·p·C]`
    pub fn forward(
        &self,
        imgs: Tensor<4>,
        ids_keep: Tensor<2, Int>,
        ids_restore: Tensor<2, Int>,
    ) -> Tensor<3> {
        let latent = self.encoder.forward_visible(imgs, ids_keep);
        self.decoder.forward(latent, ids_restore)
    }
}
