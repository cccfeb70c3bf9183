"""Single-file Stable Diffusion checkpoint fixtures (kind `sd_single_file`): tiny diffusers /
transformers components written into ONE original-LDM-layout `.safetensors` per fixture by a
hand-written diffusers→LDM converter, then checked against diffusers' own LDM→diffusers
converters (`loaders/single_file_utils.py`: `convert_ldm_vae_checkpoint`,
`convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`), which must give back the exact
original state dicts. That proves the file is a true LDM layout, not just what our loader reads.

1. `sd1_single_file`: SD-style AutoencoderKL (F16) under `first_stage_model.` + CLIP-L-style
   `CLIPTextModel` (F32, quick_gelu) under `cond_stage_model.transformer.text_model.` with its
   `position_ids` buffer, plus DDPM schedule tables and `model_ema.*` counters.
2. `sd2_single_file`: an OpenCLIP-layout ViT-H-style tower (F32, gelu) under
   `cond_stage_model.model.` with fused `in_proj`, `positional_embedding`, a `[D, D]`
   `text_projection`, `logit_scale`, `attn_mask`, and ONE EXTRA LAST resblock: diffusers' SD2
   text encoder has one layer fewer than the file (`SD_2_TEXT_ENCODER_KEYS_TO_IGNORE` drops
   `resblocks.23` of 24 and `text_projection`), so the golden model is the tower without it.
   F16 text encoder, F32 schedule tables, and no VAE (detection must report that).
3. `sdxl_single_file`: VAE (F16) + CLIP-L-style (BF16) under `conditioner.embedders.0.transformer.`
   + bigG-style `CLIPTextModelWithProjection` (F32, gelu) under `conditioner.embedders.1.model.`
   with the `text_projection` stored `[D, P]` (`x @ W`).

Hidden sizes are 64 with head dim 64 (every SD text encoder has head dim 64; single files do not
record the head count). The VAE uses 2 groups where LDM hard-codes 32 (a 32-group VAE is too big
for a committed fixture); golden.json records that as `vae_config_overrides`, the one field the
shapes cannot tell. There is no UNet part: diffusers ships no diffusers→LDM UNet converter.
"""

import re

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import (
    SD_2_TEXT_ENCODER_KEYS_TO_IGNORE,
    convert_ldm_clip_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from common import fresh_dir, perturb, round_to, seeded, write_golden

TOL = {"max_abs": 1e-4, "rel_l2": 1e-5}
VOCAB = 64
MAX_POS = 12
HIDDEN = 64
INNER = 32  # != HIDDEN, so a transposed MLP matrix cannot pass a shape check
PROJ = 32
VAE_GROUPS = 2


# ---------------------------------------------------------------- tiny components


def tiny_vae(seed):
    torch.manual_seed(seed)
    m = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(4, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=VAE_GROUPS,
        sample_size=32,
    ).eval()
    perturb(m, seed + 1, scale=0.05)
    return m


def tiny_clip(cls, act, seed, layers=2):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INNER,
        projection_dim=PROJ,
        num_hidden_layers=layers,
        num_attention_heads=HIDDEN // 64,
        max_position_embeddings=MAX_POS,
        hidden_act=act,
        layer_norm_eps=1e-5,
        # The legacy ids of diffusers' SD / SDXL text-encoder configs (pooling at argmax(ids)).
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    m = cls(cfg).eval()
    perturb(m, seed + 1)
    return m


def text_sd(m):
    """A transformers CLIP state dict without the `text_model.` tower (transformers 5 drops it
    for CLIPTextModel but keeps it for CLIPTextModelWithProjection)."""
    return {k.removeprefix("text_model."): v for k, v in m.state_dict().items()}


# ---------------------------------------------------------------- diffusers -> LDM converters


def vae_to_ldm(sd, levels):
    """Inverse of `convert_ldm_vae_checkpoint` (+ 1x1-conv attention weights, as LDM stores them)."""
    out = {}
    resnet = {"conv_shortcut": "nin_shortcut"}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for k, v in sd.items():
        n = k
        n = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", n)
        n = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", n)
        n = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", n)
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.(.*)$", n)
        if m:
            ldm = levels - 1 - int(m.group(1))
            rest = m.group(2)
            rest = re.sub(r"^resnets\.(\d+)\.", r"block.\1.", rest)
            rest = rest.replace("upsamplers.0.", "upsample.")
            n = f"decoder.up.{ldm}.{rest}"
        n = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.",
                   lambda mm: f"{mm.group(1)}.mid.block_{int(mm.group(2)) + 1}.", n)
        m = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", n)
        if m:
            n = f"{m.group(1)}.mid.attn_1.{attn[m.group(2)]}.{m.group(3)}"
            if m.group(3) == "weight" and m.group(2) != "group_norm":
                v = v[:, :, None, None]
        for a, b in resnet.items():
            n = n.replace(f".{a}.", f".{b}.")
        out[n] = v
    return out


