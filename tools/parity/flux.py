"""FLUX transformer fixtures: diffusers layout (config.json + BF16 weights) and the original
BFL single-file layout (keys converted here by the inverse of diffusers'
`convert_flux_transformer_checkpoint_to_diffusers`, with a ComfyUI-style
`model.diffusion_model.` prefix and no config.json, so the loader must infer the config)."""

import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import save_file

from common import fresh_dir, perturb, round_to, sanitize_config_file, seeded, write_golden


def tiny_flux(guidance, head_dim, heads, axes, layers=2, single=2, seed=0):
    torch.manual_seed(seed)
    m = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=layers,
        num_single_layers=single,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=32,
        pooled_projection_dim=24,
        guidance_embeds=guidance,
        axes_dims_rope=axes,
    ).eval()
    perturb(m, seed + 1)
    return round_to(m, torch.bfloat16)


def img_ids(h, w, offset=(0, 0, 0)):
    ids = torch.zeros(h, w, 3)
    ids[..., 0] = offset[0]
    ids[..., 1] = torch.arange(h)[:, None] + offset[1]
    ids[..., 2] = torch.arange(w)[None, :] + offset[2]
    return ids.reshape(h * w, 3)


@torch.no_grad()
def cases(m, guidance, seed):
    tensors, cases = {}, []
    specs = [  # (batch, h, w, text tokens, txt id offset)
        (1, 4, 4, 8, 0.0),
        (2, 3, 5, 5, 1.0),
    ]
    for i, (b, h, w, t, txt_off) in enumerate(specs):
        s = seed + 100 * i
        inp = {
            "hidden_states": seeded((b, h * w, 16), s + 1),
            "encoder_hidden_states": seeded((b, t, 32), s + 2),
            "pooled_projections": seeded((b, 24), s + 3),
            "timestep": torch.rand(b, generator=torch.Generator().manual_seed(s + 4)),
            "img_ids": img_ids(h, w, (0, 0.5 * i, 0)),
            "txt_ids": torch.full((t, 3), txt_off),
        }
        if guidance:
            inp["guidance"] = torch.tensor([3.5, 1.25][:b])
        out = m(**inp, return_dict=False)[0]
        names = {}
        for k, v in inp.items():
            tensors[f"case{i}.{k}"] = v
            names[k] = f"case{i}.{k}"
        tensors[f"case{i}.sample"] = out
        cases.append({"inputs": names, "outputs": {"sample": f"case{i}.sample"}})
    return tensors, cases


TOL = {"max_abs": 1e-4, "rel_l2": 1e-5}


def diffusers_to_bfl(sd, cfg):
    """Inverse of diffusers' BFL→diffusers converter (fused qkv, linear1 = q|k|v|mlp, swapped final modulation)."""
    out = {}
    take = lambda k: sd.pop(k)
    ren = {
        "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
        "context_embedder": "txt_in",
        "x_embedder": "img_in",
        "proj_out": "final_layer.linear",
    }
    for wb in ("weight", "bias"):
        for a, b in ren.items():
            if f"{a}.{wb}" in sd:
                out[f"{b}.{wb}"] = take(f"{a}.{wb}")
        scale, shift = take(f"norm_out.linear.{wb}").chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{wb}"] = torch.cat([shift, scale], dim=0)
    for i in range(cfg["num_layers"]):
        o, t = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for wb in ("weight", "bias"):
            for a, b in [("norm1.linear", "img_mod.lin"), ("norm1_context.linear", "txt_mod.lin"),
                         ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"),
                         ("ff_context.net.0.proj", "txt_mlp.0"), ("ff_context.net.2", "txt_mlp.2"),
                         ("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj")]:
                out[f"{t}.{b}.{wb}"] = take(f"{o}.{a}.{wb}")
            out[f"{t}.img_attn.qkv.{wb}"] = torch.cat([take(f"{o}.attn.to_{x}.{wb}") for x in "qkv"])
            out[f"{t}.txt_attn.qkv.{wb}"] = torch.cat([take(f"{o}.attn.add_{x}_proj.{wb}") for x in "qkv"])
        for a, b in [("norm_q", "img_attn.norm.query_norm"), ("norm_k", "img_attn.norm.key_norm"),
                     ("norm_added_q", "txt_attn.norm.query_norm"), ("norm_added_k", "txt_attn.norm.key_norm")]:
            out[f"{t}.{b}.scale"] = take(f"{o}.attn.{a}.weight")
    for i in range(cfg["num_single_layers"]):
        o, t = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        for wb in ("weight", "bias"):
            out[f"{t}.modulation.lin.{wb}"] = take(f"{o}.norm.linear.{wb}")
            out[f"{t}.linear2.{wb}"] = take(f"{o}.proj_out.{wb}")
            out[f"{t}.linear1.{wb}"] = torch.cat(
                [take(f"{o}.attn.to_q.{wb}"), take(f"{o}.attn.to_k.{wb}"), take(f"{o}.attn.to_v.{wb}"),
                 take(f"{o}.proj_mlp.{wb}")])
        out[f"{t}.norm.query_norm.scale"] = take(f"{o}.attn.norm_q.weight")
        out[f"{t}.norm.key_norm.scale"] = take(f"{o}.attn.norm_k.weight")
    assert not sd, f"unconverted keys: {sorted(sd)[:5]}"
    return out


def generate():
    # 1. diffusers layout, guidance-distilled (dev-like), non-default RoPE axes from config.json.
    d = fresh_dir("flux_transformer_dev_diffusers")
    m = tiny_flux(guidance=True, head_dim=16, heads=2, axes=[4, 6, 6], seed=10)
    m.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
    sanitize_config_file(d / "config.json")
    m.to(torch.float32)
    tensors, cs = cases(m, True, 1000)
    write_golden(d, "flux_transformer", tensors, cs, TOL, weights="diffusion_pytorch_model.safetensors")

    # 2. BFL single file, schnell-like (no guidance embedding), head dim 128 so the RoPE axes
    #    (16, 56, 56) are inferred; prefixed keys; no config.json.
    d = fresh_dir("flux_transformer_schnell_bfl")
    m = tiny_flux(guidance=False, head_dim=128, heads=1, axes=[16, 56, 56], layers=1, single=1, seed=20)
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in m.state_dict().items()}
    bfl = diffusers_to_bfl(dict(sd), dict(m.config))
    save_file({f"model.diffusion_model.{k}": v for k, v in bfl.items()}, str(d / "flux1-tiny-schnell.safetensors"),
              metadata={"format": "pt"})
    tensors, cs = cases(m, False, 2000)
    write_golden(d, "flux_transformer", tensors, cs, TOL, weights="flux1-tiny-schnell.safetensors")


if __name__ == "__main__":
    generate()
