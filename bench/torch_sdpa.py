#!/usr/bin/env python3
"""PyTorch's CPU scaled_dot_product_attention, measured as a peer for ism.

This is an optional, standalone comparison: PyTorch is not a dependency of
ism, its build or its CI. Where `import torch` fails the script says so in one
line and exits 0, so it can sit in bench/ without ever failing anything.

It measures the same shapes and masks as the C++ benches (prefill_bench,
kernel_bench, decode_bench) and counts work the same way, so the numbers can
be set side by side:

  useful GFLOP/s = 4 * dim * visible (query, key) pairs * query heads / time

Masked-out pairs count for nothing; a kernel gains from a mask only by
skipping them. Training (forward + backward) counts 3.5x the forward work:
the backward pass does 2.5x the forward's matrix products.

Modes:
  prefill  q, k, v [1, H, N, D]; masks none, causal (is_causal=True, which
           PyTorch's flash kernel uses to skip the upper triangle) and ismS
           (a dense boolean [N, N] mask: S equal segments alternating
           Bidirectional (query) first, then Causal (answer)).
  train    the same, forward + backward through autograd.
  decode   GQA (32 query heads over 8 KV heads, D=128 by default): `rows` new
           query rows that are the tail of a `cache`-token KV cache, causal
           among themselves (as decode_bench).

Output: one JSON object per case on stdout as it finishes, then a table.

Examples (from the repository root, with a Python that has torch):
  python3 bench/torch_sdpa.py --mode prefill --n 2048 --dim 128 --threads 1
  python3 bench/torch_sdpa.py --mode train --masks causal ism16 --json t.json
  python3 bench/torch_sdpa.py --mode decode --cache 4096 65536 --rows 1 8
"""
import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time

DTYPES = ("fp32", "bf16", "fp16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Measure torch.nn.functional.scaled_dot_product_attention on the CPU.")
    p.add_argument("--mode", choices=("prefill", "train", "decode"), default="prefill")
    p.add_argument("--n", type=int, nargs="+", default=[2048, 4096],
                   help="sequence lengths (prefill, train)")
    p.add_argument("--cache", type=int, nargs="+", default=[4096, 16384, 65536],
                   help="KV cache lengths in tokens (decode)")
    p.add_argument("--rows", type=int, nargs="+", default=[1],
                   help="new query rows per decode step (decode)")
    p.add_argument("--dim", type=int, nargs="+", default=None,
                   help="head dimension (default: 128 64; decode: 128)")
    p.add_argument("--heads", type=int, default=None,
                   help="query heads (default: 8; decode: 32)")
    p.add_argument("--kv-heads", type=int, default=None,
                   help="key/value heads (default: = heads; decode: 8)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--masks", nargs="+", default=["none", "causal", "ism16"],
                   help="none | causal | ismS (S segments, boolean mask) | "
                        "ismS-additive (the same as a prebuilt float mask); "
                        "decode always uses its own causal tail mask")
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=None,
                   help="element types (default: fp32; decode: fp32 bf16 fp16)")
    p.add_argument("--reps", type=int, default=9, help="timed repetitions per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before them")
    p.add_argument("--case-budget-s", type=float, default=0.0,
                   help="if > 0, cut a case's repetitions (to no fewer than 3) so that "
                        "they take about this long, judged from the warmup time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the results as a JSON array")
    p.add_argument("--table", metavar="PATH", help="also write the table to this file")
    args = p.parse_args(argv)
    decode = args.mode == "decode"
    if args.dim is None:
        args.dim = [128] if decode else [128, 64]
    if args.heads is None:
        args.heads = 32 if decode else 8
    if args.kv_heads is None:
        args.kv_heads = 8 if decode else args.heads
    if args.dtype is None:
        args.dtype = list(DTYPES) if decode else ["fp32"]
    if args.heads % args.kv_heads:
        p.error("--heads must be a multiple of --kv-heads")
    for m in args.masks:
        if parse_mask(m) is None:
            p.error(f"unknown mask {m!r}")
    if args.reps < 1 or args.warmup < 1:
        p.error("--reps and --warmup must be at least 1")
    return args