def open_clip_layer(sd, i, dst):
    """One transformers encoder layer `i` → OpenCLIP `resblocks.{dst}` (fused in_proj)."""
    p = f"encoder.layers.{i}."
    t = f"transformer.resblocks.{dst}."
    out = {}
    for wb in ("weight", "bias"):
        out[f"{t}attn.in_proj_{wb}"] = torch.cat([sd[f"{p}self_attn.{q}_proj.{wb}"] for q in "qkv"], 0)
        for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                     ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            out[f"{t}{b}.{wb}"] = sd[f"{p}{a}.{wb}"]
    return out


def clip_to_open_clip(sd, layers):
    """Inverse of `convert_open_clip_checkpoint` for a transformers CLIP state dict."""
    out = {
        "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_final.weight": sd["final_layer_norm.weight"],
        "ln_final.bias": sd["final_layer_norm.bias"],
    }
    for i in range(layers):
        out.update(open_clip_layer(sd, i, i))
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].T.contiguous()  # [D, P] for x @ W
    return out


def open_clip_buffers():
    """The non-weight tensors of an OpenCLIP text tower: `logit_scale` and the causal mask."""
    return {
        "logit_scale": torch.tensor(4.6052),
        "attn_mask": torch.full((MAX_POS, MAX_POS), float("-inf")).triu_(1),
    }


def ldm_extras():
    """DDPM schedule tables and EMA counters a real LDM training checkpoint carries."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    return {
        "alphas_cumprod": ac.float(),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(0, dtype=torch.int32),
    }


def prefixed(prefix, sd, dtype=None):
    return {f"{prefix}{k}": (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
            for k, v in sd.items()}


# ---------------------------------------------------------------- checks with diffusers' converters


def same(a, b, what):
    ka, kb = set(a), set(b)
    assert ka == kb, f"{what}: keys differ: only converted {sorted(ka - kb)[:5]}, only original {sorted(kb - ka)[:5]}"
    for k in ka:
        assert a[k].shape == b[k].shape, f"{what}: {k} shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
        assert torch.equal(a[k].float(), b[k].float()), f"{what}: {k} values differ"


def check_vae(ckpt, vae):
    cfg = {"down_block_types": vae.config.down_block_types, "up_block_types": vae.config.up_block_types}
    got = convert_ldm_vae_checkpoint(ckpt, cfg)
    same(got, vae.state_dict(), "convert_ldm_vae_checkpoint")


def check_hf_clip(ckpt, model, root):
    got = convert_ldm_clip_checkpoint(ckpt)
    got = {k.removeprefix("text_model."): v for k, v in got.items() if k.startswith("text_model.")}
    assert any(k.startswith(root) for k in ckpt)
    want = text_sd(model)
    extra = set(got) - set(want)
    assert extra == {"embeddings.position_ids"}, extra
    del got["embeddings.position_ids"]
    same(got, want, "convert_ldm_clip_checkpoint")


def check_open_clip(ckpt, model, prefix, dropped_layer=None):
    got = convert_open_clip_checkpoint(model, ckpt, prefix=prefix)
    got = {k.removeprefix("text_model."): v for k, v in got.items()}
    if dropped_layer is not None:
        # Real SD2 files hold 24 resblocks and diffusers ignores index 23 by name; the tiny file's
        # extra last layer stands for it. Check the ignore list is one whole layer + projection.
        ignored = [k.removeprefix(prefix) for k in SD_2_TEXT_ENCODER_KEYS_TO_IGNORE]
        layer_keys = sorted(k.removeprefix("transformer.resblocks.23.") for k in ignored if "resblocks.23." in k)
        last = f"{prefix}transformer.resblocks.{dropped_layer}."
        ours = sorted(k.removeprefix(last) for k in ckpt if k.startswith(last))
        assert layer_keys == ours, (layer_keys, ours)
        assert "text_projection" in ignored
        extra = {k for k in got if k.startswith(f"encoder.layers.{dropped_layer}.")}
        assert len(extra) == 16, extra  # q/k/v split + out_proj + 2 norms + 2 mlp, weight and bias
        for k in extra:
            del got[k]
    same(got, text_sd(model), "convert_open_clip_checkpoint")


# ---------------------------------------------------------------- goldens


def prompt_ids(n_tokens, length, pad, seed):
    """bos, `n_tokens` random ids, eos (the largest id, so argmax pooling finds it), padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((length,), pad, dtype=torch.int64)
    ids[0] = VOCAB - 2
    ids[1 : 1 + n_tokens] = torch.randint(3, VOCAB - 2, (n_tokens,), generator=g)
    ids[1 + n_tokens] = VOCAB - 1
    return ids


