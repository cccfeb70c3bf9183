"""UNet2DConditionModel fixtures (kind `unet_2d_condition`), all tiny (GroupNorm 4, 8-16
channels) and F16 as SD checkpoints are stored:

- unet_sd1_tiny: SD1-shaped (CrossAttnDown + Down, Up + CrossAttnUp, 1x1-conv proj_in/out,
  `attention_head_dim` an int = heads); batch 2 non-square with timesteps 999 / 1.5, and an odd
  size (7x9) that makes upstream forward `upsample_size`.
- unet_sd2_tiny: three levels, linear projections, `attention_head_dim` a list, `layers_per_block`
  a list, `upcast_attention`. It also carries the rarer constructor options the loader accepts
  (`flip_sin_to_cos` false, `freq_shift` 1, `downsample_padding` 0, `mid_block_scale_factor`,
  `only_cross_attention` on the middle level and on the last, where upstream's mid block ignores
  it, `center_input_sample`, `time_embedding_dim`) so each code path is pinned; one case broadcasts a single timestep over batch 2.
- unet_sdxl_tiny: `addition_embed_type: "text_time"` (inputs `text_embeds`, `time_ids`),
  `transformer_layers_per_block: [1, 2]`, DownBlock2D first as in SDXL.
- unet_sd1_inpaint_ldm_tiny: 9 input channels, saved as an original LDM single file
  (`model.diffusion_model.*`, plus a few non-UNet tensors as real files have) by `to_ldm` below;
  diffusers' own `convert_ldm_unet_checkpoint` must map it back to the exact state dict.
- unet_sdxl_ldm_tiny: the SGM (SDXL) single-file layout with `label_emb` (narrower than
  unet_sdxl_tiny to keep the set small).

The LDM fixtures keep `config.json` beside the file (`"layout": "ldm"` in golden.json is only
informative: the harness detects the layout from the keys).
"""

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from safetensors.torch import save_file

from common import fresh_dir, perturb, round_to, sanitize_config_file, seeded, write_golden

TOL = {"max_abs": 1e-4, "rel_l2": 1e-5}
LDM_PREFIX = "model.diffusion_model."

RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def tiny_unet(seed, **kw):
    torch.manual_seed(seed)
    m = UNet2DConditionModel(sample_size=8, norm_num_groups=4, **kw).eval()
    perturb(m, seed + 1, scale=0.05)
    return m


def sd1(in_channels=4):
    return dict(
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,
        attention_head_dim=2,
    )


def sd2():
    return dict(
        block_out_channels=(8, 8, 16),
        layers_per_block=[1, 2, 1],
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,
        attention_head_dim=[1, 2, 2],
        use_linear_projection=True,
        upcast_attention=True,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        mid_block_scale_factor=1.4142,
        only_cross_attention=[False, True, True],
        center_input_sample=True,
        time_embedding_dim=24,
    )


def sdxl(pooled, time_dim, channels=(8, 16), cross=16):
    return dict(
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=[1, 2],
        cross_attention_dim=cross,
        attention_head_dim=[1, 2],
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=pooled + 6 * time_dim,
    )


def to_ldm(sd, cfg):
    """diffusers UNet state dict -> original LDM names (without the prefix): the inverse of
    diffusers' `convert_ldm_unet_checkpoint`, generalised to per-level `layers_per_block`."""
    n = len(cfg["block_out_channels"])
    lpb = cfg["layers_per_block"]
    lpb = [lpb] * n if isinstance(lpb, int) else list(lpb)
    out = {}

    def move(ours, theirs, resnet=False):
        hits = [k for k in sd if k.startswith(ours + ".")]
        assert hits, f"nothing under {ours}"
        for k in hits:
            rest = k[len(ours) + 1:]
            if resnet:
                part, tail = rest.split(".", 1)
                rest = f"{RESNET_PARTS[part]}.{tail}"
            out[f"{theirs}.{rest}"] = sd[k]

    move("conv_in", "input_blocks.0.0")
    move("time_embedding.linear_1", "time_embed.0")
    move("time_embedding.linear_2", "time_embed.2")
    if cfg.get("addition_embed_type") == "text_time":
        move("add_embedding.linear_1", "label_emb.0.0")
        move("add_embedding.linear_2", "label_emb.0.2")
    move("conv_norm_out", "out.0")
    move("conv_out", "out.2")
    i = 1
    for b in range(n):
        attn = cfg["down_block_types"][b].startswith("CrossAttn")
        for j in range(lpb[b]):
            move(f"down_blocks.{b}.resnets.{j}", f"input_blocks.{i}.0", resnet=True)
            if attn:
                move(f"down_blocks.{b}.attentions.{j}", f"input_blocks.{i}.1")
            i += 1
        if b + 1 < n:
            move(f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{i}.0.op")
            i += 1
    if cfg.get("mid_block_type") is not None:
        move("mid_block.resnets.0", "middle_block.0", resnet=True)
        move("mid_block.attentions.0", "middle_block.1")
        move("mid_block.resnets.1", "middle_block.2", resnet=True)
    o = 0
    for u in range(n):
        attn = cfg["up_block_types"][u].startswith("CrossAttn")
        layers = lpb[n - 1 - u] + 1
        for j in range(layers):
            move(f"up_blocks.{u}.resnets.{j}", f"output_blocks.{o}.0", resnet=True)
            if attn:
                move(f"up_blocks.{u}.attentions.{j}", f"output_blocks.{o}.1")
            if j + 1 == layers and u + 1 < n:
                move(f"up_blocks.{u}.upsamplers.0.conv", f"output_blocks.{o}.{2 if attn else 1}.conv")
            o += 1
    assert len(out) == len(sd), f"{len(sd) - len(out)} diffusers keys left unmapped"
    return out


@torch.no_grad()
def run_cases(m, specs, seed, text_time=None):
    """specs: (batch, h, w, timesteps, tokens); text_time: list of (pooled, time_ids) per case."""
    tensors, cases = {}, []
    cfg = m.config
    for i, (b, h, w, ts, tokens) in enumerate(specs):
        x = seeded((b, cfg.in_channels, h, w), seed + 10 * i)
        t = torch.tensor(ts, dtype=torch.float32)
        ctx = seeded((b, tokens, cfg.cross_attention_dim), seed + 10 * i + 1)
        inputs = {"sample": x, "timestep": t, "encoder_hidden_states": ctx}
        kwargs = {}
        if text_time is not None:
            pooled, ids = text_time[i]
            inputs["text_embeds"] = seeded((b, pooled), seed + 10 * i + 2)
            inputs["time_ids"] = torch.tensor(ids, dtype=torch.float32)
            kwargs["added_cond_kwargs"] = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}
        y = m(x, t, ctx, **kwargs).sample
        # Input and output are both called `sample`: keep their golden keys apart.
        case = {"inputs": {}, "outputs": {"sample": f"case{i}.out.sample"}}
        for k, v in inputs.items():
            tensors[f"case{i}.in.{k}"] = v
            case["inputs"][k] = f"case{i}.in.{k}"
        tensors[f"case{i}.out.sample"] = y
        cases.append(case)
    return tensors, cases


