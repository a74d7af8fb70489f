"""Table for `bench/embed.sh`: reads its JSON-lines results, checks CLS parity, prints a markdown
report and (with --record) appends it to bench/RESULTS.md.

Medians over the timed runs; ratios are ours/torch (> 1 means webssl is faster, or for memory,
uses more).
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
    ap.add_argument("--record", help="append the report to this markdown file")
    args = ap.parse_args()

    ours = defaultdict(list)
    torch = {}
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
            if r["impl"] == "ours":
                ours[key].append(r)
            else:
                torch[key] = r

    m = machine()
    rows, par_rows, raw = [], [], []
    checked = set()
    for key in cells:
        model, batch = key
        o, t = ours.get(key, []), torch.get(key)
        if not o or t is None:
            continue
        n = o[0]["images"]
        o_rates = [n / r["e2e_s"] for r in o]
        o_e2e = statistics.median(o_rates)
        tr = t["result"]
        t_e2e, t_model = tr["e2e_img_s"], tr["model_img_s"]
        o_rss = max(r["rss_kib"] for r in o) / 1024
        t_rss = t["rss_kib"] / 1024
        rows.append(
            f"| {model} | {batch} | {n} | {o_e2e:.2f} | {t_e2e:.2f} | **{o_e2e / t_e2e:.2f}** | "
            f"{t_model:.2f} | {o_e2e / t_model:.2f} | {o_rss:.0f} | {t_rss:.0f} ({tr['rss_after_import_mib']:.0f}) | "
            f"{o_rss / t_rss:.2f} |"
        )
        t_runs = [(n / r["e2e_s"], n / r["model_s"]) for r in tr["runs"]]
        raw.append(
            f"- {model} b{batch}: ours e2e img/s {', '.join(f'{x:.2f}' for x in o_rates)} "
            f"(load {'; '.join(r['load'] for r in o)}); torch e2e/model img/s "
            f"{', '.join(f'{a:.2f}/{b:.2f}' for a, b in t_runs)} (load {t['load']})"
        )
        if model not in checked and os.path.exists(o[-1]["out"]) and os.path.exists(t["cls"]):
            checked.add(model)
            p = parity(o[-1]["out"], t["cls"])
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
        "| model | batch | images | ours e2e img/s | torch e2e img/s | e2e ratio | torch model-only img/s "
        "| ours e2e / torch model-only | ours peak RSS MiB | torch peak RSS MiB (after import) | RSS ratio |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    phead = "| model | CLS features | max abs diff | max abs value | min cosine |\n|---|---|---|---|---|"
    report = f"""## {m['date']}

- Machine: {m['cpu']}, {m['cpus']} CPUs ({m['flags']}), {m['mem']}, Linux {m['kernel']}; {m['rustc']}
- Code: commit `{m['commit']}` (+{m['dirty']} uncommitted paths under crates/, Cargo.* in the build)
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

Per-run img/s (medians above):
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
