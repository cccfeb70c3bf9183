"""The PyTorch nano laboratory: trains the nano model's architectures (diffusers
`FluxTransformer2DModel` + transformers `CLIPTextModel`, the configs `dreamforge nano pretrain`
uses) with the same recipe — pixels folded 4x4 and packed 2x2, flow matching with logit-normal
σ shifted by `--shift`, caption dropout, AdamW + cosine with warm-up, per-tensor clipping, EMA
— on a GPU, and measures prompt fidelity with the shipped judge at chosen steps. Its purpose is
choosing a training recipe in minutes before spending a 2.5 h CPU run of dreamforge on it; the
shipped weights always come from `dreamforge nano pretrain`.

Data comes from `cargo run --release -p dreamforge-nano --example lab_io -- dump ...` (raw
arrays of fresh scenes and their token ids); samples are judged by `lab_io eval`.

    python tools/nano/torch_lab.py --data d0 d1 --heldout heldout --seen seen \
        --lab-io target/release/examples/lab_io --judge models/nano-judge/judge.safetensors \
        --config-dir models/nano --steps 3600 --eval-at 1200,2400,3600 --pred v --name base

`--attr-dropout P` leaves each size word and the position out of a caption with probability
P (the engine's `attribute_dropout`); every evaluation then also judges the held-out prompts
with sizes and position stripped ("a red circle on a blue background").

Variants: `--pred x` (the network predicts x0, trained through the velocity loss, as in JiT
"Back to Basics", 2025), `--lr`, `--batch`, `--shift`, `--width/--heads/--double/--single`,
`--fold` (pixel fold; 2 gives 256 tokens of 48 values).
"""

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def load_data(dirs, side=64):
    imgs, ids = [], []
    for d in dirs:
        d = Path(d)
        raw = np.fromfile(d / "images.u8", dtype=np.uint8)
        n = raw.size // (side * side * 3)
        imgs.append(raw.reshape(n, side, side, 3))
        ids.append(np.fromfile(d / "ids.i32", dtype=np.int32).reshape(n, -1))
    empty = np.fromfile(Path(dirs[0]) / "empty_ids.i32", dtype=np.int32)
    return np.concatenate(imgs), np.concatenate(ids), empty


