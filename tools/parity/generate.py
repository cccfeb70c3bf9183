"""Writes every committed parity fixture under tests/fixtures/parity/.

    python -m venv .venv && .venv/bin/pip install -r tools/parity/requirements.txt
    .venv/bin/python tools/parity/generate.py [family ...]

Families: flux, flux_pipeline, lora, scheduler, sd_pipeline, single_file, vae, clip, t5, tokenizer. Deterministic: re-running
rewrites identical fixtures on the same pinned versions.
"""

import sys

import torch

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

import clip  # noqa: E402
import flux  # noqa: E402
import flux_pipeline  # noqa: E402
import lora  # noqa: E402
import scheduler  # noqa: E402
import sd_pipeline  # noqa: E402
import single_file  # noqa: E402
import t5  # noqa: E402
import tokenizer  # noqa: E402
import unet  # noqa: E402
import vae  # noqa: E402

FAMILIES = {
    "flux": flux.generate,
    "flux_pipeline": flux_pipeline.generate,
    "lora": lora.generate,
    "scheduler": scheduler.generate,
    "sd_pipeline": sd_pipeline.generate,
    "single_file": single_file.generate,
    "vae": vae.generate,
    "clip": clip.generate,
    "t5": t5.generate,
    "tokenizer": tokenizer.generate,
    "unet": unet.generate,
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(FAMILIES)
    for n in names:
        print(f"generating {n}")
        FAMILIES[n]()
