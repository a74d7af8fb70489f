//! One module per top-level command. Each exposes clap `Args`/`Command` and a `run` function.

pub mod curate;
pub mod embed;
pub mod eval;
pub mod experiment;
pub mod launch;
pub mod lm;
pub mod model;
pub mod pretrain;
pub mod probe;
pub mod report;
pub mod shards;
pub mod synth;

/// Parser of `--preprocess` (`pil` | `torchvision`): which of transformers' image-processor
/// backends the eval preprocessing reproduces (`webssl_data::transform::HfBackend`).
pub fn preprocess_backend()
-> impl clap::builder::TypedValueParser<Value = webssl_data::transform::HfBackend> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["pil", "torchvision"])
        .map(|s| s.parse().expect("one of the possible values"))
}

/// Parser of a square input side in pixels (`--resolution`, `--size`): 1 to the backbone limit, so
/// 0 is refused by name instead of reaching the model, and a huge side instead of a huge resize.
pub fn image_side() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=webssl_models::config::limits::MAX_IMG_SIZE as i64)
}
