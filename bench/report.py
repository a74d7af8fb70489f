"""Table for `bench/embed.sh`: reads its JSON-lines results, checks CLS parity, prints a markdown
report and (with --record) appends it to bench/RESULTS.md.

Rates are medians over the timed runs. Speed ratios are ours/torch (> 1: webssl is faster), taken
within each back-to-back pair of runs and then the median over pairs, so that load drifting on a
shared machine affects both sides of a ratio alike; the memory ratio is ours/torch peak RSS.
"""

import argparse
import json
import os
import statistics
import subprocess
from collections import defaultdict

import numpy as np
from safetensors.numpy import load_file
from safetensors import safe_open


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def machine():
    flags = sh("grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\\n' ' '")
    return {
        "cpu": sh("lscpu | sed -n 's/^Model name: *//p' | head -1"),
        "cpus": sh("nproc --all"),
        "flags": flags.strip(),
        "mem": sh("free -g | awk '/Mem:/ {print $2}'") + " GiB",
        "kernel": sh("uname -r"),
        "commit": sh("git rev-parse --short HEAD"),
        "dirty": sh("git status --porcelain -- crates Cargo.toml Cargo.lock | wc -l"),
        "rustc": sh("rustc --version"),
        "date": sh("date -u '+%Y-%m-%d %H:%M UTC'"),
    }