def save_diffusers(name, m, specs, seed, text_time=None):
    d = fresh_dir(name)
    round_to(m, torch.float16)
    m.to(torch.float16).save_pretrained(d, safe_serialization=True)
    sanitize_config_file(d / "config.json")
    m.to(torch.float32)
    tensors, cases = run_cases(m, specs, seed, text_time)
    write_golden(d, "unet_2d_condition", tensors, cases, TOL, weights="diffusion_pytorch_model.safetensors")


def save_ldm(name, file_name, m, specs, seed, extra, text_time=None):
    """Writes the UNet as an LDM single file (F16) plus non-UNet tensors, after checking that
    diffusers' own converter maps the file back to exactly the model's state dict."""
    d = fresh_dir(name)
    round_to(m, torch.float16)
    sd = {k: v.to(torch.float16).contiguous() for k, v in m.state_dict().items()}
    cfg = dict(m.config)
    ldm = {LDM_PREFIX + k: v for k, v in to_ldm(sd, cfg).items()}
    back = convert_ldm_unet_checkpoint(dict(ldm), cfg)
    assert set(back) == set(sd), sorted(set(back) ^ set(sd))[:10]
    for k, v in sd.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v), k
    save_file({**ldm, **extra}, str(d / file_name))
    m.save_config(d)
    sanitize_config_file(d / "config.json")
    tensors, cases = run_cases(m, specs, seed, text_time)
    write_golden(d, "unet_2d_condition", tensors, cases, TOL, weights=file_name, layout="ldm", config="config.json")


def non_unet_tensors(sgm):
    """A few tensors real single files carry outside `model.diffusion_model.`."""
    g = torch.Generator().manual_seed(7)
    extra = {
        "alphas_cumprod": torch.linspace(0.9991, 0.0047, 16),
        "betas": torch.linspace(0.00085, 0.012, 16),
        "first_stage_model.decoder.conv_out.bias": torch.randn(3, generator=g).half(),
    }
    if sgm:
        extra["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(4)[None]
    else:
        extra["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(4)[None]
        extra["model_ema.decay"] = torch.tensor(0.9999)
    return extra


def generate():
    save_diffusers(
        "unet_sd1_tiny", tiny_unet(50, **sd1()),
        [(2, 8, 12, [999.0, 1.5], 5), (1, 7, 9, [500.25], 3)], 5000)
    save_diffusers(
        "unet_sd2_tiny", tiny_unet(60, **sd2()),
        [(2, 8, 8, [0.0, 250.5], 4), (2, 6, 10, [999.0], 3)], 6000)
    ids0 = [[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0], [768.0, 512.0, 16.0, 32.0, 1024.0, 1024.0]]
    ids1 = [[832.0, 1216.0, 8.0, 0.0, 896.0, 1152.0]]
    save_diffusers(
        "unet_sdxl_tiny", tiny_unet(70, **sdxl(pooled=8, time_dim=4)),
        [(2, 8, 8, [999.0, 1.5], 4), (1, 6, 10, [333.0], 5)], 7000,
        text_time=[(8, ids0), (8, ids1)])
    save_ldm(
        "unet_sd1_inpaint_ldm_tiny", "sd15_inpaint_tiny.safetensors", tiny_unet(80, **sd1(in_channels=9)),
        [(2, 8, 8, [999.0, 20.0], 5)], 8000, non_unet_tensors(sgm=False))
    save_ldm(
        "unet_sdxl_ldm_tiny", "sdxl_tiny.safetensors", tiny_unet(90, **sdxl(pooled=8, time_dim=4, channels=(8, 8), cross=8)),
        [(2, 8, 6, [999.0, 1.5], 4)], 9000, non_unet_tensors(sgm=True),
        text_time=[(8, ids0)])


if __name__ == "__main__":
    generate()
