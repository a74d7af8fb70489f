//! The pretraining objectives, by name: `webssl pretrain <name>` and `objective = "<name>"` in an
//! experiment find theirs here.
//!
//! Adding an objective takes one new module and one line in [`OBJECTIVES`] (with its `pub mod` in
//! `lib.rs`). The module has:
//! - its config type (deserializable, unknown fields rejected; the shared `[data]`, `[run]` and
//!   `[eval]` sections of [`crate::run::sections`] and, for the backbone, its `[model]`
//!   [`BackboneConfig`](crate::run::sections::BackboneConfig)), implementing
//!   [`Recipe`]: validation, the `--dry-run` [`Plan`](crate::run::recipe::Plan) with its
//!   [`MemoryEstimate`](crate::run::memory::MemoryEstimate), training, what it exports;
//! - its trainer, implementing [`TrainState`](crate::run::driver::TrainState) (one step,
//!   checkpoint files, load, export), which its `train` hands to [`crate::run::driver::run`] — the
//!   loop every objective shares (resume, loader, logging, checkpoints, exports);
//! - its loss in [`crate::objectives`], one file per loss.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clip::ClipConfig;
use crate::dino::DinoConfig;
use crate::error::{Result, TrainError};
use crate::mae::MaeConfig;
use crate::run::config::load_config;
use crate::run::recipe::Recipe;

/// Every objective, in `webssl pretrain --help` order.
pub const OBJECTIVES: &[Objective] = &[
    Objective::of::<DinoConfig>(
        "dino",
        "DINOv2 / Web-DINO: DINO + iBOT + KoLeo with an EMA teacher on multi-crop views",
    ),
    Objective::of::<ClipConfig>(
        "clip",
        "CLIP control on the same data: ViT image tower + causal text tower, symmetric InfoNCE",
    ),
    Objective::of::<MaeConfig>(
        "mae",
        "MAE / Web-MAE: encoder on 25% visible patches, 512x8 decoder, normalised-pixel loss",
    ),
];

/// A config, loaded and validated, with its resolved table.
pub type Loaded = (Box<dyn Recipe>, toml::Table);

type LoadFn = fn(Option<&Path>, &Path, Option<&str>, &[String]) -> Result<Loaded>;

/// One pretraining objective: its name, its one-line description and how to load its config.
pub struct Objective {
    /// `webssl pretrain <name>`; `objective = "<name>"` in an experiment.
    pub name: &'static str,
    /// The line of `webssl pretrain --help`.
    pub about: &'static str,
    load: LoadFn,
}

impl std::fmt::Debug for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Objective {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Objective {
    /// The objective whose config type is `C`.
    pub const fn of<C: Recipe + DeserializeOwned + Serialize + 'static>(
        name: &'static str,
        about: &'static str,
    ) -> Self {
        Objective {
            name,
            about,
            load: load::<C>,
        }
    }

    /// The objective called `name`.
    pub fn find(name: &str) -> Result<&'static Objective> {
        OBJECTIVES.iter().find(|o| o.name == name).ok_or_else(|| {
            let names: Vec<&str> = OBJECTIVES.iter().map(|o| o.name).collect();
            TrainError::config(
                "objective",
                format!(
                    "unknown objective `{name}` (expected one of {})",
                    names.join(", ")
                ),
            )
        })
    }

    /// Loads a config of this objective (a file or a preset of `configs_dir`, then the `--set`
    /// `overrides`) and validates it; returns it with the resolved table.
    pub fn load(
        &self,
        file: Option<&Path>,
        configs_dir: &Path,
        preset: Option<&str>,
        overrides: &[String],
    ) -> Result<Loaded> {
        (self.load)(file, configs_dir, preset, overrides)
    }
}

fn load<C: Recipe + DeserializeOwned + Serialize + 'static>(
    file: Option<&Path>,
    configs_dir: &Path,
    preset: Option<&str>,
    overrides: &[String],
) -> Result<Loaded> {
    let (cfg, resolved): (C, toml::Table) = load_config(file, configs_dir, preset, overrides)?;
    cfg.validate()?;
    Ok((Box::new(cfg), resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for o in OBJECTIVES {
            assert_eq!(Objective::find(o.name).unwrap(), o);
        }
        let mut names: Vec<_> = OBJECTIVES.iter().map(|o| o.name).collect();
        names.dedup();
        assert_eq!(names.len(), OBJECTIVES.len());
        let err = Objective::find("simclr").unwrap_err().to_string();
        assert!(
            err.contains("unknown objective `simclr`") && err.contains("dino, clip, mae"),
            "{err}"
        );
    }
}
