//! `webssl eval vqa-score`: scores MLLM answers on the 16 Web-SSL VQA benchmarks with the Cambrian-1 rules
//! (`webssl_eval::vqa`, whose module docs list the annotation schema per benchmark):
//!
//! * one benchmark: `--benchmark NAME --predictions P.jsonl --annotations A.json [--output OUT.json]`
//!   prints the result (and writes the JSON report with `--output`, else prints it);
//! * a directory: `--dir DIR` with `<benchmark>.jsonl` + `<benchmark>.annotations.json(l)` per
//!   benchmark writes `<benchmark>.json` reports and `summary.json` into `--output` (default
//!   `DIR/scores`) and prints the group table (General, Knowledge, OCR & Chart, Vision-Centric,
//!   Average).
//!
//! A question without a prediction counts as wrong and is reported (warning, counts and example ids
//! in the JSON); `--strict` turns that, and predictions for unknown ids, into an error.

use std::path::PathBuf;

use anyhow::{Context, bail};
use webssl_eval::vqa::{self, Benchmark, BenchmarkReport, GroupTable, Protocol, ScoreOptions};

use super::write_file;

#[derive(clap::Args, Debug)]
pub struct VqaScoreArgs {
    /// Benchmark: mme, mmbench, seed, gqa, sqa, mmmu, mathvista, ai2d, chartqa, ocrbench, textvqa,
    /// docvqa, mmvp, realworldqa, cvbench2d, cvbench3d (aliases such as MME-P, ScienceQA accepted).
    #[arg(long, requires_all = ["predictions", "annotations"], conflicts_with = "dir")]
    pub benchmark: Option<String>,
    /// Predictions JSONL, one {"question_id": .., "prediction": ".."} per line.
    #[arg(long, requires = "benchmark")]
    pub predictions: Option<PathBuf>,
    /// Annotations: JSON array or JSONL, fields per benchmark (see `webssl_eval::vqa::benchmarks`).
    #[arg(long, requires = "benchmark")]
    pub annotations: Option<PathBuf>,
    /// Score every `<benchmark>.jsonl` in this directory (with `<benchmark>.annotations.json(l)`).
    #[arg(long, required_unless_present = "benchmark")]
    pub dir: Option<PathBuf>,
    /// Single benchmark: the JSON report file. With --dir: the report directory (default DIR/scores).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Fail on missing predictions or predictions for ids not in the annotations (default: missing
    /// ones count as wrong and are reported).
    #[arg(long)]
    pub strict: bool,
    /// Scoring rules: `cambrian` (the Web-SSL tables; all 16 benchmarks) or `lmms-eval` (MME, GQA,
    /// ChartQA, TextVQA, DocVQA, CV-Bench 2D/3D only).
    #[arg(long, default_value = "cambrian", value_parser = ["cambrian", "lmms-eval"])]
    pub protocol: String,
}