@torch.no_grad()
def vae_cases(m, seed, tensors, cases):
    for b, h, w in [(1, 16, 16), (1, 15, 9)]:
        i = len(cases)
        x = seeded((b, 3, h, w), seed + i)
        post = m.encode(x).latent_dist
        tensors.update({f"case{i}.sample": x, f"case{i}.latent_mean": post.mean,
                        f"case{i}.latent_logvar": post.logvar})
        cases.append({"component": "vae", "inputs": {"sample": f"case{i}.sample"},
                      "outputs": {"latent_mean": f"case{i}.latent_mean", "latent_logvar": f"case{i}.latent_logvar"}})
    for b, h, w in [(2, 4, 6)]:
        i = len(cases)
        z = seeded((b, 4, h, w), seed + i)
        tensors.update({f"case{i}.latent": z, f"case{i}.sample": m.decode(z).sample})
        cases.append({"component": "vae", "inputs": {"latent": f"case{i}.latent"},
                      "outputs": {"sample": f"case{i}.sample"}})


@torch.no_grad()
def text_cases(m, component, pad, seed, tensors, cases):
    for rows in ([(4, MAX_POS), (9, MAX_POS)], [(3, 7)]):
        i = len(cases)
        ids = torch.stack([prompt_ids(n, t, pad, seed + 10 * i + j) for j, (n, t) in enumerate(rows)])
        out = m(input_ids=ids, output_hidden_states=True)
        got = {"last_hidden_state": out.last_hidden_state, "penultimate_hidden_state": out.hidden_states[-2]}
        if getattr(out, "text_embeds", None) is not None:
            got["text_embeds"] = out.text_embeds
        else:
            got["pooler_output"] = out.pooler_output
        tensors[f"case{i}.input_ids"] = ids
        for k, v in got.items():
            tensors[f"case{i}.{component}.{k}"] = v
        cases.append({"component": component, "inputs": {"input_ids": f"case{i}.input_ids"},
                      "outputs": {k: f"case{i}.{component}.{k}" for k in got}})


def text_expect(m, act, projection):
    c = m.config
    return {"vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "max_position_embeddings": c.max_position_embeddings, "hidden_act": act,
            "projection_dim": projection, "eos_token_id": 2}