def pack(x, fold):
    """[B, 3, H, W] in [-1, 1] -> [B, L, 4C] (pixel_unshuffle, then diffusers' 2x2 packing)."""
    z = F.pixel_unshuffle(x, fold)
    b, c, h, w = z.shape
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(t, fold, side):
    b, l, c4 = t.shape
    h = side // fold
    z = t.view(b, h // 2, h // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    z = z.reshape(b, c4 // 4, h, h)
    return F.pixel_shuffle(z, fold)


def img_ids(grid, device):
    ids = torch.zeros(grid, grid, 3, device=device)
    ids[..., 1] = torch.arange(grid, device=device)[:, None]
    ids[..., 2] = torch.arange(grid, device=device)[None, :]
    return ids.reshape(grid * grid, 3)


def build(a, device):
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cdir = Path(a.config_dir)
    tcfg = json.loads((cdir / "transformer/config.json").read_text())
    tcfg = {k: v for k, v in tcfg.items() if not k.startswith("_") and v is not None}
    if a.heads:
        tcfg["num_attention_heads"] = a.heads
    if a.double is not None:
        tcfg["num_layers"] = a.double
    if a.single is not None:
        tcfg["num_single_layers"] = a.single
    tcfg["in_channels"] = 3 * a.fold * a.fold * 4
    tcfg["out_channels"] = None
    torch.manual_seed(a.seed)
    transformer = FluxTransformer2DModel.from_config(tcfg)
    # adaLN-Zero, as dreamforge's FLUX init rule: modulations and the output projection zero.
    for name, m in transformer.named_modules():
        if isinstance(m, torch.nn.Linear) and (name.endswith("norm.linear") or name.endswith("norm1.linear")
                                               or name.endswith("norm1_context.linear")
                                               or name == "norm_out.linear" or name == "proj_out"):
            torch.nn.init.zeros_(m.weight)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    ccfg = json.loads((cdir / "text_encoder/config.json").read_text())
    for k in ["architectures", "projection_dim", "_name_or_path", "transformers_version", "torch_dtype", "dtype"]:
        ccfg.pop(k, None)
    text = CLIPTextModel(CLIPTextConfig(**ccfg))
    if a.init_from:
        from safetensors.torch import load_file
        d = Path(a.init_from)
        transformer.load_state_dict(load_file(d / "transformer/diffusion_pytorch_model.safetensors"))
        sd = load_file(d / "text_encoder/model.safetensors")
        own = text.state_dict()
        sd = {k if k in own else k.removeprefix("text_model."): v for k, v in sd.items()}
        missing, unexpected = text.load_state_dict(sd, strict=False)
        assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    return transformer.to(device).train(), text.to(device).train(), tcfg


class Vocab:
    """The word-level nano tokenizer's ids that attribute dropout touches."""

    def __init__(self, data_dir):
        v = json.loads((Path(data_dir) / "tokenizer/tokenizer.json").read_text())["model"]["vocab"]
        self.sizes = {v["small"], v["large"]}
        self.comma = v[","]
        self.pad = v["<|endoftext|>"]

    def drop(self, ids, p, rng):
        """`ids` [B, T] (numpy) with each size word and the position (the comma and what
        follows) left out with probability `p` each — `caption_with` in crates/nano."""
        out = np.full_like(ids, self.pad)
        for r, row in enumerate(ids.tolist()):
            end = row.index(self.pad, 1)
            words = row[1:end]
            if self.comma in words and rng.random() < p:
                words = words[: words.index(self.comma)]
            words = [w for w in words if not (w in self.sizes and rng.random() < p)]
            new = row[:1] + words + [self.pad]
            out[r, : len(new)] = new
        return out


def short_split(a, vocab, empty_len):
    """The held-out prompts with sizes and position stripped: a split folder for `evaluate`."""
    d = Path(a.work) / a.name / "short"
    d.mkdir(parents=True, exist_ok=True)
    src = Path(a.heldout)
    ids = np.fromfile(src / "ids.i32", dtype=np.int32).reshape(-1, empty_len)
    vocab.drop(ids, 1.0, np.random.default_rng(0)).astype(np.int32).tofile(d / "ids.i32")
    caps = []
    for c in (src / "captions.txt").read_text().splitlines():
        c = c.split(",")[0]
        caps.append(" ".join(w for w in c.split(" ") if w not in ("small", "large")))
    (d / "captions.txt").write_text("\n".join(caps) + "\n")
    return d


def lr_at(a, step):
    """The engine's schedule (`dreamforge_train::LrSchedule`): linear warm-up over 2 % of the
    steps, `--stable-fraction` of the rest held at the peak (warmup-stable-decay), then cosine
    to `--min-lr` of the peak."""
    warm = max(a.steps // 50, 1)
    if step < warm:
        return a.lr * (step + 1) / warm
    start = warm + round((a.steps - warm) * a.stable_fraction)
    if step < start:
        return a.lr
    p = min((step - start) / max(a.steps - start, 1), 1.0)
    return a.lr * (a.min_lr + (1 - a.min_lr) * 0.5 * (1 + math.cos(math.pi * p)))


def velocity(a, out, x_t, sigma):
    if a.pred == "v":
        return out
    s = sigma.view(-1, 1, 1).clamp_min(a.x_clamp)
    return (x_t - out) / s


@torch.no_grad()
def sample(a, transformer, text, ids, empty, gen_seed, device, cfg):
    n = ids.shape[0]
    grid = 64 // a.fold // 2
    iid = img_ids(grid, device)
    tid = torch.zeros(ids.shape[1], 3, device=device)
    g = torch.Generator(device=device).manual_seed(gen_seed)
    x = torch.randn(n, grid * grid, 3 * a.fold * a.fold * 4, generator=g, device=device)
    te = text(input_ids=ids)
    tn = text(input_ids=empty.expand(n, -1))
    sig = torch.linspace(1.0, 1.0 / a.sample_steps, a.sample_steps)
    sig = a.shift * sig / (1 + (a.shift - 1) * sig)
    sig = torch.cat([sig, torch.zeros(1)]).tolist()
    for i in range(a.sample_steps):
        s = torch.full((n,), sig[i], device=device)
        vp = velocity(a, transformer(hidden_states=x, encoder_hidden_states=te.last_hidden_state,
                                     pooled_projections=te.pooler_output, timestep=s, img_ids=iid,
                                     txt_ids=tid, return_dict=False)[0], x, s)
        vn = velocity(a, transformer(hidden_states=x, encoder_hidden_states=tn.last_hidden_state,
                                     pooled_projections=tn.pooler_output, timestep=s, img_ids=iid,
                                     txt_ids=tid, return_dict=False)[0], x, s)
        v = vn + cfg * (vp - vn)
        x = x + (sig[i + 1] - sig[i]) * v
    img = unpack(x, a.fold, 64).clamp(-1, 1)
    return ((img + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def evaluate(a, transformer, text, split_dir, tag, step, empty, device, cfg):
    d = Path(split_dir)
    ids = torch.from_numpy(np.fromfile(d / "ids.i32", dtype=np.int32).reshape(-1, empty.shape[-1])).long().to(device)
    out_dir = Path(a.work) / a.name
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = sample(a, transformer, text, ids, empty, 1000, device, cfg)
    path = out_dir / f"{tag}_cfg{cfg:g}_{step}.u8"
    samples.tofile(path)
    r = subprocess.run([a.lab_io, "eval", str(path), str(d / "captions.txt"), a.judge],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--seen")
    ap.add_argument("--lab-io", required=True)
    ap.add_argument("--judge", required=True)
    ap.add_argument("--config-dir", required=True)
    ap.add_argument("--work", default="lab_out")
    ap.add_argument("--name", default="run")
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--eval-at", default="")
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds: stop training, eval, exit")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=0.05)
    ap.add_argument("--stable-fraction", type=float, default=0.0)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--shift", type=float, default=3.0)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--attr-dropout", type=float, default=0.0)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--pred", choices=["v", "x"], default="v")
    ap.add_argument("--x-clamp", type=float, default=0.05)
    ap.add_argument("--fold", type=int, default=4)
    ap.add_argument("--heads", type=int, default=0)
    ap.add_argument("--double", type=int)
    ap.add_argument("--single", type=int)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--cfg-also", default="", help="more CFG scales to evaluate on held-out prompts")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-from", help="a diffusers nano bundle to start from (--steps 0: just evaluate it)")
    ap.add_argument("--tf32", action="store_true",
                    help="TF32 matrix products on the GPU (faster sweeps; the engine computes in f32)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    t_start = time.time()
    device = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    imgs, ids, empty = load_data(a.data)
    vocab = Vocab(a.data[0])
    ids_np = ids
    drop_rng = np.random.default_rng(a.seed + 2)
    short = short_split(a, vocab, ids.shape[1]) if a.attr_dropout > 0 else None
    imgs = torch.from_numpy(imgs).to(device)
    ids = torch.from_numpy(ids).long().to(device)
    empty = torch.from_numpy(empty).long().to(device).view(1, -1)
    transformer, text, tcfg = build(a, device)
    params = list(transformer.parameters()) + list(text.parameters())
    ema = [p.detach().clone() for p in params]
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, a.beta2), weight_decay=0.0)
    grid = 64 // a.fold // 2
    iid = img_ids(grid, device)
    tid = torch.zeros(ids.shape[1], 3, device=device)
    evals = {int(s) for s in a.eval_at.split(",") if s} | {a.steps}
    g = torch.Generator(device=device).manual_seed(a.seed + 1)
    log = {"name": a.name, "args": vars(a), "params": n_params, "evals": []}
    print(json.dumps({"name": a.name, "params": n_params, "data": imgs.shape[0]}), flush=True)
    losses = []
    t0 = time.time()

    def run_eval(step):
        live = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
        transformer.eval(), text.eval()
        rec = {"step": step, "train_s": round(time.time() - t0, 1),
               "loss": float(np.mean(losses[-100:])) if losses else None}
        for tag, d in [("heldout", a.heldout), ("seen", a.seen), ("short", short)]:
            if d:
                rec[tag] = evaluate(a, transformer, text, d, tag, step, empty, device, a.cfg)
        for c in [float(c) for c in a.cfg_also.split(",") if c]:
            rec[f"heldout_cfg{c:g}"] = evaluate(a, transformer, text, a.heldout, "heldout", step, empty, device, c)
        transformer.train(), text.train()
        with torch.no_grad():
            for p, l in zip(params, live):
                p.copy_(l)
        log["evals"].append(rec)
        print(json.dumps(rec), flush=True)

    if a.steps == 0:
        run_eval(0)
    for step in range(a.steps):
        if time.time() - t_start > a.deadline:
            run_eval(step)
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(a, step)
        idx = torch.randint(0, imgs.shape[0], (a.batch,), device=device, generator=g)
        x = imgs[idx].permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x0 = pack(x, a.fold)
        if a.attr_dropout > 0:
            tok = torch.from_numpy(vocab.drop(ids_np[idx.cpu().numpy()], a.attr_dropout, drop_rng)).long().to(device)
        else:
            tok = ids[idx]
        drop = torch.rand(a.batch, device=device, generator=g) < a.dropout
        tok = torch.where(drop[:, None], empty.expand(a.batch, -1), tok)
        sig = torch.sigmoid(torch.randn(a.batch, device=device, generator=g))
        sig = a.shift * sig / (1 + (a.shift - 1) * sig)
        noise = torch.randn(x0.shape, device=device, generator=g)
        s = sig.view(-1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        te = text(input_ids=tok)
        out = transformer(hidden_states=x_t, encoder_hidden_states=te.last_hidden_state,
                          pooled_projections=te.pooler_output, timestep=sig, img_ids=iid, txt_ids=tid,
                          return_dict=False)[0]
        loss = F.mse_loss(velocity(a, out, x_t, sig), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.clip:
            # Per-tensor clipping (Burn's GradientClippingConfig::Norm), batched.
            grads = [p.grad for p in params if p.grad is not None]
            norms = torch._foreach_norm(grads)
            torch._foreach_mul_(grads, [(a.clip / (n + 1e-6)).clamp(max=1.0) for n in norms])
        opt.step()
        d = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - d)
        if step % 10 == 0:
            losses.append(loss.item())
        if step + 1 in evals:
            run_eval(step + 1)
    log["total_s"] = round(time.time() - t_start, 1)
    out = Path(a.work) / a.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