pub fn run_vqa_score(args: VqaScoreArgs) -> anyhow::Result<()> {
    let opts = ScoreOptions {
        strict: args.strict,
        protocol: Protocol::from_name(&args.protocol)?,
    };
    match (&args.benchmark, &args.dir) {
        (Some(name), None) => {
            let (Some(preds), Some(anns)) = (&args.predictions, &args.annotations) else {
                bail!("--benchmark needs --predictions and --annotations");
            };
            let b = Benchmark::from_name(name)?;
            let report = vqa::score_files(b, preds, anns, opts).with_context(|| {
                format!(
                    "scoring {b} ({} against {})",
                    preds.display(),
                    anns.display()
                )
            })?;
            let json = serde_json::to_string_pretty(&report)?;
            match &args.output {
                Some(out) => {
                    write_file(out, &json)?;
                    println!("{}", summary_line(&report));
                    println!("report: {}", out.display());
                }
                None => println!("{json}"),
            }
        }
        (None, Some(dir)) => {
            let entries = vqa::discover_dir(dir)
                .with_context(|| format!("looking for predictions in {}", dir.display()))?;
            let out_dir = args.output.clone().unwrap_or_else(|| dir.join("scores"));
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            let mut reports = Vec::new();
            for e in &entries {
                let report = vqa::score_files(e.benchmark, &e.predictions, &e.annotations, opts)
                    .with_context(|| {
                        format!(
                            "scoring {} ({} against {})",
                            e.benchmark,
                            e.predictions.display(),
                            e.annotations.display()
                        )
                    })?;
                write_file(
                    &out_dir.join(format!("{}.json", e.benchmark)),
                    &serde_json::to_string_pretty(&report)?,
                )?;
                println!("{}", summary_line(&report));
                reports.push(report);
            }
            let table = GroupTable::new(reports.iter().map(|r| (r.benchmark, r.score)))?;
            let missing: Vec<&str> = Benchmark::ALL
                .iter()
                .filter(|b| !table.scores.contains_key(b))
                .map(|b| b.name())
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    "{} of 16 benchmarks absent (no overall average): {}",
                    missing.len(),
                    missing.join(", ")
                );
            }
            let summary =
                serde_json::json!({ "reports": reports, "table": table, "absent": missing });
            write_file(
                &out_dir.join("summary.json"),
                &serde_json::to_string_pretty(&summary)?,
            )?;
            println!();
            print!("{}", table.render());
            println!("reports: {}", out_dir.display());
        }
        _ => bail!("give either --benchmark (with --predictions and --annotations) or --dir"),
    }
    Ok(())
}

