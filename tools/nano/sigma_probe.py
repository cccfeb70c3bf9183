"""Where along the sampling trajectory does a nano model lose what the prompt asks for?

Takes ground-truth scenes (dumped by `lab_io dump`), noises each to the σ of sampling step k
(Euler, 20 steps, the bundle's shift) with fixed noise, runs the remaining steps with the model
(true CFG, optionally only above a σ threshold — a guidance interval), and judges the results
with the shipped judge (`lab_io eval`). k = 0 is ordinary sampling from pure noise; a late k
shows how much of a correct picture the model keeps in its last steps. One JSON line per k.

    cargo run --release -p dreamforge-nano --example lab_io -- dump /tmp/held 200 777 held-out
    python tools/nano/sigma_probe.py --model models/nano --data /tmp/held \\
        --lab-io target/release/examples/lab_io --ks 0,8,14,18 [--cfg 4] [--cfg-above 0]

Runs on the CPU (PyTorch, the same diffusers / transformers architectures as torch_lab.py).
"""

import argparse
import json
import subprocess
import types
from pathlib import Path

import torch

import torch_lab as lab


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/nano")
    ap.add_argument("--data", required=True, help="a lab_io dump (images.u8, ids.i32, captions.txt)")
    ap.add_argument("--lab-io", required=True)
    ap.add_argument("--judge", default="models/nano-judge/judge.safetensors")
    ap.add_argument("--ks", default="0,4,8,10,12,14,16,18")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--shift", type=float, default=3.0)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--cfg-above", type=float, default=0.0, help="CFG only while σ > this (else 1)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--noise-seed", type=int, default=5)
    ap.add_argument("--work", default="/tmp/sigma_probe")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = types.SimpleNamespace(config_dir=a.model, heads=0, double=None, single=None, fold=4,
                                seed=0, init_from=a.model)
    transformer, text, _ = lab.build(cfg, "cpu")
    transformer.eval(), text.eval()
    imgs, ids, empty = lab.load_data([a.data])
    n = min(a.n, imgs.shape[0])
    x0 = lab.pack(torch.from_numpy(imgs[:n]).permute(0, 3, 1, 2).float() / 127.5 - 1.0, 4)
    ids = torch.from_numpy(ids[:n]).long()
    empty = torch.from_numpy(empty).long().view(1, -1)
    iid, tid = lab.img_ids(8, "cpu"), torch.zeros(ids.shape[1], 3)
    sig = torch.linspace(1.0, 1.0 / a.steps, a.steps)
    sig = (a.shift * sig / (1 + (a.shift - 1) * sig)).tolist() + [0.0]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(a.noise_seed))
    captions = Path(a.data) / "captions.txt"
    prompts = Path(a.work) / "captions.txt"
    Path(a.work).mkdir(parents=True, exist_ok=True)
    prompts.write_text("".join(l + "\n" for l in captions.read_text().splitlines()[:n]))
    with torch.no_grad():
        cond, uncond = text(input_ids=ids), text(input_ids=empty.expand(n, -1))

        def velocity(x, s, scale):
            t = torch.full((n,), s)
            run = lambda e: transformer(hidden_states=x, encoder_hidden_states=e.last_hidden_state,
                                        pooled_projections=e.pooler_output, timestep=t,
                                        img_ids=iid, txt_ids=tid, return_dict=False)[0]
            vc = run(cond)
            if scale == 1.0:
                return vc
            vu = run(uncond)
            return vu + scale * (vc - vu)

        for k in [int(k) for k in a.ks.split(",")]:
            x = (1 - sig[k]) * x0 + sig[k] * noise
            for i in range(k, a.steps):
                scale = a.cfg if sig[i] > a.cfg_above else 1.0
                x = x + (sig[i + 1] - sig[i]) * velocity(x, sig[i], scale)
            img = lab.unpack(x, 4, 64).clamp(-1, 1)
            u8 = ((img + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
            path = Path(a.work) / f"start{k}.u8"
            u8.tofile(path)
            r = subprocess.run([a.lab_io, "eval", str(path), str(prompts), a.judge],
                               capture_output=True, text=True, check=True)
            judged = json.loads(r.stdout.strip().splitlines()[-1])
            print(json.dumps({"start_step": k, "start_sigma": round(sig[k], 3), "cfg": a.cfg,
                              "cfg_above": a.cfg_above, **judged}), flush=True)


if __name__ == "__main__":
    main()
