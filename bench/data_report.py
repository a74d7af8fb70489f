"""Table for `bench/data.sh`: medians over rounds of the JSON lines it collected; optionally appends
a section to bench/RESULTS.md (under its own `## Data pipeline ...` heading).

Two throughputs per cell: img/s of wall-clock time (what a trainer sees, and what a loaded shared
machine distorts), and images per CPU-second of the whole process tree (user + system time over the
timed window; webssl: every loader thread, torch: the main process and its DataLoader workers), which
is the per-core cost and is much less sensitive to other processes sharing the cores.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
from datetime import datetime, timezone


def lscpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except Exception:
        return platform.processor() or "unknown CPU", os.cpu_count()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "unknown CPU").strip()
    cpus = fields.get("CPU(s)", str(os.cpu_count())).strip()
    return model, cpus


def fmt(x, digits=1):
    return "n/a" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--load-before", default="")
    ap.add_argument("--load-after", default="")
    ap.add_argument("--wall-s", type=int, default=0)
    ap.add_argument("--bench-s", type=int, default=0, help="the measurement rounds alone")
    ap.add_argument("--build-info", default="")
    ap.add_argument("--command", default="bash bench/data.sh")
    ap.add_argument("--record", help="append the section to this markdown file")
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.results) if line.strip()]
    cells = {}
    for r in rows:
        cells.setdefault((r["side"], r["cores"]), []).append(r)

    def med(side, cores, key):
        vals = [r["result"][key] for r in cells.get((side, cores), []) if r["result"].get(key) is not None]
        return statistics.median(vals) if vals else None

    def paired(cores, key):
        """Per round, webssl / torch of the same round (the two ran back to back, so they shared
        about the same load); returns the list of ratios."""
        by_round = {}
        for side in ("webssl", "torch"):
            for r in cells.get((side, cores), []):
                by_round.setdefault(r["round"], {})[side] = r["result"].get(key)
        return [ratio(v.get("webssl"), v.get("torch")) for _, v in sorted(by_round.items())
                if ratio(v.get("webssl"), v.get("torch")) is not None]

    table = ["| cores | webssl img/s | torch img/s | ratio | webssl img per CPU-s | torch img per CPU-s | ratio per CPU-s "
             "| paired ratio per CPU-s (median of rounds) |",
             "|---|---|---|---|---|---|---|---|"]
    paired_lines = []
    for cores in (1, 2):
        w, t = med("webssl", cores, "images_per_sec"), med("torch", cores, "images_per_sec")
        wc, tc = med("webssl", cores, "images_per_cpu_sec"), med("torch", cores, "images_per_cpu_sec")
        pc = paired(cores, "images_per_cpu_sec")
        pw = paired(cores, "images_per_sec")
        table.append(f"| {cores} | {fmt(w)} | {fmt(t)} | **{fmt(ratio(w, t), 2)}** | {fmt(wc)} | {fmt(tc)} "
                     f"| **{fmt(ratio(wc, tc), 2)}** | **{fmt(statistics.median(pc) if pc else None, 2)}** |")
        paired_lines.append(f"- {cores} core(s), per round: per CPU-s " + ", ".join(f"{x:.2f}" for x in pc)
                            + "; img/s " + ", ".join(f"{x:.2f}" for x in pw))

    raw = []
    for (side, cores), rs in sorted(cells.items()):
        runs = ", ".join(f"{r['result']['images_per_sec']:.1f} / {fmt(r['result'].get('images_per_cpu_sec'))} "
                         f"(load {r['load']})" for r in rs)
        raw.append(f"- {side}, {cores} core(s): img/s / img per CPU-s = {runs}")
    first = rows[0]["result"] if rows else {}
    torch_info = next((r["result"] for r in rows if r["side"] == "torch"), {})
    model, cpus = lscpu()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_rounds = max((len(v) for v in cells.values()), default=0)

    section = f"""## Data pipeline (`bench/data.sh`), {date}

webssl's loader (`webssl shards bench --recipe dino`) vs dinov2's PyTorch pipeline (`bench/data_torch.py`)
on the same JPEGs, DINOv2 recipe {first.get('views', '2x224 + 8x98')} with iBOT masks, batch {first.get('batch_size')},
{first.get('batches')} timed batches after {first.get('warmup')} warm-up, median of {n_rounds} interleaved rounds.
"1 core": webssl `--threads 1` (one decode thread; the reader, dispatcher and collating threads run
besides it) vs torch in one process; "2 cores": webssl `--threads 2` vs a 2-worker DataLoader.

- Machine: {model}, {cpus} CPUs, shared with other engineers compiling and testing during the run
  (load average 1/5/15 min before `{args.load_before}`, after `{args.load_after}`: on {cpus} CPUs this
  means each process got only a fraction of a core, so the wall-clock img/s are depressed and noisy;
  images per CPU-second is the per-core figure to read).
- PyTorch side: {torch_info.get('source', 'n/a')}; torch {torch_info.get('torch', '?')}, torchvision
  {torch_info.get('torchvision', '?')}, Pillow {torch_info.get('pillow', '?')}.
- Build: {args.build_info}
- Wall time {args.wall_s} s in all, of which the measurement rounds {args.bench_s} s (the rest: the
  cargo build, which waits for the build-directory lock while others build, images and shards). Command: `{args.command}`

{chr(10).join(table)}

Ratios are webssl / torch (> 1: webssl faster); "ratio" columns divide the two medians, the paired
column is the median over rounds of webssl / torch within a round. Per-round ratios:
{chr(10).join(paired_lines)}

Per run (img/s / images per CPU-second, load at the end of the run):
{chr(10).join(raw)}
"""
    print(section)
    if args.record:
        new = not os.path.exists(args.record)
        with open(args.record, "a") as f:
            if new:
                f.write("# Benchmark results\n\nAppended by the scripts in bench/ (see bench/README.md). Newest last.\n\n")
            f.write(section + "\n")
        print(f"appended to {args.record}")


if __name__ == "__main__":
    main()
