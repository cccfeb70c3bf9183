"""Prodigy optimizer fixture for `crates/train/src/prodigy.rs` (its `parity_with_prodigyopt` test).

Reference: `prodigyopt==1.1.2` (`prodigyopt/prodigy.py`, Mishchenko & Defazio), with the pinned
torch of `requirements.txt`. Install the reference next to it: `pip install prodigyopt==1.1.2`.

A tiny regression problem: a 2-layer MLP (Linear 4→8, tanh, Linear 8→1) with seeded weights,
fixed inputs and targets, MSE loss; 6 Prodigy steps at the learning rates `lr` (a cosine-like
decay, set on the param group before each step, as a scheduler does) for each case below. Saves
to `crates/train/tests/fixtures/prodigy.safetensors`:

- `x` [16, 4], `y` [16, 1], `lr` [6] (f64), `init.{0,2}.{weight,bias}` (PyTorch layout: a
  Linear's weight is [out, in]);
- per case `c` and step `i` (0-based, after the step): `c.i.{0,2}.{weight,bias}`, `c.i.d` [1]
  (f64, the group's `d` after the step), `c.i.loss` [1] (the loss the step's gradient came from);
- metadata `cases`: JSON {case: Prodigy keyword arguments}, `versions`.

Run: `python tools/parity/prodigy.py` (from anywhere).
"""

import json
from importlib.metadata import version
from pathlib import Path

import torch
from prodigyopt import Prodigy
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "train" / "tests" / "fixtures" / "prodigy.safetensors"

LRS = [1.0, 1.0, 0.9, 0.7, 0.5, 0.3]

# Prodigy keyword arguments per case (lr is set per step from LRS). d0 above the default in the
# later cases makes the weights move visibly within 6 steps.
CASES = {
    "plain": dict(weight_decay=0.01),
    "bias_correction": dict(weight_decay=0.01, use_bias_correction=True, d0=1e-3),
    "coupled": dict(
        weight_decay=0.01,
        decouple=False,
        safeguard_warmup=True,
        d0=1e-3,
        d_coef=2.0,
        growth_rate=1.5,
        beta3=0.99,
        betas=(0.8, 0.99),
        eps=1e-6,
    ),
    # β1 = 0: no first moment, the step uses the gradient itself.
    "no_momentum": dict(weight_decay=0.01, betas=(0.0, 0.999), d0=1e-3),
}


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def main():
    assert version("prodigyopt") == "1.1.2", version("prodigyopt")
    torch.manual_seed(1)
    x = torch.randn(16, 4)
    y = torch.sin(x).sum(1, keepdim=True)
    out = {"x": x, "y": y, "lr": torch.tensor(LRS, dtype=torch.float64)}
    for name, p in model().named_parameters():
        out[f"init.{name}"] = p.detach().clone()
    for case, kwargs in CASES.items():
        net = model()
        opt = Prodigy(net.parameters(), lr=1.0, **kwargs)
        for i, lr in enumerate(LRS):
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad()
            loss = ((net(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            for name, p in net.named_parameters():
                out[f"{case}.{i}.{name}"] = p.detach().clone()
            out[f"{case}.{i}.d"] = torch.tensor([opt.param_groups[0]["d"]], dtype=torch.float64)
            out[f"{case}.{i}.loss"] = torch.tensor([loss.item()], dtype=torch.float64)
        print(case, "d after each step:", [float(out[f"{case}.{i}.d"]) for i in range(len(LRS))])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "cases": json.dumps(CASES),
        "versions": json.dumps({"torch": torch.__version__, "prodigyopt": version("prodigyopt")}),
    }
    save_file({k: v.contiguous() for k, v in out.items()}, OUT, metadata=meta)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
