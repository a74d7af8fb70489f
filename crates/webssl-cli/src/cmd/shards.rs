//! `webssl shards ...`: build, inspect and import WebDataset shards.
//!
//! Thin wiring over `webssl_data::{shards, source, import}`: argument parsing, a progress bar, and one
//! summary line per run (kept/skipped counts and the first 20 skipped `shard:key` or paths).
//! `bench` (loader throughput) lives in `shards/bench.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use webssl_data::decode::{DEFAULT_MAX_PIXELS, decode_rgb};
use webssl_data::import::{
    BuildOptions, BuildReport, FASHION_MNIST_DEBIAN_DIR, Validate, class_folder_items, error_what,
    fashion_mnist_items, write_items,
};
use webssl_data::shards::{
    INDEX_FILE, ShardIndex, ShardLimits, ShardReader, ShardWriter, list_shard_files,
};
use webssl_data::source::{InputSpec, Item, SourceOptions, iter_items_with, resolve_inputs};

mod bench;

/// How many skipped items the summary line names.
const SUMMARY_SKIPPED: usize = 20;

#[derive(Subcommand)]
pub enum Command {
    /// Build shards from image folders, class-folder trees, tar shards or file lists.
    Build(BuildArgs),
    /// Summarise shards: samples, bytes, extensions, labels, captions, bad members, first keys.
    Inspect(InspectArgs),
    /// Import a dataset into labelled shards.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Loader throughput over shards: decode + augmentation + collation + masks, images/s per thread.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
pub enum ImportCommand {
    /// Fashion-MNIST IDX files (gzipped or not), e.g. from the Debian package `dataset-fashion-mnist`.
    FashionMnist(FashionMnistArgs),
    /// An ImageNet-style tree `ROOT/<class>/**/<image>`: labels from the sorted class names.
    ClassFolders(ClassFoldersArgs),
}

/// Where and how big the output shards are.
#[derive(Args, Clone)]
pub struct OutputArgs {
    /// Output directory (created; `index.json` is written next to the shards).
    #[arg(long)]
    pub output: PathBuf,
    /// Shard file prefix: `{prefix}-000000.tar`, ...
    #[arg(long)]
    pub prefix: Option<String>,
    /// Samples per shard.
    #[arg(long, default_value_t = 10_000)]
    pub max_samples: usize,
    /// Bytes per shard: plain bytes or with a unit (`500MB`, `1G`, `2GiB`; k/M/G are decimal).
    #[arg(long, value_parser = parse_size)]
    pub max_bytes: Option<u64>,
}

impl OutputArgs {
    fn writer(&self, default_prefix: &str) -> Result<ShardWriter> {
        let prefix = self.prefix.as_deref().unwrap_or(default_prefix);
        let limits = ShardLimits {
            max_samples: Some(self.max_samples),
            max_bytes: self.max_bytes,
        };
        ShardWriter::create(&self.output, prefix, limits)
            .with_context(|| format!("creating shards in {}", self.output.display()))
    }
}

/// How images are checked before they are written.
#[derive(Args, Clone)]
pub struct CheckArgs {
    /// `decode`: fully decode every image (catches corrupt data); `header`: format and size only;
    /// `none`: trust the input.
    #[arg(long, value_enum, default_value_t = ValidateArg::Decode)]
    pub validate: ValidateArg,
    /// Images with more pixels are skipped (default: Pillow's decompression-bomb threshold).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Skip (and count) images without a caption, as CLIP training needs one.
    #[arg(long)]
    pub require_captions: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ValidateArg {
    Decode,
    Header,
    None,
}

impl CheckArgs {
    fn options(&self) -> BuildOptions {
        let validate = match self.validate {
            ValidateArg::Decode => Validate::Decode,
            ValidateArg::Header => Validate::Header,
            ValidateArg::None => Validate::None,
        };
        BuildOptions {
            validate,
            max_pixels: self.max_pixels,
            require_captions: self.require_captions,
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaptionsFrom {
    /// No captions (shard inputs keep their own `txt`; file lists keep their TAB captions).
    None,
    /// `img.txt` next to `img.jpg`.
    Sidecar,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Image folders, single images, tar shards (brace patterns like `shards/s-{000000..000009}.tar`
    /// work; their samples' other members, e.g. depth or segmentation maps, are kept), shard
    /// directories, or text files with one image path per line (optionally TAB and a caption).
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<String>,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Treat each input directory as an ImageNet-style class tree: label = sorted class index,
    /// caption = class name unless a sidecar caption exists.
    #[arg(long)]
    pub class_folders: bool,
    /// Where captions come from for folder and list inputs.
    #[arg(long, value_enum, default_value_t = CaptionsFrom::None)]
    pub captions_from: CaptionsFrom,
    #[command(flatten)]
    pub check: CheckArgs,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Shard directories (index.json, else every *.tar inside) or tar files.
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Also decode every image to find corrupt ones (slower).
    #[arg(long)]
    pub decode: bool,
    /// How many keys to show from the start of each input.
    #[arg(long, default_value_t = 5)]
    pub keys: usize,
    /// Print one JSON object per input instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct FashionMnistArgs {
    /// Directory holding the IDX files (`train-images-idx3-ubyte[.gz]`, `t10k-...`).
    #[arg(long, default_value = FASHION_MNIST_DEBIAN_DIR)]
    pub dir: PathBuf,
    #[arg(long, value_parser = ["train", "test"], default_value = "train")]
    pub split: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args)]
pub struct ClassFoldersArgs {
    /// Root of the class tree: `DIR/<class>/**/<image>`.
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Where captions come from (default: the class name).
    #[arg(long, value_enum, default_value_t = CaptionsFrom::None)]
    pub captions_from: CaptionsFrom,
    #[command(flatten)]
    pub check: CheckArgs,
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Build(args) => build(args),
        Command::Inspect(args) => inspect(args),
        Command::Import(ImportCommand::FashionMnist(args)) => import_fashion_mnist(args),
        Command::Import(ImportCommand::ClassFolders(args)) => import_class_folders(args),
        Command::Bench(args) => bench::run(args),
    }
}

/// Parses `1234`, `500MB`, `1.5G`, `2GiB` (k/M/G/T decimal, Ki/Mi/Gi/Ti binary; trailing `B` optional).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number with an optional unit"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0f64.powi(4),
        _ => {
            return Err(format!(
                "`{s}`: unknown unit (use k, M, G, T, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    let bytes = (value * scale).round();
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{s}`: must be at least 1 byte"));
    }
    Ok(bytes as u64)
}

fn progress(len: Option<u64>, what: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => {
            let pb = ProgressBar::new(n);
            pb.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            pb
        }
        None => {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template(
                    "{prefix} {spinner} {elapsed} {pos} items {per_sec} {msg}",
                )
                .expect("static template"),
            );
            pb
        }
    };
    pb.set_prefix(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

fn write_with_progress(
    items: impl Iterator<Item = webssl_data::Result<Item>>,
    writer: ShardWriter,
    opts: &BuildOptions,
    len: Option<u64>,
    what: &str,
) -> Result<BuildReport> {
    let pb = progress(len, what);
    let report = write_items(items, writer, opts, &mut |kept, skipped| {
        pb.set_position(kept + skipped);
        pb.set_message(format!("kept {kept} skipped {skipped}"));
    });
    pb.finish_and_clear();
    report.context("writing shards")
}

fn print_summary(command: &str, report: &BuildReport, out: &Path) {
    println!(
        "{command}: {} -> {}",
        report.summary(SUMMARY_SKIPPED),
        out.join(INDEX_FILE).display()
    );
}

fn build(args: BuildArgs) -> Result<()> {
    let opts = args.check.options();
    let sidecar = args.captions_from == CaptionsFrom::Sidecar;
    let writer = args.output.writer("shard")?;
    let report = if args.class_folders {
        let [root] = &args.input[..] else {
            bail!("--class-folders takes exactly one --input directory (the class tree root)");
        };
        let root = Path::new(root);
        if !root.is_dir() {
            bail!("--class-folders: {} is not a directory", root.display());
        }
        let (classes, items) = class_folder_items(root, sidecar)
            .with_context(|| format!("reading class folders in {}", root.display()))?;
        tracing::info!(
            "{} classes in {}: {}",
            classes.len(),
            root.display(),
            preview(&classes, 10)
        );
        write_with_progress(items, writer, &opts, None, "build")?
    } else {
        let inputs = resolve_inputs(&args.input).context("resolving --input")?;
        log_inputs(&inputs);
        let items = iter_items_with(
            &inputs,
            SourceOptions {
                sidecar_captions: sidecar,
            },
        );
        write_with_progress(items, writer, &opts, None, "build")?
    };
    print_summary("shards build", &report, &args.output.output);
    Ok(())
}

fn log_inputs(inputs: &[InputSpec]) {
    let (mut folders, mut tars, mut lists, mut images) = (0, 0, 0, 0);
    for i in inputs {
        match i {
            InputSpec::Folder(_) => folders += 1,
            InputSpec::Tar(_) => tars += 1,
            InputSpec::FileList(_) => lists += 1,
            InputSpec::Image(_) => images += 1,
        }
    }
    tracing::info!(
        "inputs: {folders} folders, {tars} tar shards, {lists} file lists, {images} images"
    );
}

fn preview(v: &[String], n: usize) -> String {
    let mut s = v.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > n {
        s.push_str(", ...");
    }
    s
}

fn import_fashion_mnist(args: FashionMnistArgs) -> Result<()> {
    let default_prefix = format!("fashion-mnist-{}", args.split);
    let items = fashion_mnist_items(&args.dir, &args.split).with_context(|| {
        format!(
            "reading Fashion-MNIST `{}` from {} (install the Debian package `dataset-fashion-mnist` or pass --dir)",
            args.split,
            args.dir.display()
        )
    })?;
    let len = items.size_hint().1.map(|n| n as u64);
    let writer = args.output.writer(&default_prefix)?;
    // The importer encodes the PNGs itself: nothing to validate.
    let opts = BuildOptions {
        validate: Validate::None,
        ..Default::default()
    };
    let report = write_with_progress(items, writer, &opts, len, "fashion-mnist")?;
    print_summary("shards import fashion-mnist", &report, &args.output.output);
    Ok(())
}

fn import_class_folders(args: ClassFoldersArgs) -> Result<()> {
    let (classes, items) =
        class_folder_items(&args.dir, args.captions_from == CaptionsFrom::Sidecar)
            .with_context(|| format!("reading class folders in {}", args.dir.display()))?;
    tracing::info!("{} classes: {}", classes.len(), preview(&classes, 10));
    let len = items.size_hint().1.map(|n| n as u64);
    let writer = args.output.writer("shard")?;
    let report = write_with_progress(items, writer, &args.check.options(), len, "class-folders")?;
    print_summary("shards import class-folders", &report, &args.output.output);
    Ok(())
}

/// Per-input statistics for `inspect`.
#[derive(Default, serde::Serialize)]
struct Stats {
    input: String,
    shards: usize,
    bytes: u64,
    samples: u64,
    with_image: u64,
    with_caption: u64,
    extensions: BTreeMap<String, u64>,
    labels: BTreeMap<i64, u64>,
    first_keys: Vec<String>,
    /// `shard:key` (or shard) and reason.
    bad: Vec<(String, String)>,
    skipped_members: Vec<String>,
    /// Differences between index.json and the shards.
    index_mismatches: Vec<String>,
}

fn inspect_shard(path: &Path, decode: bool, keys: usize) -> Stats {
    let mut st = Stats {
        shards: 1,
        ..Default::default()
    };
    st.bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut iter = match ShardReader::open(path) {
        Ok(it) => it,
        Err(e) => {
            st.bad.push((path.display().to_string(), e.to_string()));
            return st;
        }
    };
    for r in iter.by_ref() {
        match r {
            Ok(s) => {
                st.samples += 1;
                if st.first_keys.len() < keys {
                    st.first_keys.push(s.key.clone());
                }
                for ext in s.files.keys() {
                    *st.extensions.entry(ext.clone()).or_default() += 1;
                }
                if let Some(l) = s.label() {
                    *st.labels.entry(l).or_default() += 1;
                }
                if s.caption().is_some() {
                    st.with_caption += 1;
                }
                let what = format!("{}:{}", path.display(), s.key);
                match s.image_bytes() {
                    Some((_, bytes)) => {
                        st.with_image += 1;
                        if decode && let Err(e) = decode_rgb(bytes, &what, DEFAULT_MAX_PIXELS) {
                            st.bad.push((what, e.to_string()));
                        }
                    }
                    None => st.bad.push((what, "no image member".into())),
                }
            }
            Err(e) => st.bad.push((error_what(&e), e.to_string())),
        }
    }
    st.skipped_members = iter
        .skipped_members()
        .iter()
        .map(|m| format!("{}:{m}", path.display()))
        .collect();
    st
}

fn inspect(args: InspectArgs) -> Result<()> {
    for input in &args.paths {
        let path = Path::new(input);
        let (shards, index) = if path.is_dir() {
            if path.join(INDEX_FILE).is_file() {
                let index = ShardIndex::load(path)
                    .with_context(|| format!("reading {}", path.join(INDEX_FILE).display()))?;
                (index.paths(path), Some(index))
            } else {
                (
                    list_shard_files(path)
                        .with_context(|| format!("listing {}", path.display()))?,
                    None,
                )
            }
        } else if path.is_file() {
            (vec![path.to_path_buf()], None)
        } else {
            bail!("{input}: no such file or directory");
        };
        if shards.is_empty() {
            bail!("{input}: no tar shards found");
        }
        let pb = progress(Some(shards.len() as u64), "inspect");
        let per_shard: Vec<Stats> = shards
            .par_iter()
            .map(|p| {
                let s = inspect_shard(p, args.decode, args.keys);
                pb.inc(1);
                s
            })
            .collect();
        pb.finish_and_clear();
        let mut total = Stats {
            input: input.clone(),
            ..Default::default()
        };
        if let Some(index) = &index {
            for (entry, st) in index.shards.iter().zip(&per_shard) {
                if entry.samples != st.samples || entry.bytes != st.bytes {
                    total.index_mismatches.push(format!(
                        "{}: index says {} samples / {} bytes, found {} / {}",
                        entry.file, entry.samples, entry.bytes, st.samples, st.bytes
                    ));
                }
            }
        }
        for st in per_shard {
            total.shards += st.shards;
            total.bytes += st.bytes;
            total.samples += st.samples;
            total.with_image += st.with_image;
            total.with_caption += st.with_caption;
            for (k, v) in st.extensions {
                *total.extensions.entry(k).or_default() += v;
            }
            for (k, v) in st.labels {
                *total.labels.entry(k).or_default() += v;
            }
            let room = args.keys.saturating_sub(total.first_keys.len());
            total
                .first_keys
                .extend(st.first_keys.into_iter().take(room));
            total.bad.extend(st.bad);
            total.skipped_members.extend(st.skipped_members);
        }
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&total).context("serialising stats")?
            );
        } else {
            print_stats(&total);
        }
    }
    Ok(())
}

fn print_stats(st: &Stats) {
    println!("{}", st.input);
    println!(
        "  shards {}  samples {}  bytes {}  with image {}  with caption {}",
        st.shards, st.samples, st.bytes, st.with_image, st.with_caption
    );
    let exts: Vec<String> = st
        .extensions
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    println!("  extensions  {}", exts.join("  "));
    if !st.labels.is_empty() {
        let labels: Vec<String> = st.labels.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        println!(
            "  labels ({} distinct)  {}",
            st.labels.len(),
            labels.join("  ")
        );
    }
    println!("  first keys  {}", st.first_keys.join("  "));
    for m in &st.index_mismatches {
        println!("  index mismatch: {m}");
    }
    if !st.skipped_members.is_empty() {
        println!(
            "  {} members outside any sample: {}",
            st.skipped_members.len(),
            preview(&st.skipped_members, SUMMARY_SKIPPED)
        );
    }
    println!("  bad {}", st.bad.len());
    for (what, reason) in st.bad.iter().take(SUMMARY_SKIPPED) {
        println!("    {what}: {reason}");
    }
    if st.bad.len() > SUMMARY_SKIPPED {
        println!("    ... {} more", st.bad.len() - SUMMARY_SKIPPED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1234"), Ok(1234));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64 KiB"), Ok(65_536));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
    }
}
