"""Peer comparison: runs the criterion bench (dreamforge, flex CPU backend) and the PyTorch
script on the same machine with the same thread count, then prints a markdown table of
medians, ratios and achieved GFLOP/s against the measured f32 matmul peak.

    RAYON_NUM_THREADS=2 python tools/bench/compare.py --threads 2 [--tokens 256,1024,4096]

Run on an otherwise idle machine; paste the table into BENCHMARKS.md with the date and machine.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def double_flops(d, l, t):
    per_token = 2 * (4 * d * d + 2 * d * 4 * d)
    return per_token * (l + t) + 2 * 2 * d * 6 * d + 2 * 2 * (l + t) ** 2 * d


def single_flops(d, l, t):
    s = l + t
    return 2 * (3 * d * d + d * 4 * d + 5 * d * d) * s + 2 * d * 3 * d + 2 * 2 * s * s * d


def criterion_median(group, name):
    p = ROOT / "target" / "criterion" / group / name / "new" / "estimates.json"
    return json.loads(p.read_text())["median"]["point_estimate"] / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=3072)
    ap.add_argument("--text", type=int, default=512)
    ap.add_argument("--tokens", default="256,1024,4096")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--skip-rust", action="store_true")
    a = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), DREAMFORGE_BENCH_WIDTH=str(a.width),
               DREAMFORGE_BENCH_TEXT=str(a.text), DREAMFORGE_BENCH_TOKENS=a.tokens)
    if not a.skip_rust:
        subprocess.run(["cargo", "bench", "--bench", "flux_blocks"], cwd=ROOT, env=env, check=True)
    torch_out = json.loads(subprocess.run(
        [a.python, str(ROOT / "tools/bench/flux_blocks.py"), "--threads", str(a.threads), "--width", str(a.width),
         "--text", str(a.text), "--tokens", a.tokens], check=True, capture_output=True, text=True).stdout)
    n = 2048
    mm_rust = criterion_median("matmul_peak", "f32_2048")
    mm_torch = torch_out["matmul_f32_2048"]
    peak = 2 * n ** 3 / mm_rust / 1e9
    print(f"f32 matmul 2048^3: dreamforge {mm_rust * 1e3:.1f} ms ({peak:.0f} GFLOP/s), "
          f"torch {mm_torch * 1e3:.1f} ms ({2 * n ** 3 / mm_torch / 1e9:.0f} GFLOP/s)\n")
    print("| block | image tokens | GFLOP | dreamforge ms | torch ms | dreamforge / torch | dreamforge GFLOP/s | % of matmul peak |")
    print("|---|---|---|---|---|---|---|---|")
    group = f"flux_w{a.width}_t{a.text}"
    for l in [int(s) for s in a.tokens.split(",")]:
        for block, flops in (("double", double_flops), ("single", single_flops)):
            f = flops(a.width, l, a.text)
            r = criterion_median(group, f"{block}_{l}")
            t = torch_out[f"{block}_{l}"]
            g = f / r / 1e9
            print(f"| {block} | {l} | {f / 1e9:.1f} | {r * 1e3:.0f} | {t * 1e3:.0f} | {r / t:.2f} | {g:.0f} | {100 * g / peak:.0f}% |")


if __name__ == "__main__":
    main()
