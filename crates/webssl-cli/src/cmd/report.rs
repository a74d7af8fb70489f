//! `webssl report`: collect the results JSON of run directories into `report.md` and the Web-SSL scaling
//! plots (metric vs model size and vs samples seen, one line per method; PNG + SVG + the plotted data as
//! CSV). The rules (what is a run, which files count, how method / size / samples are read) are in
//! `webssl_eval::report`.

use std::path::PathBuf;

use anyhow::Context;
use webssl_eval::report;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run directories, or directories with runs below them (each holding `config.resolved.toml`).
    #[arg(long, num_args = 1.., required = true)]
    pub runs: Vec<PathBuf>,
    /// Output directory for `report.md` and the plots.
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let collected = report::collect(&args.runs).context("collecting run results")?;
    if collected.runs.iter().all(|r| r.metrics.is_empty()) {
        anyhow::bail!(
            "no results files found under {} ({} run(s); results are `*.json` with `method` and `metrics`)",
            args.runs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            collected.runs.len()
        );
    }
    for w in &collected.warnings {
        tracing::warn!("{w}");
    }
    let files = report::write_report(&collected, &args.output)
        .with_context(|| format!("writing the report to {}", args.output.display()))?;
    let metrics = collected.metrics();
    print!("{}", report::markdown_table(&collected.runs, &metrics));
    println!(
        "{} run(s), {} metric(s), {} non-results JSON file(s) skipped; report: {} ({} plot files)",
        collected.runs.len(),
        metrics.len(),
        collected.skipped_files,
        files.markdown.display(),
        files.plots.len()
    );
    Ok(())
}
