"""Peer comparison: runs the criterion bench (dreamforge, flex CPU backend) and the PyTorch
script on the same machine with the same thread count, then prints a markdown table of
medians, ratios and achieved GFLOP/s against the measured f32 matmul peak.

    RAYON_NUM_THREADS=2 python tools/bench/compare.py --threads 2 [--tokens 256,1024,4096]
    RAYON_NUM_THREADS=2 python tools/bench/compare.py --suite unet --threads 2
    python tools/bench/compare.py --suite nano-train --threads 2 [--steps 10]

`--suite flux` (the default): benches/flux_blocks.rs vs tools/bench/flux_blocks.py.
`--suite unet`: benches/unet_blocks.rs vs tools/bench/unet_blocks.py (SD UNet ResnetBlock2D,
Transformer2DModel, full UNet2DConditionModel step; same F16 random weights on both sides). Its
FLOPs, parameters and activation bytes come from target/criterion/unet_blocks_cases.json (written
by the bench) and are checked against torch's FlopCounterMode.
`--suite nano-train`: benches/nano_train_step.rs vs tools/bench/nano_train_step.py — one nano
pretraining step (forward + backward + AdamW, transformer and text encoder jointly, batch 32).
dreamforge's step includes its data preparation (procedural render + tokenize, share shown);
torch gets random tensors. A second row times the same step sharded over threads, as
`nano pretrain` runs it on the CPU (NANO_BENCH_SHARDS, default two per thread). GFLOP per step
= 3 × the analytic forward count (checked against torch's FlopCounterMode forward count);
parameter counts are checked to be equal.

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
    ap.add_argument("--suite", choices=["flux", "unet", "nano-train", "adapter-train"], default="flux")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=3072, help="flux: block width")
    ap.add_argument("--text", type=int, default=None, help="text tokens (flux 512, unet 77)")
    ap.add_argument("--tokens", default="256,1024,4096", help="flux: image-token counts")
    ap.add_argument("--resnets", default="320x64,640x32", help="unet: ResnetBlock2D CxS list")
    ap.add_argument("--temb", type=int, default=1280, help="unet: resnet time-embedding width")
    ap.add_argument("--transformers", default="320:8:64:1:768:conv,640:10:32:2:2048:linear",
                    help="unet: Transformer2DModel C:heads:side:layers:context_dim:conv|linear list")
    ap.add_argument("--channels", default="320,640,1280,1280", help="unet: full UNet block_out_channels, or none")
    ap.add_argument("--side", type=int, default=32, help="unet: full UNet latent side")
    ap.add_argument("--batch", type=int, default=2, help="unet: full UNet batch (2 = one CFG step)")
    ap.add_argument("--cross", type=int, default=768, help="unet: cross_attention_dim")
    ap.add_argument("--heads", type=int, default=8, help="unet: attention_head_dim (heads, SD1.x)")
    ap.add_argument("--matmul", type=int, default=2048, help="unet: side of the peak matmul")
    ap.add_argument("--runs", type=int, default=10, help="unet: torch timed runs per block")
    ap.add_argument("--unet-runs", type=int, default=5, help="unet: torch timed runs of the full UNet")
    ap.add_argument("--steps", type=int, default=10, help="nano-train: timed steps per side (median)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--skip-rust", action="store_true")
    a = ap.parse_args()
    if a.suite == "nano-train":
        return main_nano(a)
    if a.suite == "adapter-train":
        return main_adapter(a)
    if a.suite == "unet":
        a.text = 77 if a.text is None else a.text
        return main_unet(a)
    a.text = 512 if a.text is None else a.text
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


def parse_transformer(s):
    c, heads, side, layers, ctx, proj = s.split(":")
    return dict(c=int(c), heads=int(heads), side=int(side), layers=int(layers), ctx=int(ctx), proj=proj)


def main_unet(a):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), DREAMFORGE_BENCH_UNET_RESNETS=a.resnets,
               DREAMFORGE_BENCH_UNET_TEMB=str(a.temb), DREAMFORGE_BENCH_UNET_TRANSFORMERS=a.transformers,
               DREAMFORGE_BENCH_UNET_TEXT=str(a.text), DREAMFORGE_BENCH_UNET_CHANNELS=a.channels,
               DREAMFORGE_BENCH_UNET_SIDE=str(a.side), DREAMFORGE_BENCH_UNET_BATCH=str(a.batch),
               DREAMFORGE_BENCH_UNET_CROSS=str(a.cross), DREAMFORGE_BENCH_UNET_HEADS=str(a.heads),
               DREAMFORGE_BENCH_UNET_MATMUL=str(a.matmul), DREAMFORGE_BENCH_UNET_BLOCK_BATCH="1")
    if not a.skip_rust:
        subprocess.run(["cargo", "bench", "--bench", "unet_blocks"], cwd=ROOT, env=env, check=True)
    torch_out = json.loads(subprocess.run(
        [a.python, str(ROOT / "tools/bench/unet_blocks.py"), "--threads", str(a.threads), "--resnets", a.resnets,
         "--temb", str(a.temb), "--transformers", a.transformers, "--text", str(a.text), "--channels", a.channels,
         "--side", str(a.side), "--batch", str(a.batch), "--cross", str(a.cross), "--heads", str(a.heads),
         "--matmul", str(a.matmul), "--runs", str(a.runs), "--unet-runs", str(a.unet_runs),
         "--weights-dir", str(ROOT / "target" / "bench-weights")],
        check=True, capture_output=True, text=True).stdout)
    cases = {c["id"]: c for c in json.loads((ROOT / "target" / "criterion" / "unet_blocks_cases.json").read_text())}

    n = a.matmul
    mm_id = f"unet_matmul_peak/f32_{n}"
    mm_rust = criterion_median(*mm_id.split("/"))
    mm_torch = torch_out[mm_id]
    peak = 2 * n ** 3 / mm_rust / 1e9
    print(f"f32 matmul {n}^3: dreamforge {mm_rust * 1e3:.1f} ms ({peak:.0f} GFLOP/s), "
          f"torch {mm_torch * 1e3:.1f} ms ({2 * n ** 3 / mm_torch / 1e9:.0f} GFLOP/s)\n")

    rows = []
    for s in [s for s in a.resnets.split(",") if s.strip()]:
        c, side = (int(v) for v in s.split("x"))
        rows.append((f"unet_resnet/c{c}_s{side}", "ResnetBlock2D",
                     f"{c}→{c} ch, {side}×{side}, temb {a.temb}, batch 1"))
    for s in [s for s in a.transformers.split(",") if s.strip()]:
        t = parse_transformer(s)
        name = f"c{t['c']}_h{t['heads']}_s{t['side']}_l{t['layers']}_x{t['ctx']}_{t['proj']}"
        rows.append((f"unet_transformer/{name}", "Transformer2DModel",
                     f"{t['c']} ch, {t['heads']}×{t['c'] // t['heads']} heads, {t['side'] ** 2} tokens, "
                     f"{t['layers']} block{'s' if t['layers'] > 1 else ''}, context {a.text}×{t['ctx']}, "
                     f"{t['proj']} proj, batch 1"))
    if a.channels.strip() != "none":
        tag = "-".join(a.channels.split(","))
        rows.append((f"unet_full/c{tag}_s{a.side}_b{a.batch}", "UNet2DConditionModel",
                     f"channels {tag}, {a.side}×{a.side} latent, context {a.text}×{a.cross}, batch {a.batch}"))

    print("| unit | config | GFLOP | weights MB | in+out MB | FLOP/byte | dreamforge ms | torch ms "
          "| dreamforge / torch | dreamforge GFLOP/s | torch GFLOP/s | % of matmul peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    mismatches = []
    for cid, unit, config in rows:
        c = cases[cid]
        f = c["flops"]
        counted = torch_out.get("flops:" + cid)
        if counted is not None and abs(counted - f) > 1e-6 * f:
            mismatches.append(f"{cid}: analytic {f / 1e9:.3f} GFLOP, torch FlopCounterMode {counted / 1e9:.3f}")
        wb = 4 * c["params"]
        r = criterion_median(*cid.split("/"))
        t = torch_out[cid]
        g = f / r / 1e9
        print(f"| {unit} | {config} | {f / 1e9:.1f} | {wb / 1e6:.1f} | {c['act_bytes'] / 1e6:.1f} "
              f"| {f / (wb + c['act_bytes']):.0f} | {r * 1e3:.0f} | {t * 1e3:.0f} | {r / t:.2f} | {g:.0f} "
              f"| {f / t / 1e9:.0f} | {100 * g / peak:.0f}% |")
    print()
    if mismatches:
        print("FLOP count mismatches (analytic vs torch FlopCounterMode):\n" + "\n".join(mismatches))
    else:
        print("FLOP counts: the analytic counts equal torch FlopCounterMode's for every row.")


def main_nano(a):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), NANO_BENCH_STEPS=str(a.steps))
    if not a.skip_rust:
        subprocess.run(["cargo", "bench", "--bench", "nano_train_step"], cwd=ROOT, env=env, check=True)
    torch_env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    t = json.loads(subprocess.run(
        [a.python, str(ROOT / "tools/bench/nano_train_step.py"), "--threads", str(a.threads),
         "--steps", str(a.steps)], env=torch_env, check=True, capture_output=True, text=True).stdout)
    r = json.loads((ROOT / "target" / "criterion" / "nano_train_step.json").read_text())
    f = r["flops_step"]
    rs, ts = r["step_median_s"], t["step_median_s"]
    print(f"nano pretraining step, batch {r['batch']}, {r['image_tokens']} image + {r['text_tokens']} text tokens, "
          f"{a.threads} threads; transformer {r['params_transformer'] / 1e6:.2f} M + text encoder "
          f"{r['params_text_encoder'] / 1e6:.2f} M parameters; {a.steps} timed steps each (median)\n")
    print("| unit | GFLOP / step | dreamforge s | torch s | dreamforge / torch | dreamforge data-prep share "
          "| dreamforge GFLOP/s | torch GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| nano train step (fwd + bwd + AdamW) | {f / 1e9:.1f} | {rs:.3f} | {ts:.3f} | {rs / ts:.2f} "
          f"| {100 * r['data_share']:.1f}% | {f / rs / 1e9:.1f} | {f / ts / 1e9:.1f} |")
    if "sharded_step_median_s" in r:
        ss = r["sharded_step_median_s"]
        print(f"| same, {r['shards']} shards on their own threads (as `nano pretrain` runs it) | {f / 1e9:.1f} "
              f"| {ss:.3f} | {ts:.3f} | {ss / ts:.2f} | | {f / ss / 1e9:.1f} | {f / ts / 1e9:.1f} |")
    print()
    problems = []
    for k in ("params_transformer", "params_text_encoder", "batch"):
        if r[k] != t[k]:
            problems.append(f"{k}: dreamforge {r[k]}, torch {t[k]}")
    counted = t.get("flops_forward_counted")
    if counted is not None and abs(counted - r["flops_forward"]) > 1e-6 * counted:
        problems.append(f"forward FLOPs: analytic {r['flops_forward'] / 1e9:.3f} G, "
                        f"torch FlopCounterMode {counted / 1e9:.3f} G")
    if problems:
        print("Mismatches:\n" + "\n".join(problems))
    else:
        step_counted = t.get("flops_step_counted")
        extra = f"; FlopCounterMode counts {step_counted / 1e9:.1f} GFLOP for the whole step" if step_counted else ""
        print(f"Parameter counts equal; the analytic forward FLOPs equal torch FlopCounterMode's{extra}.")


def main_adapter(a):
    """benches/adapter_train_step.rs vs tools/bench/adapter_train_step.py: one adapter training
    step (LoRA, T-LoRA, orthogonal T-LoRA at the same rank) on the nano transformer and a
    FLUX-shaped one; `--steps` timed steps per side (median)."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), ADAPTER_BENCH_STEPS=str(a.steps))
    if not a.skip_rust:
        subprocess.run(["cargo", "bench", "--bench", "adapter_train_step"], cwd=ROOT, env=env, check=True)
    rust = json.loads((ROOT / "target" / "criterion" / "adapter_train_step.json").read_text())
    torch_env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    out = subprocess.run([a.python, str(ROOT / "tools/bench/adapter_train_step.py"), "--threads", str(a.threads),
                          "--steps", str(a.steps)], env=torch_env, check=True, capture_output=True, text=True).stdout
    torch = {(t["config"], t["method"]): t for t in map(json.loads, out.strip().splitlines())}
    print(f"adapter training step (fwd + bwd through the frozen base + AdamW on the adapters), batch 1, "
          f"{a.threads} threads, rank {rust[0]['rank']}, {a.steps} timed steps each (median)\n")
    print("| config | method | trainable | dreamforge s | torch + PEFT s | dreamforge / torch "
          "| dreamforge VmHWM MiB | torch max RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rust:
        t = torch[(r["config"], r["method"])]
        tokens = f"{r['config']} ({r['image_tokens']}+{r['text_tokens']} tokens)"
        same = "" if t["trainable"] == r["trainable"] else f" (torch {t['trainable']})"
        print(f"| {tokens} | {r['method']} | {r['trainable']}{same} | {r['step_median_s']:.3f} "
              f"| {t['step_median_s']:.3f} | {r['step_median_s'] / t['step_median_s']:.2f} "
              f"| {(r['vm_hwm_bytes'] or 0) / 2**20:.0f} | {t['max_rss_bytes'] / 2**20:.0f} |")


if __name__ == "__main__":
    main()
