"""PyTorch peer of benches/nano_train_step.rs: one nano pretraining step (forward + backward +
AdamW update) of a diffusers `FluxTransformer2DModel` and a transformers `CLIPTextModel`
trained jointly, f32 on CPU, with the configs the Rust bench used (read from
target/criterion/nano_train_step_configs.json, which the bench writes: run it first).

The batch is random tensors (no procedural data, no tokenizer): ids [B, T] within the
vocabulary ending in eos, x0 and noise N(0, 1), σ = sigmoid(N(0, 1)) (logit-normal, as
dreamforge samples), x_t = (1 - σ) x0 + σ noise, target noise - x0, MSE. img_ids / txt_ids as
diffusers' FluxPipeline builds them. AdamW(lr, betas, eps, weight decay from the configs) over
both models; gradients clipped per parameter tensor to norm 1.0 (what Burn's
GradientClippingConfig::Norm does, unlike a global clip_grad_norm_).

Prints one JSON line and writes target/criterion/nano_train_step_torch.json: the median step
time after 2 warm-up steps, parameter counts, and the FLOPs of one forward and of one whole
step counted by torch's FlopCounterMode (one extra step outside the timing).

    python tools/bench/nano_train_step.py --threads 2 --steps 10
"""

import argparse
import json
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

warnings.filterwarnings("ignore")

from diffusers import FluxTransformer2DModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402
from timing import median_time  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--configs", default=str(ROOT / "target/criterion/nano_train_step_configs.json"))
    ap.add_argument("--out", default=str(ROOT / "target/criterion/nano_train_step_torch.json"))
    ap.add_argument("--no-flop-count", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    path = Path(a.configs)
    if not path.exists():
        raise SystemExit(f"{path} missing: run `cargo bench --bench nano_train_step` first")
    cfgs = json.loads(path.read_text())

    tcfg = {k: v for k, v in cfgs["transformer"].items() if v is not None}
    transformer = FluxTransformer2DModel.from_config(tcfg).train()
    ccfg = dict(cfgs["text_encoder"])
    ccfg.pop("architectures", None)
    ccfg.pop("projection_dim", None)  # CLIPTextModel has no projection
    text_encoder = CLIPTextModel(CLIPTextConfig(**ccfg)).train()

    b, l, t = cfgs["batch"], cfgs["image_tokens"], cfgs["text_tokens"]
    side = cfgs["latent_side"]
    c = tcfg["in_channels"]
    vocab = ccfg["vocab_size"]
    eos = ccfg["eos_token_id"]

    # Random batch, fixed for every step.
    ids = torch.randint(3, vocab, (b, t))
    ids[:, 0] = ccfg["bos_token_id"]
    ids[:, -1] = eos
    x0 = torch.randn(b, l, c)
    noise = torch.randn(b, l, c)
    sigma = torch.sigmoid(torch.randn(b))
    txt_ids = torch.zeros(t, 3)
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    img_ids = img_ids.reshape(side * side, 3)

    o = cfgs["optimizer"]
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    optim = torch.optim.AdamW(params, lr=cfgs["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                              weight_decay=o["weight_decay"])
    clip = o.get("grad_clip_norm")

    def forward():
        text = text_encoder(input_ids=ids)
        s = sigma.view(b, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        pred = transformer(hidden_states=x_t, encoder_hidden_states=text.last_hidden_state,
                           pooled_projections=text.pooler_output, timestep=sigma, img_ids=img_ids,
                           txt_ids=txt_ids, return_dict=False)[0]
        return torch.nn.functional.mse_loss(pred, noise - x0)

    def step():
        optim.zero_grad(set_to_none=True)
        loss = forward()
        loss.backward()
        if clip is not None:
            for p in params:
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_([p], clip)
        optim.step()
        return loss

    out = {
        "torch": torch.__version__,
        "threads": a.threads,
        "steps": a.steps,
        "warmup": a.warmup,
        "batch": b,
        "params_transformer": sum(p.numel() for p in transformer.parameters()),
        "params_text_encoder": sum(p.numel() for p in text_encoder.parameters()),
    }
    out["step_median_s"] = median_time(step, a.warmup, a.steps)
    if not a.no_flop_count:
        with FlopCounterMode(display=False) as fc:
            with torch.no_grad():
                forward()
        out["flops_forward_counted"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            step()
        out["flops_step_counted"] = fc.get_total_flops()
    line = json.dumps(out)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
