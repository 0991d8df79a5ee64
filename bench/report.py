#!/usr/bin/env python3
"""Runs the standard benchmark subset and renders bench/RESULTS.md with plots.

One command, from the repository root:

    python3 bench/report.py

It configures a Release build in build-bench (benchmarks -O3 -march=native),
builds the benchmark binaries, runs a fixed subset of cases (a few minutes on
2 cores) with --benchmark_repetitions and --benchmark_out=json, and writes
bench/RESULTS.md and bench/plots/*.png (gnuplot, installed with apt-get when
missing). Options:

    --build DIR      build directory (default build-bench)
    --json-dir DIR   keep the raw JSON here (default DIR/report-json)
    --render-only    skip building and running; render from existing JSON
    --quick          one repetition and shorter case lists (a smoke run)
    --rev REV        measure the committed tree REV (git archive into
                     BUILD/src) instead of the working tree, so the report
                     names exactly the code it measured
    --torch-python PY  a Python with torch for the PyTorch column of the
                     kernel acceptance (bench/torch_sdpa.py; default: this
                     interpreter; skipped with a message when torch is absent)

The kernel's acceptance binary (bench/kernel_bench) runs once per instruction
set the machine has: the -march=native build, and on an AVX-512 machine also
an AVX2 build (BUILD-avx2: -march=x86-64-v3 -DISM_SIMD=avx2), each against
OpenBLAS's kernels for the same instruction set (OPENBLAS_CORETYPE=SkylakeX
and Haswell).

Python 3 standard library only.
"""
import argparse
import collections
import datetime
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
PLOTS = os.path.join(BENCH, "plots")

# ---------------------------------------------------------------------------
# The standard subset. Each run: (tag, binary, filter, repetitions, min_time,
# extra environment). Filters are Google Benchmark regexes over case names.

def standard_runs(quick):
    """About 6 minutes on 2 idle cores; a loaded machine stretches it."""
    reps = 1 if quick else 3
    ns = "512|1024" if quick else "512|1024|2048|4096"
    caches = "1024|4096" if quick else "1024|4096|16384|65536"
    mask_ns = "1024" if quick else "1024|4096"
    rounds = "1|2|4" if quick else "[0-9]+"
    runs = [
        # The fused kernel on every mask at 1 and 2 threads, and the unfused
        # Eigen path on three masks at 1 thread; fp32, dim 128.
        ("prefill", "prefill_bench",
         rf"^prefill/ism/[a-z0-9]+/fp32/N:({ns})/dim:128/|^prefill/eigen/(none|causal|ism16)/fp32/N:({ns})/dim:128/threads:1/",
         reps, 0.1, {}),
        # Element types and the smaller head dim at one length.
        ("prefill-types", "prefill_bench",
         r"^prefill/ism/(none|causal|prefix|ism16)/(bf16|fp16)/N:2048/dim:128/"
         r"|^prefill/ism/(none|causal|prefix|ism16)/fp32/N:2048/dim:64/", reps, 0.1, {}),
        # SGEMM ceilings with each library's default kernels ...
        ("sgemm", "prefill_bench",
         rf"^sgemm/|^prefill/sgemm-(eigen|openblas)/any/fp32/N:({ns})/dim:128/", reps, 0.1, {}),
        # ... and OpenBLAS told to use its AVX-512 kernels.
        ("sgemm-skylakex", "prefill_bench",
         rf"^sgemm/openblas/|^prefill/sgemm-openblas/any/fp32/N:({ns})/dim:128/", reps, 0.1,
         {"OPENBLAS_CORETYPE": "SkylakeX"}),
        ("decode", "decode_bench",
         rf"^decode/ism/[a-z0-9]+/rows:(1|8)/cache:({caches})/|^decode/eigen/fp32/rows:(1|8)/cache:({caches})/threads:1/"
         r"|^membw/", reps, 0.1, {}),
        ("mask", "mask_bench",
         rf"^mask/(build-ism|build-segments|build-packed|blockmap)/|^mask/(dense|attention)/N:({mask_ns})/",
         reps, 0.1, {}),
        ("dialogue", "dialogue_bench", rf"^dialogue/[a-z]+/round:({rounds})/threads:2/", 1 if quick else 2, 0.01,
         {}),
    ]
    if not quick:
        # One long length for the latency plot, one repetition (seconds each).
        runs.insert(1, ("prefill-long", "prefill_bench", r"^prefill/ism/[a-z0-9]+/fp32/N:8192/dim:128/threads:1/", 1,
                        0.1, {}))
    return runs


# ---------------------------------------------------------------------------
# Running


