#!/usr/bin/env python3
"""Issue 15's measurements in one command: the fused backward pass against its
targets, side by side with PyTorch, and the paper's training claim.

    python3 bench/train_report.py --build build --python /path/to/venv/bin/python

Part 1 (acceptance; fp32, H=8, D=128, N=2048 and 4096, 1 and 2 threads):
rounds that alternate build/bench/backward_bench (forward + backward cases
and the SGEMM ceiling, one repetition a round) and bench/torch_sdpa.py --mode
train (PyTorch's CPU SDPA, forward + backward through autograd, the same
shapes, masks and thread counts), so a slow spell of a shared machine lands on
both; medians over the rounds. Criteria:
    fwd+bwd useful GFLOP/s / SGEMM GFLOP/s (same threads)   >= 0.60
    PyTorch time / ism time, ISM 16 segments                 >= 2
    PyTorch time / ism time, causal                          >= 1.2
Useful FLOPs count the backward as 2.5x the forward: 3.5 x 4 x D x visible
pairs x H for forward + backward.

Part 2 (--dialogue): the train/ cases of backward_bench (a T-round dialogue,
T = 1..16: ISM once over the dialogue vs the T samples a prefix-LM needs),
their table, and bench/plots/train_dialogue.png (gnuplot).

PyTorch is never a dependency: without --python (or where `import torch`
fails) part 1 reports ism's side only. Python 3 standard library only.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import report  # noqa: E402  (the gnuplot helpers of bench/report.py)

MASKS = ["none", "causal", "ism16"]
LENGTHS = [2048, 4096]
THREADS = [1, 2]
TARGETS = {"ism16": 2.0, "causal": 1.2}


def run(cmd, env=None):
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, env=env, stdout=subprocess.PIPE, text=True).stdout


def bench_round(args, out, flt, min_time):
    env = dict(os.environ, OPENBLAS_CORETYPE=args.openblas_coretype)
    run([os.path.join(args.build, "bench", "backward_bench"), f"--benchmark_filter={flt}",
         f"--benchmark_min_time={min_time}", f"--benchmark_out={out}",
         "--benchmark_out_format=json"], env)
    with open(out) as f:
        rows = {}
        for b in json.load(f)["benchmarks"]:
            if b.get("run_type", "iteration") != "iteration":
                continue
            name = b["name"].replace("/real_time", "")
            rows[name] = b
        return rows


def torch_round(args, out):
    cmd = [args.python, os.path.join(HERE, "torch_sdpa.py"), "--mode", "train", "--dim", "128",
           "--heads", "8", "--reps", "1", "--warmup", "1", "--json", out,
           "--n", *map(str, LENGTHS), "--threads", *map(str, THREADS), "--masks", *MASKS]
    text = run(cmd)
    if "torch not importable" in text:
        return None
    with open(out) as f:
        return {(r["mask"], r["n"], r["threads"]): r["median_ms"] / 1e3 for r in json.load(f)}


def acceptance(args, tmp):
    ism_times, flops, sgemm, torch_times = {}, {}, {}, {}
    for rnd in range(args.rounds):
        print(f"== round {rnd + 1} of {args.rounds}", flush=True)
        rows = bench_round(args, os.path.join(tmp, f"ism{rnd}.json"), "backward/(fwdbwd|sgemm)/", args.min_time)
        for name, b in rows.items():
            secs = b["real_time"] * {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
            if name.startswith("backward/sgemm/"):
                t = int(name.rsplit("threads:", 1)[1])
                sgemm.setdefault(t, []).append(b["flops"])
            else:
                _, _, mask, n, t = name.split("/")
                key = (mask, int(n.split(":")[1]), int(t.split(":")[1]))
                ism_times.setdefault(key, []).append(secs)
                flops[key] = b["flops"] * secs  # per iteration
        if args.python:
            got = torch_round(args, os.path.join(tmp, f"torch{rnd}.json"))
            if got is None:
                print("torch not importable with --python; ism's side only")
                args.python = None
            else:
                for key, secs in got.items():
                    torch_times.setdefault(key, []).append(secs)
    med = statistics.median
    ceiling = {t: max(v) for t, v in sgemm.items()}  # best SGEMM seen: the strictest ceiling
    lines = ["| mask | N | threads | ism fwd+bwd | useful GFLOP/s | / SGEMM (>= 0.60) | PyTorch fwd+bwd | PyTorch / ism | target | met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mask in MASKS:
        for n in LENGTHS:
            for t in THREADS:
                key = (mask, n, t)
                if key not in ism_times:
                    continue
                s = med(ism_times[key])
                gf = flops[key] / s / 1e9
                frac = gf * 1e9 / ceiling[t] if t in ceiling else None
                tt = med(torch_times[key]) if key in torch_times else None
                ratio = tt / s if tt else None
                target = TARGETS.get(mask)
                ok_sgemm = frac is not None and frac >= 0.6
                ok_torch = target is None or (ratio is not None and ratio >= target)
                lines.append(
                    f"| {mask} | {n} | {t} | {s * 1e3:.1f} ms | {gf:.1f} | "
                    f"{'-' if frac is None else f'{frac:.2f}'} | {'-' if tt is None else f'{tt * 1e3:.1f} ms'} | "
                    f"{'-' if ratio is None else f'{ratio:.2f}x'} | {'-' if target is None else f'>= {target}x'} | "
                    f"{'yes' if ok_sgemm and ok_torch else '**no**'} |")
    for t, v in sorted(ceiling.items()):
        lines.append(f"\nSGEMM ceiling, {t} thread(s): {v / 1e9:.1f} GFLOP/s (best of {len(sgemm[t])} rounds, "
                     f"OPENBLAS_CORETYPE={args.openblas_coretype} and Eigen)")
    lines.append(f"\nMedians of {args.rounds} alternating rounds; load average {os.getloadavg()[0]:.2f} at the end.")
    return "\n".join(lines)


def dialogue(args, tmp):
    rows = bench_round(args, os.path.join(tmp, "dialogue.json"), f"train/.*/threads:{args.dialogue_threads}",
                       args.dialogue_min_time)
    per = {}
    for name, b in rows.items():
        _, scheme, t, _ = name.split("/")
        secs = b["real_time"] * {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
        per[(scheme, int(t.split(":")[1]))] = (secs, b["pairs"], b["tokens"])
    lines = ["| T | tokens (ISM) | ISM pairs | prefix-LM pairs | pairs ratio | ISM time | prefix-LM time | time ratio |",
             "|---|---|---|---|---|---|---|---|"]
    series = {"ism": [], "prefix": [], "ratio_t": [], "ratio_p": []}
    for t in range(1, 17):
        if ("ism", t) not in per or ("prefix", t) not in per:
            continue
        (sa, pa, na), (sb, pb, _) = per[("ism", t)], per[("prefix", t)]
        lines.append(f"| {t} | {na:.0f} | {pa:.0f} | {pb:.0f} | {pb / pa:.2f} | {sa * 1e3:.1f} ms | "
                     f"{sb * 1e3:.1f} ms | {sb / sa:.2f} |")
        series["ism"].append((t, sa * 1e3))
        series["prefix"].append((t, sb * 1e3))
        series["ratio_t"].append((t, sb / sa))
        series["ratio_p"].append((t, pb / pa))
    if args.plot and series["ism"]:
        report.ensure_gnuplot()
        out = os.path.join(HERE, "plots", "train_dialogue.png")
        data = {"ism": series["ism"], "prefix": series["prefix"], "rt": series["ratio_t"], "rp": series["ratio_p"]}
        script = (
            "set terminal pngcairo size 1300,560 font 'sans,11'\n"
            f"set output {report.gp_str(out)}\n"
            "set multiplot layout 1,2 title 'Training on a T-round dialogue: forward + backward attention for every answer token'\n"
            "set xlabel 'rounds T'\nset xtics 1,1,16\nset logscale y\nset ylabel 'time per dialogue (ms)'\n"
            f"set title 'time (fp32, H=4, D=64, {args.dialogue_threads} thread(s))'\n"
            "plot 'ism.dat' using 1:2 with linespoints lw 2 title 'ISM, one pass', "
            "'prefix.dat' using 1:2 with linespoints lw 2 title 'prefix-LM, T samples'\n"
            "unset logscale y\nset ylabel 'prefix-LM / ISM'\nset title 'ratio'\n"
            "plot 'rt.dat' using 1:2 with linespoints lw 2 title 'time', "
            "'rp.dat' using 1:2 with linespoints lw 2 dashtype 2 title 'visible pairs'\n"
            "unset multiplot\n")
        report.gnuplot(script, data, tmp)
        lines.append(f"\nPlot: bench/plots/train_dialogue.png")
    lines.append(f"\nMean time per dialogue (--benchmark_min_time={args.dialogue_min_time} s: small T repeat, large T "
                 f"run once), {args.dialogue_threads} thread(s); "
                 f"load average {os.getloadavg()[0]:.2f} at the end.")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default="build", help="build directory holding bench/backward_bench")
    p.add_argument("--python", help="a Python with torch, for PyTorch's side (e.g. a venv outside the repo)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (part 1)")
    p.add_argument("--min-time", default="0.01", help="--benchmark_min_time per case and round")
    p.add_argument("--openblas-coretype", default="SkylakeX",
                   help="OPENBLAS_CORETYPE for the SGEMM ceiling (Debian's OpenBLAS picks Haswell kernels otherwise)")
    p.add_argument("--skip-acceptance", action="store_true")
    p.add_argument("--dialogue", action="store_true", help="part 2: the T-round dialogue table and plot")
    p.add_argument("--dialogue-threads", type=int, default=2)
    p.add_argument("--dialogue-min-time", default="0.5", help="--benchmark_min_time of the dialogue cases")
    p.add_argument("--no-plot", dest="plot", action="store_false")
    p.add_argument("--out", help="also write the markdown here")
    args = p.parse_args()
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_acceptance:
            parts.append("## Forward + backward (issue 15), fp32, H=8, D=128\n\n" + acceptance(args, tmp))
        if args.dialogue:
            parts.append("## Training on a T-round dialogue: ISM once vs the prefix-LM's T samples\n\n"
                         + dialogue(args, tmp))
    text = "\n\n".join(parts) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
