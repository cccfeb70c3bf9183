"""PyTorch peer timing of one diffusers FLUX double block and single block (same config as
benches/flux_blocks.rs: width 3072, 24 heads x 128, 512 text tokens, f32, CPU) at the given
image-token counts. Prints one JSON object: {"<block>_<tokens>": median_seconds, ...}.

    python tools/bench/flux_blocks.py --threads 2 --width 3072 --text 512 --tokens 256,1024,4096
"""

import argparse
import json

import torch
from diffusers.models.embeddings import FluxPosEmbed
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
from timing import median_time




@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=3072)
    ap.add_argument("--text", type=int, default=512)
    ap.add_argument("--tokens", default="256,1024,4096")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d, heads = a.width, a.width // 128
    torch.manual_seed(0)
    double = FluxTransformerBlock(dim=d, num_attention_heads=heads, attention_head_dim=128).eval()
    single = FluxSingleTransformerBlock(dim=d, num_attention_heads=heads, attention_head_dim=128).eval()
    pos = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])
    out = {"torch": torch.__version__, "threads": a.threads, "width": d, "text": a.text}
    n = 2048
    x, y = torch.randn(n, n), torch.randn(n, n)
    out["matmul_f32_2048"] = median_time(lambda: x @ y, 2, 10)
    for l in [int(s) for s in a.tokens.split(",")]:
        side = int(l ** 0.5 + 0.999)
        ids = torch.zeros(a.text + l, 3)
        ids[a.text:, 1] = torch.arange(l) // side
        ids[a.text:, 2] = torch.arange(l) % side
        rope = pos(ids)
        img, txt, temb = torch.randn(1, l, d), torch.randn(1, a.text, d), torch.randn(1, d)
        out[f"double_{l}"] = median_time(lambda: double(img, txt, temb, rope), 1, a.runs)
        out[f"single_{l}"] = median_time(lambda: single(img, txt, temb, rope), 1, a.runs)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