def sh(cmd, **kw):
    print("+", " ".join(shlex.quote(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def load_average():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def snapshot(rev, build):
    """A clean copy of the committed tree at rev, for measuring exactly it."""
    src = os.path.join(build, "src")
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
    return src


def configure_and_build(build, source, extra=(), targets=()):
    # A build tree remembers its source; switching between the working tree and
    # a snapshot needs a fresh configure.
    cache = os.path.join(build, "CMakeCache.txt")
    if os.path.exists(cache):
        m = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.+)$", open(cache).read(), re.M)
        if m and os.path.realpath(m.group(1)) != os.path.realpath(source):
            os.remove(cache)
            shutil.rmtree(os.path.join(build, "CMakeFiles"), ignore_errors=True)
    sh(["cmake", "-S", source, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        "-DISM_BUILD_BENCHMARKS=ON", "-DISM_BUILD_TESTS=OFF", "-DISM_BUILD_EXAMPLES=OFF",
        "-DISM_BENCH_NATIVE=ON", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON", *extra])
    sh(["cmake", "--build", build, "-j", "2", *(["--target", *targets] if targets else [])])


def run_binary(build, json_dir, tag, binary, flt, reps, min_time, env):
    exe = os.path.join(build, "bench", binary)
    out = os.path.join(json_dir, tag + ".json")
    cmd = [exe, f"--benchmark_filter={flt}", f"--benchmark_min_time={min_time}",
           f"--benchmark_repetitions={reps}", f"--benchmark_out={out}", "--benchmark_out_format=json"]
    if reps > 1:
        # Repetitions of all cases run in random order, so a slow spell of a
        # shared machine lands on every case alike instead of on whichever
        # case was running: the ratios between cases are what we report.
        cmd += ["--benchmark_report_aggregates_only=true", "--benchmark_enable_random_interleaving=true"]
    full_env = dict(os.environ, **env)
    prefix = " ".join(f"{k}={v}" for k, v in env.items())
    print(f"== {tag}: {prefix} {binary}", flush=True)
    sh(cmd, env=full_env)
    return out


def ensure_gnuplot():
    if shutil.which("gnuplot"):
        return
    apt = ["apt-get", "install", "-y", "gnuplot-nox"]
    if os.geteuid() != 0:
        apt = ["sudo"] + apt
    sh(apt)


# ---------------------------------------------------------------------------
# Results


def parse_name(name):
    """'prefill/ism/causal/fp32/N:512/dim:64/threads:1/real_time' ->
    (['prefill', 'ism', 'causal', 'fp32'], {'N': 512, 'dim': 64, 'threads': 1})"""
    pos, kv = [], {}
    for part in name.split("/"):
        if part == "real_time":
            continue
        if ":" in part:
            k, v = part.split(":", 1)
            kv[k] = int(v) if re.fullmatch(r"-?\d+", v) else v
        else:
            pos.append(part)
    return pos, kv


UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


class Results:
    """Median of the repetitions per (case, label); cv kept for the noise column."""

    def __init__(self):
        self.cases = {}  # (name, label) -> dict(time_s, cv, counters..., pos, kv)
        self.contexts = []

    def load(self, path):
        with open(path) as f:
            doc = json.load(f)
        self.contexts.append(doc.get("context", {}))
        cv = {}
        for r in doc["benchmarks"]:
            name = r.get("run_name", r["name"])
            key = (name, r.get("label", ""))
            if r.get("error_occurred"):
                raise SystemExit(f"{path}: {name}: {r.get('error_message')}")
            agg = r.get("aggregate_name")
            if agg == "cv":
                cv[key] = r["real_time"]  # a ratio, unitless
                continue
            if r.get("run_type") == "aggregate" and agg != "median":
                continue
            entry = {k: v for k, v in r.items() if isinstance(v, (int, float))}
            entry["time_s"] = r["real_time"] * UNIT[r.get("time_unit", "ns")]
            entry["pos"], entry["kv"] = parse_name(name)
            entry["label"] = r.get("label", "")
            self.cases[key] = entry
        for key, v in cv.items():
            if key in self.cases:
                self.cases[key]["cv"] = v

    def find(self, prefix_pos, label=None, **kv):
        out = []
        for (name, lab), e in self.cases.items():
            if e["pos"][: len(prefix_pos)] != list(prefix_pos):
                continue
            if label is not None and not lab.startswith(label):
                continue
            if all(e["kv"].get(k) == v for k, v in kv.items()):
                out.append(e)
        return out

    def one(self, prefix_pos, label=None, **kv):
        found = self.find(prefix_pos, label, **kv)
        return found[0] if found else None


def fmt_time(s):
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def fmt(x, digits=1, suffix=""):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}{suffix}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines) + "\n"


def gflops(e):
    return e["flops"] / 1e9 if e and "flops" in e else None


def ratio(a, b):
    return a / b if a is not None and b else None


# ---------------------------------------------------------------------------
# Machine description


def cmd_output(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine(build, meta):
    info = {}
    lscpu = cmd_output(["lscpu"])
    m = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
    info["cpu"] = m.group(1).strip() if m else "unknown"
    flags = re.search(r"^Flags:\s*(.+)$", lscpu, re.M)
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_tile"]
    have = set(flags.group(1).split()) if flags else set()
    info["isa"] = " ".join(f for f in wanted if f in have) or "unknown"
    info["cores"] = os.cpu_count()
    cache = os.path.join(build, "CMakeCache.txt")
    cxx = "c++"
    if os.path.exists(cache):
        m = re.search(r"^CMAKE_CXX_COMPILER:\w+=(.+)$", open(cache).read(), re.M)
        if m:
            cxx = m.group(1)
    info["compiler"] = cmd_output([cxx, "--version"]).splitlines()[0] if cmd_output([cxx, "--version"]) else cxx
    info["flags"] = "unknown"
    cc = os.path.join(build, "compile_commands.json")
    if os.path.exists(cc):
        for c in json.load(open(cc)):
            if c["file"].endswith("bench/prefill_bench.cpp"):
                parts = shlex.split(c["command"])
                keep = [p for p in parts[1:] if p.startswith(("-O", "-march", "-std", "-f", "-D", "-W"))]
                info["flags"] = " ".join(keep)
    if meta.get("rev"):
        info["commit"] = meta["rev"] + " (a clean snapshot of that commit)"
    else:
        info["commit"] = meta.get("tree", "unknown")
    return info


# ---------------------------------------------------------------------------
# Plots (gnuplot, PNG)


def gnuplot(script, data, tmp):
    """data: {name: [(x, y), ...]} written to tmp/name.dat; script refers to them."""
    for name, pts in data.items():
        with open(os.path.join(tmp, name + ".dat"), "w") as f:
            for x, y in pts:
                f.write(f"{x} {y}\n")
    path = os.path.join(tmp, "plot.gp")
    with open(path, "w") as f:
        f.write("set terminal pngcairo size 900,560 font 'sans,11'\nset grid\nset key below maxrows 4\n")
        f.write(script)
    subprocess.run(["gnuplot", path], check=True, cwd=tmp)


def gp_str(s):
    """A gnuplot single-quoted string (a quote inside is written twice)."""
    return "'" + s.replace("'", "''") + "'"


def plot_series(tmp, out, title, xlabel, ylabel, series, logx=True, logy=False, hlines=()):
    """series: [(legend, [(x, y)], style)]"""
    data, plots = {}, []
    for i, (legend, pts, style) in enumerate(series):
        pts = [(x, y) for x, y in pts if y is not None]
        if not pts:
            continue
        data[f"s{i}"] = pts
        plots.append(f"'s{i}.dat' using 1:2 with linespoints {style} title {gp_str(legend)}")
    for i, (legend, y) in enumerate(hlines):
        if y is not None:
            plots.append(f"{y} with lines dashtype 2 lw 2 title {gp_str(legend)}")
    if not plots:
        return False
    script = (f"set output {gp_str(out)}\nset title {gp_str(title)}\nset xlabel {gp_str(xlabel)}\n"
              f"set ylabel {gp_str(ylabel)}\n")
    if logx:
        script += "set logscale x 2\n"
    else:
        script += "set xtics 1\n"
    if logy:
        script += "set logscale y\n"
    script += "plot " + ", \\\n  ".join(plots) + "\n"
    gnuplot(script, data, tmp)
    return True


# ---------------------------------------------------------------------------
# The report

MASKS = ["none", "causal", "prefix", "ism4", "ism16", "ism64"]
MASK_TITLE = {"none": "none", "causal": "causal", "prefix": "prefix-LM P=N/2", "ism4": "ISM 4 seg",
              "ism16": "ISM 16 seg", "ism64": "ISM 64 seg"}


def sgemm_square(res, threads):
    """Best square SGEMM rate (GFLOP/s) per backend label at a thread count."""
    out = {}
    for e in res.find(["sgemm"], threads=threads):
        out[e["label"]] = gflops(e)
    return out


def ceiling(res, threads):
    """The machine's SGEMM rate: the fastest backend on the square GEMM."""
    rates = sgemm_square(res, threads)
    if not rates:
        return None, None
    label = max(rates, key=rates.get)
    return rates[label], label


def acceptance(lookup, peak, peak_label):
    """Issue 3's speed criteria (fp32, H=8, D=128, ISM 16 segments).
    lookup(impl, mask, n, threads) -> the case's result entry or None."""
    rows = []
    for n in (2048, 4096):
        def t(impl, mask, threads=1):
            e = lookup(impl, mask, n, threads)
            return e["time_s"] if e else None

        frac = ratio(gflops(lookup("ism", "ism16", n, 1)), peak)
        speedup = ratio(t("eigen", "ism16"), t("ism", "ism16"))
        ism_causal = ratio(t("ism", "ism16"), t("ism", "causal"))
        causal_none = ratio(t("ism", "causal"), t("ism", "none"))
        scaling = ratio(t("ism", "ism16", 1), t("ism", "ism16", 2))

        def ok(x, good):
            return "-" if x is None else ("yes" if good(x) else "**no**")

        rows += [
            [n, f"useful GFLOP/s / SGEMM ({peak_label}, {fmt(peak, 0)} GFLOP/s), 1 thread", fmt(frac, 2), ">= 0.60",
             ok(frac, lambda x: x >= 0.6)],
            [n, "unfused Eigen time / fused time, 1 thread", fmt(speedup, 2, "x"), ">= 3x",
             ok(speedup, lambda x: x >= 3)],
            [n, "ISM 16 time / causal time, 1 thread", fmt(ism_causal, 2), "<= 1.10",
             ok(ism_causal, lambda x: x <= 1.10)],
            [n, "causal time / none time, 1 thread", fmt(causal_none, 2), "<= 0.60",
             ok(causal_none, lambda x: x <= 0.60)],
            [n, "ISM 16: 1-thread time / 2-thread time", fmt(scaling, 2, "x"), ">= 1.8x",
             ok(scaling, lambda x: x >= 1.8)],
        ]
    return table(["N", "criterion (fp32, H=8, D=128)", "measured", "target", "met"], rows)


def machine_scaling(res):
    """What two threads bought the machine's own SGEMM in this run: the yardstick
    for the kernel's 2-thread criterion."""
    one, two = sgemm_square(res, 1), sgemm_square(res, 2)
    parts = [f"{label} {fmt(one[label], 0)} -> {fmt(two[label], 0)} GFLOP/s ({fmt(ratio(two[label], one[label]), 2)}x)"
             for label in sorted(one) if label in two]
    if not parts:
        return ""
    text = "Two threads on this machine in this run, square 2048 SGEMM, 1 -> 2 threads: " + "; ".join(parts) + "."
    best = max(ratio(two[label], one[label]) or 0 for label in one if label in two)
    if best < 1.5:
        text += (" The SGEMM libraries themselves did not get two cores' worth of compute (a 2-vCPU VM shared with "
                 "other jobs), so this run cannot judge the kernel's 2-thread criterion.")
    return text + "\n"


def acceptance_from_prefill(res):
    peak, label = ceiling(res, 1)
    return acceptance(lambda impl, mask, n, threads: res.one(["prefill", impl, mask, "fp32"], N=n, dim=128,
                                                             threads=threads), peak, label)


def acceptance_from_kernel_bench(res_kernel):
    rates = {e["label"] or e["pos"][2]: gflops(e) for e in res_kernel.find(["kernel", "sgemm"], threads=1)}
    label = max(rates, key=rates.get) if rates else None
    return acceptance(lambda impl, mask, n, threads: res_kernel.one(["kernel", impl, mask, "fp32"], D=128, N=n,
                                                                    threads=threads),
                      rates.get(label), f"{label}, square 2048" if label else "none")


def prefill_section(res, tmp, plots):
    md = []
    ns = sorted({e["kv"]["N"] for e in res.find(["prefill", "ism"], dim=128) if e["pos"][3] == "fp32"})
    for threads in (1, 2):
        peak, peak_label = ceiling(res, threads)
        rows = []
        for mask in MASKS:
            row = [MASK_TITLE[mask]]
            for n in ns:
                e = res.one(["prefill", "ism", mask, "fp32"], N=n, dim=128, threads=threads)
                g = gflops(e)
                row.append(f"{fmt_time(e['time_s'])} / {fmt(g, 0)} / {fmt(ratio(g, peak), 2)}" if e else "-")
            rows.append(row)
        for mask in ("none", "causal", "ism16"):
            row = [f"Eigen unfused, {MASK_TITLE[mask]}"]
            for n in ns:
                e = res.one(["prefill", "eigen", mask, "fp32"], N=n, dim=128, threads=threads)
                row.append(f"{fmt_time(e['time_s'])} / {fmt(gflops(e), 0)}" if e else "-")
            rows.append(row)
        for backend in ("eigen", "openblas"):
            for e_label in sorted({e["label"] for e in res.find(["prefill", f"sgemm-{backend}"], threads=threads)}):
                row = [f"attention GEMM pair, {e_label}"]
                for n in ns:
                    e = res.one(["prefill", f"sgemm-{backend}"], label=e_label, N=n, dim=128, threads=threads)
                    row.append(f"{fmt_time(e['time_s'])} / {fmt(gflops(e), 0)}" if e else "-")
                rows.append(row)
        md.append(f"\n**{threads} thread{'s' if threads > 1 else ''}** — cells: time / useful GFLOP/s / fraction "
                  f"of the square SGEMM rate ({peak_label}, {fmt(peak, 0)} GFLOP/s)\n\n")
        md.append(table(["mask \\ N"] + [str(n) for n in ns], rows))

    # Skipped tiles and density do not depend on the machine: one small table.
    rows = []
    for mask in MASKS:
        e = res.one(["prefill", "ism", mask, "fp32"], N=4096, dim=128, threads=1) or res.one(
            ["prefill", "ism", mask, "fp32"], dim=128, threads=1)
        if e:
            rows.append([MASK_TITLE[mask], e["kv"]["N"], fmt(e.get("density"), 3), fmt(e.get("skipped"), 3)])
    md.append("\nMask density and the fraction of 64x64 tiles that are Empty (never visited):\n\n")
    md.append(table(["mask", "N", "visible pairs / N^2", "Empty tiles"], rows))

    series = []
    for mask in MASKS:
        pts = [(e["kv"]["N"], e["time_s"] * 1e3) for e in res.find(["prefill", "ism", mask, "fp32"], dim=128, threads=1)]
        series.append((f"fused, {MASK_TITLE[mask]}", sorted(pts), ""))
    for mask in ("none", "ism16"):
        pts = [(e["kv"]["N"], e["time_s"] * 1e3) for e in res.find(["prefill", "eigen", mask, "fp32"], dim=128, threads=1)]
        series.append((f"Eigen unfused, {MASK_TITLE[mask]}", sorted(pts), "dashtype 3"))
    if plot_series(tmp, os.path.join(PLOTS, "prefill_latency.png"), "Prefill latency, fp32, H=8, D=128, 1 thread",
                   "N (tokens)", "time (ms)", series, logy=True):
        plots.append(("prefill_latency.png", "Prefill latency against N per mask kind (1 thread, log-log)"))

    series = []
    for threads in (1, 2):
        peak, _ = ceiling(res, threads)
        for mask in ("none", "causal", "ism16"):
            pts = [(e["kv"]["N"], ratio(gflops(e), peak))
                   for e in res.find(["prefill", "ism", mask, "fp32"], dim=128, threads=threads)]
            series.append((f"{MASK_TITLE[mask]}, {threads}T", sorted(pts), "" if threads == 1 else "dashtype 2"))
    if plot_series(tmp, os.path.join(PLOTS, "prefill_sgemm_fraction.png"),
                   "Useful GFLOP/s as a fraction of the square SGEMM rate", "N (tokens)", "fraction of SGEMM",
                   series, hlines=[("issue-3 target 0.6", 0.6)]):
        plots.append(("prefill_sgemm_fraction.png", "Useful GFLOP/s of the fused kernel as a fraction of SGEMM"))
    return "".join(md)


def types_section(res):
    rows = []
    for mask in ("none", "causal", "prefix", "ism16"):
        row = [MASK_TITLE[mask]]
        for typ, dim in (("fp32", 128), ("bf16", 128), ("fp16", 128), ("fp32", 64)):
            cells = []
            for threads in (1, 2):
                e = res.one(["prefill", "ism", mask, typ], N=2048, dim=dim, threads=threads)
                cells.append(f"{fmt_time(e['time_s'])} ({fmt(gflops(e), 0)})" if e else "-")
            row.append(" / ".join(cells))
        rows.append(row)
    return table(["mask", "fp32 D=128", "bf16 D=128", "fp16 D=128", "fp32 D=64"], rows)


def bandwidth(res, threads):
    """Streaming read bandwidth (GB/s) at the largest buffer measured."""
    found = sorted(res.find(["membw", "read"], threads=threads), key=lambda e: e["kv"]["bytes"])
    return (found[-1]["bytes_per_second"] / 1e9, found[-1]["kv"]["bytes"]) if found else (None, None)


def decode_section(res, tmp, plots):
    md = []
    rows = []
    for e in sorted(res.find(["membw", "read"]), key=lambda e: (e["kv"]["threads"], e["kv"]["bytes"])):
        rows.append([f"{e['kv']['bytes'] >> 20} MiB", e["kv"]["threads"], fmt(e["bytes_per_second"] / 1e9, 1)])
    md.append("Streaming read bandwidth (the decode floor once the cache outgrows the last-level cache):\n\n")
    md.append(table(["buffer", "threads", "GB/s"], rows))
    caches = sorted({e["kv"]["cache"] for e in res.find(["decode"])})
    rows = []
    for impl, typ in (("ism", "fp32"), ("ism", "bf16"), ("eigen", "fp32")):
        for r in (1, 8):
            for threads in (1, 2):
                row = [f"{'fused' if impl == 'ism' else 'Eigen unfused'} {typ}", r, threads]
                any_found = False
                for c in caches:
                    e = res.one(["decode", impl, typ], rows=r, cache=c, threads=threads)
                    any_found |= e is not None
                    row.append(f"{fmt_time(e['time_s'])} / {fmt(e['bytes_per_second'] / 1e9, 1)}" if e else "-")
                if any_found:
                    rows.append(row)
    md.append("\nDecode, GQA 32 query / 8 KV heads, D=128; cells: time per step / GB/s of K+V read:\n\n")
    md.append(table(["impl", "rows", "threads"] + [f"{c // 1024}k" for c in caches], rows))

    series = []
    for typ in ("fp32", "bf16"):
        for r in (1, 8):
            for threads in (1, 2):
                pts = [(e["kv"]["cache"], e["bytes_per_second"] / 1e9)
                       for e in res.find(["decode", "ism", typ], rows=r, threads=threads)]
                series.append((f"{typ}, {r} row{'s' if r > 1 else ''}, {threads}T", sorted(pts),
                               "" if threads == 1 else "dashtype 2"))
    bw1, _ = bandwidth(res, 1)
    bw2, _ = bandwidth(res, 2)
    if plot_series(tmp, os.path.join(PLOTS, "decode_bandwidth.png"),
                   "Decode: K+V bytes read per second vs the machine's read bandwidth", "cache (tokens)", "GB/s",
                   series, hlines=[("read bandwidth 1T", bw1), ("read bandwidth 2T", bw2)]):
        plots.append(("decode_bandwidth.png", "Decode K+V read rate against the streaming read bandwidth"))
    return "".join(md)


def mask_section(res):
    rows = []
    for n in sorted({e["kv"]["N"] for e in res.find(["mask"])}):
        for s in sorted({e["kv"]["segments"] for e in res.find(["mask"], N=n)}):
            def t(what):
                e = res.one(["mask", what], N=n, segments=s)
                return e["time_s"] if e else None

            att = t("attention")
            build = t("build-ism")
            bm = t("blockmap")
            share = ratio((build or 0) + (bm or 0), att) if att and build is not None and bm is not None else None
            rows.append([n, s, fmt_time(build), fmt_time(t("build-segments")), fmt_time(t("build-packed")),
                         fmt_time(bm), fmt_time(t("dense")), fmt_time(att),
                         "-" if share is None else f"{share * 100:.3f}%"])
    return table(["N", "segments", "ism_mask", "segment_mask", "packed_mask", "BlockMap 64x64", "dense_mask<float>",
                  "attention (fp32, H=4, D=128, 1T)", "(build + BlockMap) / attention"], rows)


def dialogue_section(res, tmp, plots):
    rounds = sorted({e["kv"]["round"] for e in res.find(["dialogue"])})
    threads = sorted({e["kv"]["threads"] for e in res.find(["dialogue"])})
    if not rounds:
        return "(no dialogue results)\n"
    th = threads[-1]
    rows = []
    cum = collections.defaultdict(float)
    for r in rounds:
        row = [r]
        for scheme in ("ism", "prefix", "causal"):
            e = res.one(["dialogue", scheme], round=r, threads=th)
            if e:
                cum[scheme] += e["time_s"]
                row.append(f"{fmt_time(e['time_s'])} ({e['prefill_ms']:.1f} + {e['decode_ms']:.1f})")
            else:
                row.append("-")
        i = res.one(["dialogue", "ism"], round=r, threads=th)
        p = res.one(["dialogue", "prefix"], round=r, threads=th)
        c = res.one(["dialogue", "causal"], round=r, threads=th)
        row.append(fmt(ratio(p and p["time_s"], i and i["time_s"]), 2, "x"))
        row.append(fmt(ratio(i and i["time_s"], c and c["time_s"]), 2))
        rows.append(row)
    md = table(["round", "ISM: time (prefill ms + decode ms)", "prefix-LM", "causal", "prefix-LM / ISM",
                "ISM / causal"], rows)
    md += (f"\nWhole {rounds[-1]}-round dialogue (sum of the rounds measured): ISM {fmt_time(cum['ism'])}, "
           f"prefix-LM {fmt_time(cum['prefix'])}, causal {fmt_time(cum['causal'])} ({th} threads).\n")
    series = []
    for scheme, title in (("ism", "ISM (KV cache reused)"), ("prefix", "multi-turn prefix-LM (recompute)"),
                          ("causal", "causal (floor)")):
        pts = [(e["kv"]["round"], e["time_s"] * 1e3) for e in res.find(["dialogue", scheme], threads=th)]
        series.append((title, sorted(pts), ""))
    if plot_series(tmp, os.path.join(PLOTS, "dialogue_rounds.png"),
                   f"Per-round attention latency of a dialogue ({th} threads)", "round", "latency (ms)", series,
                   logx=False, logy=True):
        plots.append(("dialogue_rounds.png", "Per-round latency: ISM vs multi-turn prefix-LM vs causal"))
    return md


# ---------------------------------------------------------------------------
# Kernel acceptance (issue 11): bench/kernel_bench per instruction set, with
# PyTorch's SDPA (bench/torch_sdpa.py) beside it.

KERNEL_ISAS = ("avx512", "avx2")
BLAS_CORE = {"avx512": "SkylakeX", "avx2": "Haswell"}
TORCH_WANT = {"none": 1.0, "causal": 1.1, "ism16": 1.5}


def cpu_has_avx512():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return all(f in flags.split() for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq"))


def kernel_builds(build):
    """(isa, build dir, extra cmake args) of each kernel_bench build: the
    native build, plus an AVX2 build where the native one is AVX-512."""
    out = [("native", build, [])]
    if cpu_has_avx512():
        out.append(("avx2", build + "-avx2",
                    ["-DISM_BENCH_NATIVE=OFF", "-DCMAKE_CXX_FLAGS=-march=x86-64-v3 -DISM_SIMD=avx2"]))
    return out


def kernel_isa(res_kernel):
    e = res_kernel.one(["kernel", "peak", "fma"])
    return e["label"] if e else "unknown"


def run_torch(python, json_dir):
    """bench/torch_sdpa.py for the kernel acceptance shapes; returns the JSON
    path, or None (with the reason printed) when torch is not importable."""
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"== torch: {python} cannot import torch: the PyTorch column is skipped", flush=True)
        return None
    out = os.path.join(json_dir, "torch.json")
    sh([python, os.path.join(BENCH, "torch_sdpa.py"), "--mode", "prefill", "--n", "2048", "4096",
        "--dim", "128", "64", "--threads", "1", "2", "--masks", "none", "causal", "ism16", "--json", out])
    return out


def load_torch(json_dir):
    path = os.path.join(json_dir, "torch.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def torch_ms(torch, mask, dim, n, threads):
    for t in torch:
        if t.get("mask") == mask and t.get("dim") == dim and t.get("n") == n and t.get("threads") == threads \
                and t.get("dtype") == "fp32":
            return t["median_ms"]
    return None


def kernel_acceptance(res_kernel, torch):
    """Issue 11's criteria for one instruction set's kernel_bench run."""
    def case(mask, typ, dim, n, threads):
        return res_kernel.one(["kernel", "ism", mask, typ], D=dim, N=n, threads=threads)

    def t(*a):
        e = case(*a)
        return e["time_s"] if e else None

    sgemm = {}
    for threads in (1, 2):
        rates = {e["label"]: gflops(e) for e in res_kernel.find(["kernel", "sgemm"], threads=threads)}
        if rates:
            best = max(rates, key=rates.get)
            sgemm[threads] = (rates[best], best)
    peak = res_kernel.one(["kernel", "peak", "fma"])
    isa = kernel_isa(res_kernel)
    md = [f"FMA peak of the {isa} path, one core: {fmt(gflops(peak), 1)} GFLOP/s. SGEMM (square 2048): " +
          ", ".join(f"{th} thread{'s' if th > 1 else ''} {fmt(r, 1)} GFLOP/s ({lab})"
                    for th, (r, lab) in sorted(sgemm.items())) + ".\n\n"]

    def ok(x, good):
        return "-" if x is None else ("yes" if good(x) else "**no**")

    rows = []
    for dim in (128, 64):
        for n in (2048, 4096):
            for mask in ("none", "causal", "ism16"):
                for threads in (1, 2):
                    e = case(mask, "fp32", dim, n, threads)
                    if not e:
                        continue
                    frac = ratio(gflops(e), sgemm.get(threads, (None,))[0])
                    tm = torch_ms(torch, mask, dim, n, threads)
                    vs = ratio(tm and tm / 1e3, e["time_s"])
                    rows.append([dim, n, mask, threads, fmt_time(e["time_s"]), fmt(gflops(e), 1),
                                 f"{fmt(frac, 2)} {ok(frac, lambda x: x >= 0.8)}",
                                 fmt_time(tm / 1e3) if tm else "-",
                                 f"{fmt(vs, 2, 'x')} {ok(vs, lambda x, w=TORCH_WANT[mask]: x >= w)}" if vs else "-"])
    md.append(table(["D", "N", "mask", "threads", "time", "useful GFLOP/s", "/ SGEMM (>= 0.8)", "PyTorch SDPA",
                     "PyTorch / ism (none >= 1, causal >= 1.1, ism16 >= 1.5)"], rows))
    rows = []
    for dim in (128, 64):
        for n in (2048, 4096):
            none, causal, ism = (t(m, "fp32", dim, n, 1) for m in ("none", "causal", "ism16"))
            if none is None and causal is None and ism is None:
                continue
            cn, ic = ratio(causal, none), ratio(ism, causal)
            scal = [ratio(t(m, "fp32", dim, n, 1), t(m, "fp32", dim, n, 2)) for m in ("none", "causal", "ism16")]
            types = []
            for typ in ("bf16", "fp16"):
                r = [ratio(t(m, typ, dim, n, 1), t(m, "fp32", dim, n, 1)) for m in ("none", "causal", "ism16")]
                types.append(" / ".join(f"{fmt(x, 2)}" for x in r) + " " +
                             ok(max((x for x in r if x is not None), default=None), lambda x: x <= 1.10))
            rows.append([dim, n, f"{fmt(cn, 3)} {ok(cn, lambda x: x <= 0.55)}", f"{fmt(ic, 3)} {ok(ic, lambda x: x <= 1.05)}",
                         " / ".join(fmt(x, 2) for x in scal) + " " +
                         ok(min((x for x in scal if x is not None), default=None), lambda x: x >= 1.8)] + types)
    md.append("\nRatios of times, 1 thread unless said (masks none / causal / ism16 where three):\n\n")
    md.append(table(["D", "N", "causal / none (<= 0.55)", "ism16 / causal (<= 1.05)", "1T / 2T (>= 1.8)",
                     "bf16 / fp32 (<= 1.10)", "fp16 / fp32 (<= 1.10)"], rows))
    return "".join(md)


def kernel_section(res_kernel):
    if res_kernel is None:
        return "bench/kernel_bench was not built when this report ran.\n"
    rows = []
    for (name, label), e in sorted(res_kernel.cases.items()):
        shown = name.replace("/real_time", "") + (f" ({label})" if label else "")
        rows.append([shown, fmt_time(e["time_s"]),
                     fmt(e.get("cv") and e["cv"] * 100, 1, "%"), fmt(gflops(e), 1), fmt(e.get("skipped"), 3)])
    return (acceptance_from_kernel_bench(res_kernel) + "\nIts cases (medians):\n\n" +
            table(["case", "time", "cv", "useful GFLOP/s", "Empty tiles"], rows))


def headlines(res):
    """The few numbers a reader wants first, computed from this run."""
    out = []
    peak, label = ceiling(res, 1)
    for n in (4096, 2048):
        ism = res.one(["prefill", "ism", "ism16", "fp32"], N=n, dim=128, threads=1)
        eig = res.one(["prefill", "eigen", "ism16", "fp32"], N=n, dim=128, threads=1)
        causal = res.one(["prefill", "ism", "causal", "fp32"], N=n, dim=128, threads=1)
        none = res.one(["prefill", "ism", "none", "fp32"], N=n, dim=128, threads=1)
        if not ism:
            continue
        line = (f"- Prefill, ISM with 16 segments, N={n}, fp32, H=8, D=128, 1 thread: {fmt_time(ism['time_s'])}, "
                f"{fmt(gflops(ism), 0)} useful GFLOP/s = {fmt(ratio(gflops(ism), peak), 2)} of SGEMM ({label})")
        if eig:
            line += f", {fmt(ratio(eig['time_s'], ism['time_s']), 1)}x faster than unfused Eigen"
        if causal and none:
            line += (f"; ISM/causal time {fmt(ratio(ism['time_s'], causal['time_s']), 2)}, "
                     f"causal/none {fmt(ratio(causal['time_s'], none['time_s']), 2)}")
        out.append(line + ".")
        break
    rounds = sorted({e["kv"]["round"] for e in res.find(["dialogue"])})
    if rounds:
        r = rounds[-1]
        th = max(e["kv"]["threads"] for e in res.find(["dialogue"]))
        i, p, c = (res.one(["dialogue", s], round=r, threads=th) for s in ("ism", "prefix", "causal"))
        if i and p and c:
            out.append(f"- Dialogue round {r} (attention only, {th} threads): ISM {fmt_time(i['time_s'])}, causal "
                       f"{fmt_time(c['time_s'])}, multi-turn prefix-LM {fmt_time(p['time_s'])} "
                       f"({fmt(ratio(p['time_s'], i['time_s']), 1)}x ISM, its prefill alone "
                       f"{p['prefill_ms']:.0f} ms vs {i['prefill_ms']:.0f} ms).")
    d = res.one(["decode", "ism", "bf16"], rows=1, cache=65536, threads=2) or res.one(
        ["decode", "ism", "fp32"], rows=1, cache=65536, threads=2)
    bw, _ = bandwidth(res, 2)
    if d and bw:
        out.append(f"- Decode, 1 row against a 64k-token {d['pos'][2]} cache (GQA 32/8, D=128, 2 threads): "
                   f"{fmt_time(d['time_s'])} per step, {fmt(d['bytes_per_second'] / 1e9, 1)} GB/s of K+V = "
                   f"{fmt(ratio(d['bytes_per_second'] / 1e9, bw), 2)} of the measured read bandwidth "
                   f"({fmt(bw, 1)} GB/s).")
    m = res.one(["mask", "build-ism"], N=4096, segments=64)
    b = res.one(["mask", "blockmap"], N=4096, segments=64)
    a = res.one(["mask", "attention"], N=4096, segments=64)
    if m and b and a:
        out.append(f"- Mask cost, N=4096, 64 segments: building the ISM mask {fmt_time(m['time_s'])} and its "
                   f"block map {fmt_time(b['time_s'])}, {100 * (m['time_s'] + b['time_s']) / a['time_s']:.3f}% "
                   f"of the attention it feeds ({fmt_time(a['time_s'])}).")
    return "\n".join(out) + "\n" if out else ""


def render(build, json_dir, meta):
    res = Results()
    tags = [r[0] for r in standard_runs(meta.get("quick", False))]
    for tag in tags:
        path = os.path.join(json_dir, tag + ".json")
        if os.path.exists(path):
            res.load(path)
    kernels = []  # (tag, Results) of each kernel_bench run, the native build first
    for tag in ("native", "avx2"):
        kpath = os.path.join(json_dir, f"kernel-{tag}.json")
        if os.path.exists(kpath):
            r = Results()
            r.load(kpath)
            kernels.append((tag, r))
    res_kernel = kernels[0][1] if kernels else None
    torch = load_torch(json_dir)

    os.makedirs(PLOTS, exist_ok=True)
    plots = []
    info = machine(build, meta)
    ctx = res.contexts[0] if res.contexts else {}
    with tempfile.TemporaryDirectory() as tmp:
        prefill = prefill_section(res, tmp, plots)
        decode = decode_section(res, tmp, plots)
        dialogue = dialogue_section(res, tmp, plots)
    load_before, load_after = meta.get("load_before"), meta.get("load_after")
    busy = any(x is not None and x[0] > 1.0 for x in (load_before, load_after))
    peak1, label1 = ceiling(res, 1)

    md = [
        "# ism benchmark results\n\n",
        "Regenerate with one command from the repository root (a few minutes on 2 cores; needs the packages of "
        "`scripts/deps.sh` and gnuplot, which it installs when missing):\n\n",
        "```\npython3 bench/report.py\n```\n\n",
        "| | |\n|---|---|\n",
        f"| date | {meta.get('date', 'unknown')} |\n",
        f"| CPU | {info['cpu']}, {info['cores']} cores ({ctx.get('num_cpus', '?')} seen by the benchmark, "
        f"{ctx.get('mhz_per_cpu', '?')} MHz), {info['isa']} |\n",
        f"| compiler | {info['compiler']} |\n",
        f"| flags | `{info['flags']}` |\n",
        f"| commit | {info['commit']} |\n",
        f"| OpenBLAS | {', '.join(sorted({e['label'] for e in res.find(['sgemm', 'openblas'])})) or 'absent'} |\n",
        f"| load average (1 min) | before {fmt(load_before and load_before[0], 2)}, after "
        f"{fmt(load_after and load_after[0], 2)} |\n",
        f"| command | `{meta.get('command', 'python3 bench/report.py')}` |\n\n",
    ]
    if busy:
        md.append("**Note:** the load average shows other work running on this 2-core machine during the run "
                  "(other builds); absolute times are pessimistic and 2-thread numbers suffer most. Ratios within "
                  "one table are more reliable than absolute numbers.\n\n")
    md.append("Times are medians of the repetitions (wall clock), which run in random order across the cases of a binary so that a slow spell of the machine is shared by all of them. Useful GFLOP/s = 4 x dim x visible (query, key) "
              "pairs x heads / time: masked-out pairs count for nothing, so skipping them is the only way to gain "
              "from a mask. Debian's Google Benchmark library prints \"built as DEBUG\"; that concerns the "
              "harness library, not the code measured.\n\n")

    md.append("## Headlines\n\n")
    md.append(headlines(res))
    md.append("\n## Kernel acceptance (issue 11)\n\n")
    md.append("bench/kernel_bench once per instruction set, each against OpenBLAS's kernels for that set; "
              "fp32, H=8 heads, one KV head per query head, q = k = N; times are medians (wall clock). "
              "PyTorch: `torch.nn.functional.scaled_dot_product_attention` on the same shapes "
              f"(bench/torch_sdpa.py; {'torch ' + torch[0].get('torch_version', '?') if torch else 'not run: no torch'}"
              f"{', its ' + torch[0].get('kernel', '?') + ' kernel' if torch else ''}; [1, H, N, D] tensors, ism16 as a "
              "dense boolean mask).\n\n")
    for tag, r in kernels:
        isa = kernel_isa(r)
        md.append(f"### {isa} path ({'-march=native build' if tag == 'native' else 'AVX2 build'}, "
                  f"OPENBLAS_CORETYPE={BLAS_CORE.get(isa, 'default')})\n\n")
        md.append(kernel_acceptance(r, torch))
        md.append("\n")
    if not kernels:
        md.append("bench/kernel_bench was not built when this report ran.\n")
    md.append("\n## Kernel acceptance (issue 3)\n\n")
    md.append("### From bench/kernel_bench (the native build: fp32, D=128)\n\n")
    md.append(kernel_section(res_kernel))
    md.append("\n### Cross-check from the prefill_bench cases of the same shape\n\n")
    md.append(acceptance_from_prefill(res))
    md.append("\nSGEMM rate here: the best square 2048 SGEMM among Eigen and OpenBLAS (default and SkylakeX "
              f"kernels) at 1 thread ({label1}: {fmt(peak1, 0)} GFLOP/s).\n\n")
    md.append(machine_scaling(res))
    md.append("\n## Prefill (fp32, H=8 heads, D=128)\n")
    md.append(prefill)
    md.append("\n## Element types and head dim (N=2048, H=8; cells: time (useful GFLOP/s), 1 thread / 2 threads)\n\n")
    md.append(types_section(res))
    md.append("\n## Decode\n\n")
    md.append(decode)
    md.append("\n## Mask cost next to the attention it feeds\n\n")
    md.append(mask_section(res))
    md.append("\n## Multi-round dialogue (the paper's latency claim, attention only)\n\n")
    md.append("Each round: a 128-token query, then a 64-token answer decoded one token at a time; GQA 32/8 heads, "
              "D=128, fp32. ISM and causal prefill only the new query rows against the KV cache; the multi-turn "
              "prefix-LM must recompute attention over the whole history each round (and, in a model, the "
              "projections too, which this attention-only benchmark does not count).\n\n")
    md.append(dialogue)
    md.append("\n## Plots\n\n")
    for png, caption in plots:
        md.append(f"![{caption}](plots/{png})\n\n*{caption}*\n\n")
    with open(os.path.join(BENCH, "RESULTS.md"), "w") as f:
        f.write("".join(md))
    print(f"wrote {os.path.join(BENCH, 'RESULTS.md')} and {len(plots)} plots in {PLOTS}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"))
    ap.add_argument("--json-dir", default=None)
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rev", default=None)
    ap.add_argument("--torch-python", default=None)
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    json_dir = os.path.abspath(args.json_dir or os.path.join(build, "report-json"))
    os.makedirs(json_dir, exist_ok=True)
    meta_path = os.path.join(json_dir, "meta.json")
    ensure_gnuplot()

    if not args.render_only:
        meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "command": " ".join(["python3 bench/report.py"] + sys.argv[1:]),
                "quick": args.quick}
        if args.rev:
            meta["rev"] = cmd_output(["git", "-C", ROOT, "rev-parse", "--short", args.rev])
            source = snapshot(meta["rev"], build)
        else:
            source = ROOT
            head = cmd_output(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) or "unknown"
            dirty = cmd_output(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"])
            meta["tree"] = head + (" plus uncommitted changes in the working tree" if dirty else "")
        configure_and_build(build, source)
        meta["load_before"] = load_average()
        for f in os.listdir(json_dir):
            if f.endswith(".json"):
                os.remove(os.path.join(json_dir, f))
        for tag, binary, flt, reps, min_time, env in standard_runs(args.quick):
            run_binary(build, json_dir, tag, binary, flt, reps, min_time, env)
        # The kernel's own acceptance set, once per instruction set, each
        # against OpenBLAS's kernels for the same set.
        for tag, kbuild, extra in kernel_builds(build):
            if kbuild != build:
                configure_and_build(kbuild, source, extra, targets=["kernel_bench"])
            if not os.path.exists(os.path.join(kbuild, "bench", "kernel_bench")):
                continue
            isa = tag if tag != "native" else ("avx512" if cpu_has_avx512() else "avx2")
            env = {"OPENBLAS_CORETYPE": BLAS_CORE[isa]} if isa in BLAS_CORE else {}
            run_binary(kbuild, json_dir, f"kernel-{tag}", "kernel_bench", ".", 1 if args.quick else 9, 0.1, env)
        run_torch(args.torch_python or sys.executable, json_dir)
        meta["load_after"] = load_average()
        with open(meta_path, "w") as f:
            json.dump(meta, f)
    with open(meta_path) as f:
        meta = json.load(f)
    render(build, json_dir, meta)


if __name__ == "__main__":
    main()
