"""PyTorch + PEFT peer of benches/adapter_train_step.rs: one adapter training step (forward +
backward through the frozen base + AdamW over the adapter parameters only) on a diffusers
`FluxTransformer2DModel`, f32 on CPU, for the configs and rank the Rust bench used (read from
target/criterion/adapter_train_step.json: run `cargo bench --bench adapter_train_step` first).

- lora: PEFT `LoraConfig(r, lora_alpha=r)` on the attention projections (q/k/v/out of both
  streams, single-block q/k/v), as `dreamforge train --targets attention`.
- tlora: the same PEFT LoRA with the T-LoRA rank mask (half the rank active, as the Rust bench's
  p = 0.5) applied between down and up by a forward hook on each `lora_A`.
- tlora-ortho: the orthogonal T-LoRA layer of the reference (`p(q(x)·λ·m) − p0(q0(x)·λ0·m)`, Q, P,
  λ trainable, copies frozen) wrapping the same projections.

Random inputs; base weights perturbed (a fresh diffusers FLUX has no adaLN-Zero, but the values
do not matter for timing). Prints one JSON line per (config, method): median step seconds after
2 warm-up steps, trainable parameters, peak RSS (ru_maxrss, monotone over the process).

    python tools/bench/adapter_train_step.py --threads 2 --steps 5
"""

import argparse
import json
import resource
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

from diffusers import FluxTransformer2DModel  # noqa: E402
from peft import LoraConfig, inject_adapter_in_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
           "attn.add_v_proj", "attn.to_add_out"]


class OrthoTLora(torch.nn.Module):
    def __init__(self, base, rank, mask):
        super().__init__()
        self.base = base
        i, o = base.in_features, base.out_features
        r = min(rank, i, o)
        self.q = torch.nn.Parameter(torch.randn(r, i) / r)
        self.p = torch.nn.Parameter(torch.randn(o, r) / r)
        self.lam = torch.nn.Parameter(torch.rand(r))
        self.register_buffer("q0", self.q.detach().clone())
        self.register_buffer("p0", self.p.detach().clone())
        self.register_buffer("lam0", self.lam.detach().clone())
        self.register_buffer("mask", mask[:r].clone())

    def forward(self, x):
        d = ((x @ self.q.T) * self.lam * self.mask) @ self.p.T
        d0 = ((x @ self.q0.T) * self.lam0 * self.mask) @ self.p0.T
        return self.base(x) + d - d0


def targets_of(m):
    return [n for n, mod in m.named_modules()
            if isinstance(mod, torch.nn.Linear) and any(n.endswith(t) for t in TARGETS)]


def build(cfg, method, rank):
    m = FluxTransformer2DModel.from_config({k: v for k, v in cfg.items() if v is not None})
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in m.parameters():
            p.add_((torch.rand(p.shape, generator=g) - 0.5) * 0.07)
    m.requires_grad_(False)
    mask = torch.zeros(rank)
    mask[: max(1, rank // 2)] = 1.0
    if method in ("lora", "tlora"):
        m = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS), m)
        if method == "tlora":
            for mod in m.modules():
                if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                    a = mod.lora_A["default"]
                    mk = mask[: a.out_features]
                    a.register_forward_hook(lambda _m, _i, out, mk=mk: out * mk)
    else:
        for name in targets_of(m):
            parent, child = name.rsplit(".", 1)
            par = m.get_submodule(parent)
            base = par[int(child)] if child.isdigit() else getattr(par, child)
            w = OrthoTLora(base, rank, mask)
            if child.isdigit():
                par[int(child)] = w
            else:
                setattr(par, child, w)
    return m.train()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--results", default=str(ROOT / "target/criterion/adapter_train_step.json"))
    ap.add_argument("--only", default=None, help="config/method")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    path = Path(a.results)
    if not path.exists():
        raise SystemExit(f"{path} missing: run `cargo bench --bench adapter_train_step` first")
    for r in json.loads(path.read_text()):
        key = f"{r['config']}/{r['method']}"
        if a.only and a.only != key:
            continue
        cfg, l, t, rank = r["transformer"], r["image_tokens"], r["text_tokens"], r["rank"]
        m = build(cfg, r["method"], rank)
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
        side = int(round(l ** 0.5))
        img_ids = torch.zeros(l, 3)
        img_ids[:, 1] = torch.arange(l) // side
        img_ids[:, 2] = torch.arange(l) % side
        x = torch.rand(1, l, cfg["in_channels"]) * 2 - 1
        target = torch.rand(1, l, cfg["in_channels"]) * 2 - 1
        ctx = torch.rand(1, t, cfg["joint_attention_dim"]) * 2 - 1
        pooled = torch.rand(1, cfg["pooled_projection_dim"]) * 2 - 1
        kw = dict(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled,
                  timestep=torch.tensor([0.5]), img_ids=img_ids, txt_ids=torch.zeros(t, 3), return_dict=False)
        if cfg.get("guidance_embeds"):
            kw["guidance"] = torch.tensor([1.0])
        times = []
        for s in range(a.steps + 2):
            t0 = time.perf_counter()
            y = m(**kw)[0]
            loss = torch.nn.functional.mse_loss(y, target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if s >= 2:
                times.append(time.perf_counter() - t0)
        times.sort()
        med = times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
        print(json.dumps({"config": r["config"], "method": r["method"], "step_median_s": med,
                          "trainable": sum(p.numel() for p in params),
                          "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


if __name__ == "__main__":
    main()
