#!/usr/bin/env python3
"""Times ism::cuda::attention against PyTorch on the same shapes (run on a GPU machine).

    python3 bench/cuda/compare_torch.py --bench build-cuda/bench/cuda/cuda_attention_bench

For every mask (causal, prefix-LM, ISM), N in 1k..32k and head dim 64/128,
bf16, batch 1, heads 2048/dim, it prints TFLOP/s of visible work for
  ism    -- the cuda_attention_bench binary (CUDA-event timing, Google Benchmark JSON)
  sdpa   -- torch.nn.functional.scaled_dot_product_attention, flash backend,
            is_causal=True (causal only: the flash backend takes no other mask)
  flex   -- torch.compile(flex_attention) with the same mask as a BlockMask
then the binary's decode cases (GB/s of K/V read) beside the device's own
copy bandwidth (a torch device-to-device copy, bytes read + written), and
checks issue 16's floors: ism >= 0.5 x flex on ISM at N=8192, dim 128, and
decode at >= 0.5 x the copy bandwidth. --report writes it all as markdown.

The masks are built exactly as in cuda_attention_bench.cu: prefix = N/2; ISM
= rounds of 512 tokens, a 128-token bidirectional query turn then a 384-token
causal answer. Flops = 4 * visible (query, key) pairs * dim * heads.
"""
import argparse
import json
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention


def ism_bounds(n, device):
    """Row bounds [lo, hi) of the bench's ISM layout (one document: lo = 0)."""
    hi = torch.empty(n, dtype=torch.int64)
    start = 0
    while start < n:
        q_end = min(n, start + 128)
        hi[start:q_end] = q_end  # bidirectional query turn: the whole turn
        a_end = min(n, q_end + 384)
        hi[q_end:a_end] = torch.arange(q_end + 1, a_end + 1)  # causal answer
        start = a_end
    return torch.zeros(n, dtype=torch.int64, device=device), hi.to(device)


def mask_bounds(kind, n, device):
    idx = torch.arange(n, dtype=torch.int64, device=device)
    lo = torch.zeros(n, dtype=torch.int64, device=device)
    if kind == "causal":
        return lo, idx + 1
    if kind == "prefix":
        prefix = n // 2
        return lo, torch.where(idx < prefix, torch.full_like(idx, prefix), idx + 1)
    return ism_bounds(n, device)


def time_ms(fn, warmup=3, iters=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def fmt(x, width, digits):
    return f"{x:{width}.{digits}f}" if x is not None else "n/a".rjust(width)


def run_ism_bench(binary, bench_filter, counter="TFLOP/s"):
    out = subprocess.run(
        [binary, "--benchmark_format=json", "--benchmark_filter=" + bench_filter, "--benchmark_min_time=0.2"],
        check=True, capture_output=True, text=True).stdout
    results = {}
    for b in json.loads(out)["benchmarks"]:
        # "ism/N:8192/dim:128/manual_time" -> ("ism", 8192, 128)
        parts = b["name"].split("/")
        key = (parts[0], int(parts[1].split(":")[1]), int(parts[2].split(":")[1]))
        results[key] = b[counter]
    return results


def copy_bandwidth_gbs():
    """Device-to-device copy of 2 GiB, bytes read + written, median of 10."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a), warmup=3, iters=10)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 2 * n / (ms * 1e-3) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", required=True, help="path to the cuda_attention_bench binary")
    ap.add_argument("--ns", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--masks", nargs="+", default=["causal", "prefix", "ism"])
    ap.add_argument("--flex-masks", nargs="+", default=["ism"],
                    help="masks to time FlexAttention on (each N and dim is one torch.compile)")
    ap.add_argument("--no-decode", action="store_true", help="skip the decode cases")
    ap.add_argument("--report", help="also write the tables as markdown to this file")
    args = ap.parse_args()

    lines = []

    def say(line=""):
        print(line, flush=True)
        lines.append(line)

    device = "cuda"
    say(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    names = "|".join(args.masks)
    ns = "|".join(str(n) for n in args.ns)
    dims = "|".join(str(d) for d in args.dims)
    ism = run_ism_bench(args.bench, f"^({names})/N:({ns})/dim:({dims})/")
    flex = torch.compile(flex_attention, dynamic=False)

    say("```")
    say(f"{'mask':<7} {'N':>6} {'dim':>4} {'ism':>8} {'sdpa':>8} {'flex':>8} {'ism/flex':>9}   (TFLOP/s, bf16)")
    floor_ok = None
    for dim in args.dims:
        heads = 2048 // dim
        for n in args.ns:
            q, k, v = (torch.randn(1, heads, n, dim, device=device, dtype=torch.bfloat16) for _ in range(3))
            for kind in args.masks:
                lo, hi = mask_bounds(kind, n, device)
                flops = 4.0 * float((hi.clamp(max=n) - lo).sum().item()) * dim * heads

                def mask_mod(b, h, q_idx, kv_idx, lo=lo, hi=hi):
                    return (kv_idx >= lo[q_idx]) & (kv_idx < hi[q_idx])

                flex_tf = None
                if kind in args.flex_masks:
                    block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device=device)
                    flex_tf = flops / time_ms(lambda: flex(q, k, v, block_mask=block_mask)) / 1e9
                sdpa_tf = None
                if kind == "causal":
                    def sdpa():
                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    sdpa_tf = flops / time_ms(sdpa) / 1e9
                ours = ism.get((kind, n, dim))
                ratio = ours / flex_tf if ours and flex_tf else None
                if kind == "ism" and n == 8192 and dim == 128 and ratio is not None:
                    floor_ok = ratio >= 0.5
                say(f"{kind:<7} {n:>6} {dim:>4} {fmt(ours, 8, 1)} {fmt(sdpa_tf, 8, 1)} {fmt(flex_tf, 8, 1)} "
                    f"{fmt(ratio, 9, 2)}")
            del q, k, v
            torch.cuda.empty_cache()
    say("```")
    if floor_ok is not None:
        say(f"floor (ism >= 0.5 x flex on ISM, N=8192, dim 128): {'met' if floor_ok else 'NOT met'}")
    decode_ok = None
    if not args.no_decode:
        copy = copy_bandwidth_gbs()
        dec = run_ism_bench(args.bench, "^decode/", counter="GB/s")
        say("")
        say("```")
        say(f"device copy bandwidth (read + write): {copy:.0f} GB/s")
        say(f"{'decode':<8} {'n_k':>7} {'requests':>8} {'GB/s':>8} {'of copy':>8}   (32 q heads / 8 kv heads, dim 128)")
        for (name, n_k, requests), gbs in sorted(dec.items(), key=lambda kv: (kv[0][2], kv[0][1])):
            frac = gbs / copy
            say(f"{name:<8} {n_k:>7} {requests:>8} {gbs:>8.0f} {frac:>8.2f}")
            if n_k >= 65536 and requests == 1:
                decode_ok = frac >= 0.5 if decode_ok is None else decode_ok and frac >= 0.5
        say("```")
        if decode_ok is not None:
            say(f"floor (decode >= 0.5 x copy bandwidth, n_k >= 64k): {'met' if decode_ok else 'NOT met'}")
    if args.report:
        with open(args.report, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0 if floor_ok in (None, True) and decode_ok in (None, True) else 1


if __name__ == "__main__":
    sys.exit(main())
