//! Student / teacher network: backbone + DINO head (+ separate iBOT head), as dinov2's
//! `SSLMetaArch` holds them. Parameter paths are `backbone.*`, `dino_head.*`, `ibot_head.*`.

use burn::module::Module;
use burn::tensor::Device;
use webssl_models::heads::{DinoHead, DinoHeadConfig};
use webssl_models::{Vit, VitConfig};

use super::config::HeadsConfig;

#[derive(Module, Debug)]
pub struct DinoModel {
    pub backbone: Vit,
    pub dino_head: DinoHead,
    /// `None` when the DINO head is shared for patch tokens.
    pub ibot_head: Option<DinoHead>,
}

impl DinoModel {
    /// A fresh student (the teacher starts as its exact copy).
    pub fn new(vit: &VitConfig, heads: &HeadsConfig, seed: u64, device: &Device) -> Self {
        // The backbone initialises from the backend's seeded global RNG: hold a process-wide lock
        // from seeding to the last draw so that concurrent inits (tests, multi-run drivers) cannot
        // interleave and silently change each other's weights.
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let backbone = {
            let _guard = INIT
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            device.seed(seed);
            Vit::new(vit, device)
        };
        let dino_head = DinoHead::new(
            &DinoHeadConfig {
                in_dim: vit.embed_dim,
                out_dim: heads.dino_prototypes,
                hidden_dim: heads.hidden_dim,
                bottleneck_dim: heads.dino_bottleneck_dim,
                nlayers: 3,
            },
            seed.wrapping_add(1),
            device,
        );
        let ibot_head = heads.ibot_separate_head.then(|| {
            DinoHead::new(
                &DinoHeadConfig {
                    in_dim: vit.embed_dim,
                    out_dim: heads.ibot_prototypes,
                    hidden_dim: heads.hidden_dim,
                    bottleneck_dim: heads.ibot_bottleneck_dim,
                    nlayers: 3,
                },
                seed.wrapping_add(2),
                device,
            )
        });
        DinoModel {
            backbone,
            dino_head,
            ibot_head,
        }
    }

    /// The head that scores patch tokens.
    pub fn patch_head(&self) -> &DinoHead {
        self.ibot_head.as_ref().unwrap_or(&self.dino_head)
    }
}