def parse_mask(name):
    """('none'|'causal'|'ism', segments, additive) or None when not a mask name."""
    if name in ("none", "causal"):
        return name, 0, False
    m = re.fullmatch(r"ism(\d+)(-additive)?", name)
    if m and int(m.group(1)) > 0:
        return "ism", int(m.group(1)), bool(m.group(2))
    return None


# --- The ISM mask -------------------------------------------------------------
# Segment s covers rows [s*N/S, (s+1)*N/S) (integer division, so N need not be
# a multiple of S); even segments are Bidirectional (query), odd ones Causal
# (answer). Row i sees key j iff j <= i, or both lie in the same Bidirectional
# segment. No row sees a later segment.

def ism_visible_reference(n, segments):
    """The rule written out pair by pair: the check for the tensor version."""
    seg = [i * segments // n for i in range(n)]
    return [[j <= i or (seg[i] == seg[j] and seg[i] % 2 == 0) for j in range(n)]
            for i in range(n)]


def ism_mask(torch, n, segments):
    """Dense boolean [n, n] mask, True where attention is allowed."""
    pos = torch.arange(n)
    seg = pos * segments // n
    causal = pos[None, :] <= pos[:, None]
    same_bidir = (seg[:, None] == seg[None, :]) & (seg[:, None] % 2 == 0)
    return causal | same_bidir


def check_ism_mask(torch):
    # 48 splits evenly into 16 segments, 50 does not, 7 has empty segments.
    for n, s in ((48, 16), (50, 16), (7, 16), (64, 4)):
        if ism_mask(torch, n, s).tolist() != ism_visible_reference(n, s):
            raise AssertionError(f"ism_mask({n}, {s}) disagrees with the reference")


def check_sdpa_masks(torch, F):
    """SDPA with each mask form against an explicit float64 softmax: the
    numbers below mean nothing if the kernel does not honour the mask."""
    g = torch.Generator().manual_seed(1)
    n, d, h = 80, 32, 2
    q, k, v = (torch.randn(1, h, n, d, generator=g) for _ in range(3))

    def reference(mask):
        s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(d)
        s = s.masked_fill(~mask, float("-inf"))
        return torch.softmax(s, dim=-1) @ v.double()

    causal = torch.ones(n, n, dtype=torch.bool).tril()
    ism = ism_mask(torch, n, 16)
    got = {
        "causal": (F.scaled_dot_product_attention(q, k, v, is_causal=True), causal),
        "ism16": (F.scaled_dot_product_attention(q, k, v, attn_mask=ism), ism),
        "ism16-additive": (F.scaled_dot_product_attention(
            q, k, v, attn_mask=additive_mask(torch, ism, q.dtype)), ism),
    }
    for name, (out, mask) in got.items():
        err = (out.double() - reference(mask)).abs().max().item()
        if err > 1e-4:
            raise AssertionError(f"SDPA with mask {name} is off by {err:g}")


def additive_mask(torch, allowed, dtype):
    """0 where allowed, -inf elsewhere: what SDPA turns a boolean mask into on
    every call (an O(N^2) `where`), built once here to see what that costs."""
    zero = torch.zeros((), dtype=dtype)
    return torch.where(allowed, zero, torch.tensor(float("-inf"), dtype=dtype))


def decode_tail_mask(torch, rows, cache):
    """[rows, cache]: row r is token cache-rows+r and sees keys up to itself.
    (is_causal=True aligns the triangle top-left when rows < cache, which is
    not the decode case, hence an explicit mask.)"""
    q_pos = torch.arange(cache - rows, cache)
    return torch.arange(cache)[None, :] <= q_pos[:, None]


# --- Work counts ----------------------------------------------------------------

def visible_pairs(kind, n, mask=None):
    if kind == "none":
        return n * n
    if kind == "causal":
        return n * (n + 1) // 2
    return int(mask.sum().item())


def decode_pairs(rows, cache):
    # Row r of the tail sees cache - rows + r + 1 keys.
    return rows * (cache - rows) + rows * (rows + 1) // 2


# --- Which kernel runs -------------------------------------------------------

def expected_backend(torch, q, k, v, mask, is_causal, gqa):
    """The backend SDPA's dispatcher picks for these inputs (a private but
    long-standing entry point; 'unknown' where this torch lacks it)."""
    try:
        from torch.nn.attention import SDPBackend
        kwargs = {"enable_gqa": True} if gqa else {}
        choice = torch._fused_sdp_choice(q, k, v, mask, 0.0, is_causal, **kwargs)
        return SDPBackend(choice).name.lower()
    except Exception:
        return "unknown"


def op_recorder(torch):
    """A dispatch mode that notes the ATen ops a call runs, so the kernel that
    did the work is read off the run itself rather than guessed."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:
        return None

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    return Recorder()


def kernel_from_ops(ops):
    fused = [o for o in ops if "scaled_dot_product" in o]
    if fused:
        return "+".join(dict.fromkeys(fused))
    if "bmm" in ops or "matmul" in ops:
        return "math (bmm + softmax)"
    return "unknown"


# --- Cases ------------------------------------------------------------------------

def gqa_mode(torch, F):
    """'enable_gqa' where SDPA takes grouped K/V heads itself, else 'expanded'
    (K/V repeated to the query heads before timing: more bytes to read)."""
    q = torch.zeros(1, 4, 1, 8)
    kv = torch.zeros(1, 2, 3, 8)
    try:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return "enable_gqa"
    except (TypeError, RuntimeError):
        return "expanded"


def build_cases(args):
    cases = []
    for dtype in args.dtype:
        for dim in args.dim:
            if args.mode == "decode":
                for cache in args.cache:
                    for rows in args.rows:
                        for t in args.threads:
                            cases.append(dict(dtype=dtype, dim=dim, n=cache, rows=rows,
                                              mask="causal", threads=t))
            else:
                for n in args.n:
                    for mask in args.masks:
                        for t in args.threads:
                            cases.append(dict(dtype=dtype, dim=dim, n=n, rows=n,
                                              mask=mask, threads=t))
    return cases


def run_case(torch, F, args, case, gqa):
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[case["dtype"]]
    h, kvh, d, n, rows = args.heads, args.kv_heads, case["dim"], case["n"], case["rows"]
    decode = args.mode == "decode"
    train = args.mode == "train"
    g = torch.Generator().manual_seed(args.seed)

    # Random normal in fp32, then rounded: every dtype sees the same values.
    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dt).contiguous()

    q = randn(1, h, rows, d)
    k = randn(1, kvh, n, d)
    v = randn(1, kvh, n, d)
    kwargs = {}
    grouped = kvh != h
    if grouped and gqa == "enable_gqa":
        kwargs["enable_gqa"] = True
    elif grouped:
        k = k.repeat_interleave(h // kvh, dim=1).contiguous()
        v = v.repeat_interleave(h // kvh, dim=1).contiguous()

    kind, segments, additive = parse_mask(case["mask"])
    mask = None
    if decode:
        kind = "decode"
        pairs = decode_pairs(rows, n)
        if rows > 1:
            mask = decode_tail_mask(torch, rows, n)
    elif kind == "causal":
        kwargs["is_causal"] = True
        pairs = visible_pairs(kind, n)
    elif kind == "ism":
        mask = ism_mask(torch, n, segments)
        pairs = visible_pairs(kind, n, mask)
    else:
        pairs = visible_pairs(kind, n)
    backend = expected_backend(torch, q, k, v, mask, kwargs.get("is_causal", False),
                               kwargs.get("enable_gqa", False))
    if mask is not None and additive:
        mask = additive_mask(torch, mask, dt)
    if mask is not None:
        kwargs["attn_mask"] = mask

    if train:
        for x in (q, k, v):
            x.requires_grad_(True)
        dout = randn(1, h, rows, d)

        def call():
            for x in (q, k, v):
                x.grad = None
            out = F.scaled_dot_product_attention(q, k, v, **kwargs)
            out.backward(dout)
    else:
        def call():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, **kwargs)

    torch.set_num_threads(case["threads"])
    rec = op_recorder(torch)
    t0 = time.perf_counter()
    if rec is not None:
        with rec:
            call()
    else:
        call()
    for _ in range(args.warmup - 1):
        call()
    warm_s = (time.perf_counter() - t0) / args.warmup
    reps = args.reps
    if args.case_budget_s > 0 and warm_s * reps > args.case_budget_s:
        reps = max(3, min(reps, int(args.case_budget_s / warm_s)))

    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)

    flops = 4.0 * d * pairs * h * (3.5 if train else 1.0)
    med = statistics.median(times)
    result = {
        "mode": args.mode,
        "mask": "decode-tail" if decode else case["mask"],
        "n": None if decode else n,
        "cache": n if decode else None,
        "dim": d,
        "heads": h,
        "kv_heads": kvh,
        "threads": case["threads"],
        "dtype": case["dtype"],
        "rows": rows,
        "reps": reps,
        "min_ms": round(min(times), 4),
        "median_ms": round(med, 4),
        "max_ms": round(max(times), 4),
        "visible_pairs": pairs,
        "useful_gflops": round(flops / (med * 1e-3) / 1e9, 3),
        "torch_version": torch.__version__,
        "expected_backend": backend,
        "kernel": kernel_from_ops(rec.ops) if rec is not None else "unknown",
        "gqa": (gqa if grouped else "n/a"),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if decode:
        # K + V bytes a step must read, as decode_bench's bytes_per_second.
        kv_bytes = 2.0 * n * kvh * d * q.element_size()
        result["kv_gbytes_per_s"] = round(kv_bytes / (med * 1e-3) / 1e9, 3)
    return result


def short_kernel(kernel):
    """_scaled_dot_product_flash_attention_for_cpu(+_backward) -> flash_cpu(+bwd)"""
    parts = [k.replace("_scaled_dot_product_", "").replace("_attention_for_cpu", "_cpu")
              .replace("_backward", "_bwd") for k in kernel.split("+")]
    return "+".join(parts)


def table(results, header):
    cols = ["mode", "mask", "n/cache", "dim", "H/KV", "thr", "dtype", "rows", "reps",
            "min ms", "median ms", "max ms", "GFLOP/s", "GB/s", "load", "kernel"]
    rows = []
    for r in results:
        rows.append([
            r["mode"], r["mask"], str(r["n"] if r["n"] is not None else r["cache"]),
            str(r["dim"]), f'{r["heads"]}/{r["kv_heads"]}', str(r["threads"]), r["dtype"],
            str(r["rows"]), str(r["reps"]), f'{r["min_ms"]:.3f}', f'{r["median_ms"]:.3f}',
            f'{r["max_ms"]:.3f}', f'{r["useful_gflops"]:.1f}',
            f'{r["kv_gbytes_per_s"]:.2f}' if "kv_gbytes_per_s" in r else "-",
            f'{r["loadavg_1m"]:.2f}',
            short_kernel(r["kernel"]),
        ])
    widths = [max(len(c), *(len(x[i]) for x in rows)) if rows else len(c)
              for i, c in enumerate(cols)]

    def line(xs):
        return "  ".join(x.rjust(w) for x, w in zip(xs, widths)).rstrip()

    out = list(header)
    out.append(line(cols))
    out.append(line(["-" * w for w in widths]))
    out.extend(line(x) for x in rows)
    return "\n".join(out) + "\n"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # ImportError, or OSError from a broken install
        print(f"torch not importable: {e}; skipped")
        return 0

    # One interop thread: SDPA runs on the intra-op pool only, and a second
    # pool would only compete for the 2 cores.
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set once parallel work has run; harmless here
    check_ism_mask(torch)
    check_sdpa_masks(torch, F)
    gqa = gqa_mode(torch, F)

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:
        capability = "unknown"
    load0 = os.getloadavg()
    header = [
        f"# torch {torch.__version__} on {cpu_name()} ({os.cpu_count()} cpus, "
        f"ATen capability {capability}); grouped K/V: {gqa}",
        f"# mode {args.mode}; reps {args.reps} after {args.warmup} warmups; "
        f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}",
        "# useful GFLOP/s = 4*dim*visible pairs*heads/median (x3.5 for train)",
    ]
    results = []
    for case in build_cases(args):
        r = run_case(torch, F, args, case, gqa)
        results.append(r)
        print(json.dumps(r), flush=True)
    load1 = os.getloadavg()
    header.append(f"# load average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")

    text = table(results, header)
    print(text, end="")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
    if args.table:
        with open(args.table, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
