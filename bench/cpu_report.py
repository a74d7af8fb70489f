"""Table for `bench/cpu.sh`: reads its JSONL (one line per process), prints a markdown section and
optionally appends it to bench/RESULTS.md.

Rows: arch x batch x mode. Columns: img/s (median over runs of each process's median iteration) of
ours with the fused kernels, ours unfused (burn's own ops), torch; the speed ratios ours/torch taken
within each run (the processes of one run ran back to back) and their median over runs; and each
one's FLOP rate as a % of the best GEMM rate measured at the start.
"""

import argparse
import json
import statistics
import time
from collections import defaultdict


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--load-before", default="")
    ap.add_argument("--load-after", default="")
    ap.add_argument("--wall-s", type=int, default=0)
    ap.add_argument("--build-info", default="")
    ap.add_argument("--settings", default="")
    ap.add_argument("--record")
    ap.add_argument("--failed", default="", help="';'-separated processes that gave no result")
    ap.add_argument("--title", default="CPU backbone benchmark (`bench/cpu.sh`)")
    ap.add_argument("--command", default="bash bench/cpu.sh")
    a = ap.parse_args()
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    gemm = {}
    gflop = {}
    cells = defaultdict(lambda: defaultdict(list))  # (arch, batch, mode) -> kind -> [rows]
    for r in rows:
        if r["mode"] == "gemm":
            gemm[r["impl"]] = 2 * 1024**3 / r["median_s"] / 1e9
            continue
        kind = r["impl"] if r["impl"] == "torch" else ("fused" if r.get("fused") else "unfused")
        key = (r["arch"], r["batch"], r["mode"])
        cells[key][kind].append(r)
        if "gflop" in r:
            gflop[key] = r["gflop"]
    peak = max(gemm.values()) if gemm else float("nan")
    purge = sorted({r.get("mi_purge", "default (not set by this binary)") for r in rows if r["impl"] == "ours"})
    out = []
    out.append(f"## {a.title}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    out.append("")
    out.append(f"Command: `{a.command}` ({a.settings}). {a.build_info}.")
    out.append(
        f"Machine load (1/5/15-min averages, 2 CPUs): before {a.load_before}, after {a.load_after}; wall {a.wall_s} s. "
        "A shared, noisy 2-core VM: read the within-run ratios, not the absolute rates."
    )
    out.append(
        "GEMM 1024³ f32, 2 threads: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in sorted(gemm.items()))
        + f"; peak used below = {peak:.0f} GFLOP/s."
    )
    if a.failed:
        out.append(f"**No result** (the process died, e.g. killed for memory on this 23 GiB VM): {', '.join(a.failed.split(';'))}.")
    out.append(f"Ours: mimalloc purge_delay {', '.join(purge)} (see `keep_freed_pages` in `webssl-models/src/kernels/alloc.rs`).")
    codes = sorted({r["code"] for r in rows if r["impl"] == "torch" and "code" in r})
    if codes:
        out.append(f"PyTorch side: {'; '.join(codes)}.")
    out.append("")
    out.append(
        "| arch | batch | mode | ours fused img/s | ours unfused img/s | torch img/s | fused/torch | unfused/torch | fused/unfused | fused % peak | unfused % peak | torch % peak | runs |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def med(xs):
        return statistics.median(xs) if xs else float("nan")

    details = []
    for key in sorted(cells, key=lambda k: (k[0] != "vit-small", k[0], k[1], k[2] != "infer")):
        c = cells[key]
        ips = {k: med([r["img_s"] for r in c[k]]) for k in ("fused", "unfused", "torch")}
        n = min(len(c[k]) for k in ("fused", "unfused", "torch"))

        def ratio(x, y):
            # run i of x with run i of y: the processes of one run ran back to back
            m = min(len(c[x]), len(c[y]))
            return med([c[x][i]["img_s"] / c[y][i]["img_s"] for i in range(m)]) if m else float("nan")

        g = gflop.get(key, float("nan"))
        pct = {k: 100 * g / (key[1] / ips[k]) / peak if ips[k] == ips[k] else float("nan") for k in ips}
        def f(v, spec, suffix=""):
            # a cell not run (e.g. UNFUSED=0) is a dash, not "nan"
            return "–" if v != v else f"{v:{spec}}{suffix}"

        out.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {f(ips['fused'], '.2f')} | {f(ips['unfused'], '.2f')} | {f(ips['torch'], '.2f')} | "
            f"**{f(ratio('fused', 'torch'), '.2f')}** | {f(ratio('unfused', 'torch'), '.2f')} | {f(ratio('fused', 'unfused'), '.2f')} | "
            f"{f(pct['fused'], '.0f', '%')} | {f(pct['unfused'], '.0f', '%')} | {f(pct['torch'], '.0f', '%')} | {max(n, min(len(c['fused']), len(c['torch'])))} |"
        )
        for k in ("fused", "unfused", "torch"):
            for i, r in enumerate(c[k]):
                extra = "".join(f", {f} {r[f]}" for f in ("masked", "upperbound", "loss") if f in r)
                details.append(
                    f"- {key[0]} b{key[1]} {key[2]} {k} run {i + 1}: {r['img_s']:.3f} img/s, iterations {r['times_s']} s (load {r.get('load', '?')}){extra}"
                )
    out.append("")
    out.append("Per process (median iteration → img/s; the iteration times; load average before the process):")
    out.append("")
    out.extend(details)
    out.append("")
    text = "\n".join(out)
    print(text)
    if a.record:
        with open(a.record, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