def write(name, ckpt, variant, scaling, tensors, cases, text_encoders, has_vae=True):
    d = fresh_dir(name)
    save_file({k: v.contiguous() for k, v in ckpt.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
    expect = {"variant": variant, "inpainting": False, "has_vae": has_vae, "has_text_encoders": True,
              "text_encoders": text_encoders}
    if has_vae:
        expect["vae_scaling_factor"] = scaling
    extra = {"vae_config_overrides": {"norm_num_groups": VAE_GROUPS}} if has_vae else {}
    write_golden(d, "sd_single_file", tensors, cases, TOL, weights="model.safetensors", expect=expect, **extra)


# ---------------------------------------------------------------- fixtures


def sd1():
    vae = round_to(tiny_vae(100), torch.float16)
    te = round_to(tiny_clip(CLIPTextModel, "quick_gelu", 110, layers=1), torch.float32)
    root = "cond_stage_model.transformer."
    ckpt = {}
    ckpt.update(prefixed("first_stage_model.", vae_to_ldm(vae.state_dict(), 2), torch.float16))
    ckpt.update(prefixed(f"{root}text_model.", text_sd(te), torch.float32))
    ckpt[f"{root}text_model.embeddings.position_ids"] = torch.arange(MAX_POS, dtype=torch.int64)[None]
    ckpt.update(ldm_extras())
    check_vae(ckpt, vae)
    check_hf_clip(ckpt, te, root)
    tensors, cases = {}, []
    vae_cases(vae, 1000, tensors, cases)
    text_cases(te, "text_encoder", VOCAB - 1, 1100, tensors, cases)
    write("sd1_single_file", ckpt, "sd1", 0.18215, tensors, cases,
          {"text_encoder": text_expect(te, "quick_gelu", None)})


def sd2():
    te = round_to(tiny_clip(CLIPTextModel, "gelu", 210), torch.float16)
    # The tower the file holds: the golden model's 2 layers + 1 extra last layer + a [D, D] projection.
    extra_sd = text_sd(round_to(tiny_clip(CLIPTextModel, "gelu", 220, layers=1), torch.float16))
    prefix = "cond_stage_model.model."
    tower = clip_to_open_clip(text_sd(te), 2)
    tower.update(open_clip_layer(extra_sd, 0, 2))
    tower["text_projection"] = seeded((HIDDEN, HIDDEN), 230, 0.02)  # real SD2: [1024, 1024], unused
    tower.update(open_clip_buffers())
    # No VAE (detection must say so); F16 text encoder beside F32 schedule tables.
    ckpt = prefixed(prefix, tower, torch.float16)
    ckpt.update(ldm_extras())
    check_open_clip(ckpt, te, prefix, dropped_layer=2)
    tensors, cases = {}, []
    text_cases(te, "text_encoder", 0, 2100, tensors, cases)
    write("sd2_single_file", ckpt, "sd2", None, tensors, cases,
          {"text_encoder": text_expect(te, "gelu", None)}, has_vae=False)


def sdxl():
    vae = round_to(tiny_vae(300), torch.float16)
    te1 = round_to(tiny_clip(CLIPTextModel, "quick_gelu", 310, layers=1), torch.bfloat16)
    te2 = round_to(tiny_clip(CLIPTextModelWithProjection, "gelu", 320), torch.float16)
    root1, prefix2 = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
    ckpt = {}
    ckpt.update(prefixed("first_stage_model.", vae_to_ldm(vae.state_dict(), 2), torch.float16))
    ckpt.update(prefixed(f"{root1}text_model.", text_sd(te1), torch.bfloat16))
    ckpt[f"{root1}text_model.embeddings.position_ids"] = torch.arange(MAX_POS, dtype=torch.int64)[None]
    tower = clip_to_open_clip(text_sd(te2), 2)
    tower["logit_scale"] = open_clip_buffers()["logit_scale"]
    ckpt.update(prefixed(prefix2, tower, torch.float16))
    ckpt.update(ldm_extras())
    check_vae(ckpt, vae)
    check_hf_clip(ckpt, te1, root1)
    check_open_clip(ckpt, te2, prefix2)
    tensors, cases = {}, []
    vae_cases(vae, 3000, tensors, cases)
    text_cases(te1, "text_encoder", VOCAB - 1, 3100, tensors, cases)
    text_cases(te2, "text_encoder_2", 0, 3200, tensors, cases)
    write("sdxl_single_file", ckpt, "sdxl", 0.13025, tensors, cases,
          {"text_encoder": text_expect(te1, "quick_gelu", None),
           "text_encoder_2": text_expect(te2, "gelu", PROJ)})


def generate():
    sd1()
    sd2()
    sdxl()


if __name__ == "__main__":
    generate()