fn summary_line(r: &BenchmarkReport) -> String {
    let mut s = format!(
        "{:<12} {} = {:.2} ({:.2}%) over {} questions",
        r.display_name, r.metric, r.score, r.score_percent, r.n_scored
    );
    if r.missing_predictions.count > 0 {
        s.push_str(&format!(
            ", {} MISSING predictions counted wrong",
            r.missing_predictions.count
        ));
    }
    if r.unknown_predictions.count > 0 {
        s.push_str(&format!(
            ", {} predictions for unknown ids ignored",
            r.unknown_predictions.count
        ));
    }
    if r.empty_predictions > 0 {
        s.push_str(&format!(", {} empty", r.empty_predictions));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::super::{Command, run};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("eval").chain(args.iter().copied())).map(|c| c.command)
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn single_benchmark_writes_report() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.json",
            r#"[{"question_id": 1, "answer": "(A)", "source": "ADE20K"}, {"question_id": 2, "answer": "(B)", "source": "COCO"}]"#,
        );
        write(
            d.path(),
            "p.jsonl",
            "{\"question_id\": 1, \"prediction\": \"A\"}\n",
        );
        let out = d.path().join("out/r.json");
        let p = d.path().join("p.jsonl");
        let a = d.path().join("a.json");
        let cmd = parse(&[
            "vqa-score",
            "--benchmark",
            "CV-Bench-2D",
            "--predictions",
            p.to_str().unwrap(),
            "--annotations",
            a.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
        .unwrap();
        run(cmd).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(v["benchmark"], "cvbench2d");
        assert_eq!(v["score"], 50.0); // ADE 100, COCO 0 (missing prediction)
        assert_eq!(v["missing_predictions"]["count"], 1);

        let strict = parse(&[
            "vqa-score",
            "--benchmark",
            "cvbench2d",
            "--predictions",
            p.to_str().unwrap(),
            "--annotations",
            a.to_str().unwrap(),
            "--strict",
        ])
        .unwrap();
        let e = format!("{:#}", run(strict).unwrap_err());
        assert!(
            e.contains("scoring cvbench2d") && e.contains("--strict"),
            "{e}"
        );

        let bad = parse(&[
            "vqa-score",
            "--benchmark",
            "vqav2",
            "--predictions",
            "x",
            "--annotations",
            "y",
        ])
        .unwrap();
        let e = format!("{:#}", run(bad).unwrap_err());
        assert!(
            e.contains("unknown benchmark") && e.contains("realworldqa"),
            "{e}"
        );
    }

    #[test]
    fn lmms_eval_protocol_is_selectable() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.json",
            r#"[{"question_id": 1, "answer": "(A)", "options": ["x", "y"]}]"#,
        );
        write(
            d.path(),
            "p.jsonl",
            "{\"question_id\": 1, \"prediction\": \"x\"}\n",
        );
        let (p, a, out) = (
            d.path().join("p.jsonl"),
            d.path().join("a.json"),
            d.path().join("r.json"),
        );
        let args = |proto: &'static str| {
            parse(&[
                "vqa-score",
                "--benchmark",
                "cvbench3d",
                "--predictions",
                p.to_str().unwrap(),
                "--annotations",
                a.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--protocol",
                proto,
            ])
            .unwrap()
        };
        let score = |proto| {
            run(args(proto)).unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
            assert_eq!(v["protocol"], proto);
            v["score"].as_f64().unwrap()
        };
        // The answer is the option text: Cambrian (Omni) accepts it, lmms-eval's letter regex reads "X".
        assert_eq!(score("cambrian"), 100.0);
        assert_eq!(score("lmms-eval"), 0.0);
        assert!(parse(&["vqa-score", "--dir", "d", "--protocol", "vlmevalkit"]).is_err());
    }

    #[test]
    fn arguments_are_exclusive() {
        assert!(parse(&["vqa-score"]).is_err());
        assert!(parse(&["vqa-score", "--benchmark", "gqa"]).is_err());
        assert!(
            parse(&[
                "vqa-score",
                "--dir",
                "d",
                "--benchmark",
                "gqa",
                "--predictions",
                "p",
                "--annotations",
                "a"
            ])
            .is_err()
        );
        assert!(parse(&["vqa-score", "--dir", "d"]).is_ok());
    }

    #[test]
    fn directory_form_writes_reports_and_summary() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "gqa.jsonl",
            "{\"question_id\": 1, \"prediction\": \"Yes\"}\n{\"question_id\": 2, \"prediction\": \"no\"}\n",
        );
        write(
            d.path(),
            "gqa.annotations.json",
            r#"[{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "yes"}]"#,
        );
        write(
            d.path(),
            "mme.jsonl",
            "{\"question_id\": \"a\", \"prediction\": \"Yes\"}\n{\"question_id\": \"b\", \"prediction\": \"No\"}\n",
        );
        let mut mme = Vec::new();
        for (i, c) in [
            "existence",
            "count",
            "position",
            "color",
            "posters",
            "celebrity",
            "scene",
            "landmark",
            "artwork",
            "OCR",
        ]
        .iter()
        .enumerate()
        {
            let (q1, q2) = if i == 0 {
                ("a".to_string(), "b".to_string())
            } else {
                (format!("{c}1"), format!("{c}2"))
            };
            mme.push(format!(r#"{{"question_id": "{q1}", "answer": "Yes", "category": "{c}", "image": "{c}.png"}}"#));
            mme.push(format!(r#"{{"question_id": "{q2}", "answer": "No", "category": "{c}", "image": "{c}.png"}}"#));
        }
        write(d.path(), "mme.annotations.jsonl", &mme.join("\n"));
        let cmd = parse(&["vqa-score", "--dir", d.path().to_str().unwrap()]).unwrap();
        run(cmd).unwrap();
        let scores = d.path().join("scores");
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(scores.join("summary.json")).unwrap())
                .unwrap();
        // MME: existence 200 (both right), 9 categories with no predictions → 0.
        let mme_report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(scores.join("mme.json")).unwrap())
                .unwrap();
        assert_eq!(mme_report["score"], 200.0);
        assert_eq!(mme_report["score_percent"], 10.0);
        assert_eq!(mme_report["missing_predictions"]["count"], 18);
        assert_eq!(s["table"]["overall"], serde_json::Value::Null);
        assert_eq!(s["absent"].as_array().unwrap().len(), 14);
        let general = &s["table"]["groups"][0];
        assert_eq!(general["present"], 2);
        assert_eq!(general["partial_mean"], 30.0); // (10 + 50) / 2
    }
}
