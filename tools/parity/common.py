"""Shared helpers for the parity-fixture generators (see shared/design/PARITY.md).

Every generator: builds a tiny model with the reference library, perturbs every parameter with
seeded noise, rounds the weights to the dtype real checkpoints use, saves them exactly as
`save_pretrained` does, and computes goldens in f32 from the rounded values.
"""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "parity"


def versions():
    import diffusers
    import safetensors
    import tokenizers
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "tokenizers": tokenizers.__version__,
    }


def fresh_dir(name):
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


@torch.no_grad()
def perturb(module, seed, scale=0.02):
    """Adds seeded noise to every parameter so dropped tensors cannot hide (norms != 1, biases != 0)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(module.named_parameters()):
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        p.add_(noise * (0.1 if "norm" in name else scale))


@torch.no_grad()
def round_to(module, dtype):
    """Rounds parameters to `dtype` and back to f32 in place; returns the module."""
    for p in module.parameters():
        p.copy_(p.to(dtype).to(torch.float32))
    for b in module.buffers():
        if b.is_floating_point():
            b.copy_(b.to(dtype).to(torch.float32))
    return module


def sanitize(obj):
    """Non-finite floats become strings so strict JSON parsers work."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {k: sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    return obj


def write_json(path, obj):
    Path(path).write_text(json.dumps(sanitize(obj), indent=2, allow_nan=False, sort_keys=False) + "\n")


def sanitize_config_file(path):
    """Rewrites a saved config.json with non-finite values as strings."""
    cfg = json.loads(Path(path).read_text())
    write_json(path, cfg)


def write_golden(d, kind, tensors, cases, tolerance, **extra):
    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        out[k] = v if v.dtype in (torch.int64,) else v.to(torch.float32)
    save_file(out, str(d / "golden.safetensors"))
    golden = {"kind": kind, **extra, "tolerance": tolerance, "cases": cases, "versions": versions()}
    write_json(d / "golden.json", golden)


def seeded(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32) * scale
