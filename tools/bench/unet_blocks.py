"""PyTorch peer timing of the SD UNet units that benches/unet_blocks.rs times (f32, CPU):
diffusers `ResnetBlock2D` (with time embedding), `Transformer2DModel` (GroupNorm, proj_in,
BasicTransformerBlocks with self- and cross-attention, proj_out, residual) and one full
`UNet2DConditionModel` forward, plus a square f32 matmul.

Weights: with --weights-dir (compare.py passes target/bench-weights) the F16 files the Rust bench
wrote are loaded with strict `load_state_dict`, so both sides run the same numbers and the key
sets are checked to be diffusers'; without it, diffusers' random init.

Prints one JSON object keyed by the criterion ids, median seconds, and "flops:<id>" counted by
torch's FlopCounterMode (one extra forward per case, outside the timing):

    python tools/bench/unet_blocks.py --threads 2 --resnets 320x64,640x32 \
        --transformers 320:8:64:1:768:conv,640:10:32:2:2048:linear \
        --channels 320,640,1280,1280 --side 32 --batch 2
"""

import argparse
import json
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

warnings.filterwarnings("ignore", category=FutureWarning)

from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.models.resnet import ResnetBlock2D  # noqa: E402
from diffusers.models.transformers.transformer_2d import Transformer2DModel  # noqa: E402
from timing import median_time  # noqa: E402




def count_flops(fn):
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def load_prefixed(module, weights, prefix):
    """Strictly loads the `prefix.`-named tensors of `weights` (F16) into `module` as f32."""
    sd = {k[len(prefix) + 1:]: v.float() for k, v in weights.items() if k.startswith(prefix + ".")}
    module.load_state_dict(sd, strict=True)


def parse_transformer(s):
    c, heads, side, layers, ctx, proj = s.split(":")
    return dict(c=int(c), heads=int(heads), side=int(side), layers=int(layers), ctx=int(ctx), linear=proj == "linear")


def transformer_name(t):
    return f"c{t['c']}_h{t['heads']}_s{t['side']}_l{t['layers']}_x{t['ctx']}_{'linear' if t['linear'] else 'conv'}"


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resnets", default="320x64,640x32")
    ap.add_argument("--temb", type=int, default=1280)
    ap.add_argument("--transformers", default="320:8:64:1:768:conv,640:10:32:2:2048:linear")
    ap.add_argument("--text", type=int, default=77)
    ap.add_argument("--block-batch", type=int, default=1)
    ap.add_argument("--channels", default="320,640,1280,1280", help="UNet block_out_channels, or none")
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--cross", type=int, default=768)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--matmul", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=10, help="timed runs per block (median)")
    ap.add_argument("--unet-runs", type=int, default=5, help="timed runs of the full UNet (median)")
    ap.add_argument("--weights-dir", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    load_file = None
    if a.weights_dir:
        from safetensors.torch import load_file
    out = {"torch": torch.__version__, "threads": a.threads}

    n = a.matmul
    x, y = torch.randn(n, n), torch.randn(n, n)
    out[f"unet_matmul_peak/f32_{n}"] = median_time(lambda: x @ y, 2, 10)

    resnets = [tuple(int(v) for v in s.split("x")) for s in a.resnets.split(",") if s.strip()]
    transformers = [parse_transformer(s) for s in a.transformers.split(",") if s.strip()]
    blocks = load_file(str(Path(a.weights_dir) / "unet_blocks_f16.safetensors")) if load_file else None

    b = a.block_batch
    for i, (c, side) in enumerate(resnets):
        m = ResnetBlock2D(in_channels=c, out_channels=c, temb_channels=a.temb, groups=32, eps=1e-5).eval()
        if blocks is not None:
            load_prefixed(m, blocks, f"resnet{i}")
        h, temb = torch.randn(b, c, side, side), torch.randn(b, a.temb)
        key = f"unet_resnet/c{c}_s{side}"
        out[key] = median_time(lambda: m(h, temb), 1, a.runs)
        out["flops:" + key] = count_flops(lambda: m(h, temb))

    for i, t in enumerate(transformers):
        m = Transformer2DModel(num_attention_heads=t["heads"], attention_head_dim=t["c"] // t["heads"],
                               in_channels=t["c"], num_layers=t["layers"], cross_attention_dim=t["ctx"],
                               norm_num_groups=32, use_linear_projection=t["linear"]).eval()
        if blocks is not None:
            load_prefixed(m, blocks, f"transformer{i}")
        h, ctx = torch.randn(b, t["c"], t["side"], t["side"]), torch.randn(b, a.text, t["ctx"])
        key = f"unet_transformer/{transformer_name(t)}"
        out[key] = median_time(lambda: m(h, encoder_hidden_states=ctx), 1, a.runs)
        out["flops:" + key] = count_flops(lambda: m(h, encoder_hidden_states=ctx))
    del blocks

    if a.channels.strip() != "none":
        ch = [int(v) for v in a.channels.split(",")]
        unet = UNet2DConditionModel(sample_size=a.side, block_out_channels=ch, cross_attention_dim=a.cross,
                                    attention_head_dim=a.heads).eval()
        if load_file:
            tag = "-".join(map(str, ch))
            w = load_file(str(Path(a.weights_dir) / f"unet_c{tag}_x{a.cross}_h{a.heads}_f16.safetensors"))
            unet.load_state_dict({k: v.float() for k, v in w.items()}, strict=True)
            del w
        sample = torch.randn(a.batch, 4, a.side, a.side)
        ctx = torch.randn(a.batch, a.text, a.cross)
        t = torch.tensor([500.0])

        def step():
            return unet(sample, t, encoder_hidden_states=ctx).sample

        key = f"unet_full/c{'-'.join(map(str, ch))}_s{a.side}_b{a.batch}"
        out["flops:" + key] = count_flops(step)  # doubles as the warm-up
        out[key] = median_time(step, 0, a.unet_runs)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