def parity(ours_path, torch_path):
    """max |ours - torch| over the CLS features, the largest |torch| value, and the smallest cosine."""
    a = load_file(ours_path)["cls"].astype(np.float64)
    b = np.load(torch_path).astype(np.float64)
    with safe_open(ours_path, "np") as f:
        keys = json.loads(f.metadata()["webssl"])["keys"]
    assert a.shape == b.shape, (a.shape, b.shape)
    # both sides read the same list in line order (img-0000, img-0001, ...): rows must correspond
    assert keys == sorted(keys) and len(keys) == a.shape[0], keys[:4]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "n": a.shape[0],
        "dim": a.shape[1],
        "max_abs_diff": float(np.abs(a - b).max()),
        "max_abs_ref": float(np.abs(b).max()),
        "min_cos": float(cos.min()),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--load-before", default="")
    ap.add_argument("--load-after", default="")
    ap.add_argument("--wall-s", type=int, default=0)
    ap.add_argument("--settings", default="")
    ap.add_argument("--build-info", help="what binary was measured (default: the tree now)")
    ap.add_argument("--record", help="append the report to this markdown file")
    args = ap.parse_args()

    ours = defaultdict(list)
    torch = defaultdict(list)
    cells = []
    parities = []
    with open(args.results) as f:
        for line in f:
            r = json.loads(line)
            if r["impl"] == "parity":
                parities.append(r)
                continue
            key = (r["model"], r["batch"])
            if key not in cells:
                cells.append(key)
            (ours if r["impl"] == "ours" else torch)[key].append(r)

    m = machine()
    rows, par_rows, raw = [], [], []
    checked = set()
    for key in cells:
        model, batch = key
        o, t = ours.get(key, []), torch.get(key, [])
        if not o or not t:
            continue
        n = o[0]["images"]
        # one record per run: ours {run, e2e_s, load}; torch {run, result: {runs: [{e2e_s, model_s, load}]}}
        o_by_run = {r["run"]: (n / r["e2e_s"], r["load"]) for r in o}
        t_by_run = {}
        for rec in t:
            for i, tr in enumerate(rec["result"]["runs"]):
                t_by_run[rec.get("run", i + 1)] = (n / tr["e2e_s"], n / tr["model_s"], tr.get("load", ""))
        o_e2e = statistics.median(v[0] for v in o_by_run.values())
        t_e2e = statistics.median(v[0] for v in t_by_run.values())
        t_model = statistics.median(v[1] for v in t_by_run.values())
        pairs = sorted(set(o_by_run) & set(t_by_run))
        paired = statistics.median(o_by_run[r][0] / t_by_run[r][0] for r in pairs) if pairs else float("nan")
        paired_m = statistics.median(o_by_run[r][0] / t_by_run[r][1] for r in pairs) if pairs else float("nan")
        o_rss = max(r["rss_kib"] for r in o) / 1024
        t_rss = max(r["rss_kib"] for r in t) / 1024
        t_base = max(r["result"]["rss_after_import_mib"] for r in t)
        rows.append(
            f"| {model} | {batch} | {n} | {o_e2e:.2f} | {t_e2e:.2f} | **{paired:.2f}** | "
            f"{t_model:.2f} | {paired_m:.2f} | {o_rss:.0f} | {t_rss:.0f} ({t_base:.0f}) | {o_rss / t_rss:.2f} |"
        )
        raw.append(
            f"- {model} b{batch}: "
            + "; ".join(
                f"run {r}: ours {o_by_run[r][0]:.2f} (load {o_by_run[r][1]}), torch {t_by_run[r][0]:.2f}/"
                f"{t_by_run[r][1]:.2f} (load {t_by_run[r][2]}), ratio {o_by_run[r][0] / t_by_run[r][0]:.2f}"
                for r in pairs
            )
        )
        if model not in checked and os.path.exists(o[-1]["out"]) and os.path.exists(t[-1]["cls"]):
            checked.add(model)
            p = parity(o[-1]["out"], t[-1]["cls"])
            par_rows.append(
                f"| {model} | {p['n']} x {p['dim']} | {p['max_abs_diff']:.2e} | {p['max_abs_ref']:.2f} | "
                f"{p['min_cos']:.7f} |"
            )

    for r in parities:
        p = parity(r["ours"], r["torch"])
        par_rows.append(
            f"| {r['model']} | {p['n']} x {p['dim']} | {p['max_abs_diff']:.2e} | {p['max_abs_ref']:.2f} | "
            f"{p['min_cos']:.7f} |"
        )

    head = (
        "| model | batch | images | ours e2e img/s | torch e2e img/s | e2e ratio (paired) | torch model-only img/s "
        "| ours e2e / torch model-only (paired) | ours peak RSS MiB | torch peak RSS MiB (after import) | RSS ratio |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    phead = "| model | CLS features | max abs diff | max abs value | min cosine |\n|---|---|---|---|---|"
    report = f"""## {m['date']}

- Machine: {m['cpu']}, {m['cpus']} CPUs ({m['flags']}), {m['mem']}, Linux {m['kernel']}; {m['rustc']}
- Code: {args.build_info or f"commit {m['commit']} (+{m['dirty']} uncommitted paths under crates/, Cargo.*)"}
- Load average (1/5/15 min): before `{args.load_before}`, after `{args.load_after}`; benchmark wall time {args.wall_s} s
- Settings: `{args.settings}`
- Command: `bash bench/embed.sh`

{head}
{chr(10).join(rows)}

CLS parity, ours vs transformers `pooler_output`. Benchmark models: the last timed run of the first
batch size (random init has LayerScale 1e-5, so these features barely depend on the blocks).
"LayerScale 1": the same weights with every LayerScale set to 1 (bench/parity_model.py), on the first
8 JPEGs (includes the zune-jpeg vs libjpeg-turbo decode difference) and on PNGs of Pillow's decode of
them (identical input pixels: the preprocessing + model difference alone):

{phead}
{chr(10).join(par_rows)}

Per run, img/s (ours e2e; torch e2e/model-only; ratio = ours/torch e2e within the pair). The
table gives the medians of the rates and the median of the per-pair ratios:
{chr(10).join(raw)}
"""
    print(report)
    if args.record:
        new = not os.path.exists(args.record)
        with open(args.record, "a") as f:
            if new:
                f.write("# Benchmark results\n\nAppended by `bench/embed.sh` (see bench/README.md for what "
                        "each number includes). Newest last.\n\n")
            f.write(report + "\n")
        print(f"appended to {args.record}")


if __name__ == "__main__":
    main()
