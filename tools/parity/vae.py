"""AutoencoderKL fixtures: a 4-latent-channel SD-style VAE (quant convs, F16 weights) and a
16-latent-channel FLUX-style VAE (no quant convs, BF16 weights, scaling 0.3611 / shift 0.1159).
Two levels each, so Downsample2D / Upsample2D and the mid-block attention are exercised; encode
cases cover batch 2, a non-square input and odd sizes (the asymmetric downsampling pad)."""

import torch
from diffusers import AutoencoderKL

from common import fresh_dir, perturb, round_to, sanitize_config_file, seeded, write_golden

TOL = {"max_abs": 1e-4, "rel_l2": 1e-5}


def tiny_vae(latent, quant, groups, seed, **extra):
    torch.manual_seed(seed)
    m = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=latent,
        norm_num_groups=groups,
        sample_size=32,
        use_quant_conv=quant,
        use_post_quant_conv=quant,
        mid_block_add_attention=True,
        **extra,
    ).eval()
    perturb(m, seed + 1, scale=0.05)
    return m


@torch.no_grad()
def cases(m, latent, seed):
    tensors, cs = {}, []
    encode_specs = [(2, 16, 24), (1, 15, 9)]  # (batch, H, W)
    decode_specs = [(2, 8, 12), (1, 5, 7)]  # (batch, h, w)
    i = 0
    for b, h, w in encode_specs:
        x = seeded((b, 3, h, w), seed + 10 * i)
        post = m.encode(x).latent_dist
        tensors[f"case{i}.sample"] = x
        tensors[f"case{i}.latent_mean"] = post.mean
        tensors[f"case{i}.latent_logvar"] = post.logvar
        cs.append({"inputs": {"sample": f"case{i}.sample"},
                   "outputs": {"latent_mean": f"case{i}.latent_mean", "latent_logvar": f"case{i}.latent_logvar"}})
        i += 1
    for b, h, w in decode_specs:
        z = seeded((b, latent, h, w), seed + 10 * i)
        out = m.decode(z).sample
        tensors[f"case{i}.latent"] = z
        tensors[f"case{i}.sample"] = out
        cs.append({"inputs": {"latent": f"case{i}.latent"}, "outputs": {"sample": f"case{i}.sample"}})
        i += 1
    return tensors, cs


def save(name, m, dtype, seed):
    d = fresh_dir(name)
    round_to(m, dtype)
    m.to(dtype).save_pretrained(d, safe_serialization=True)
    sanitize_config_file(d / "config.json")
    m.to(torch.float32)
    tensors, cs = cases(m, m.config.latent_channels, seed)
    write_golden(d, "autoencoder_kl", tensors, cs, TOL, weights="diffusion_pytorch_model.safetensors")


def generate():
    save("autoencoder_kl_sd_tiny", tiny_vae(4, True, 4, seed=30), torch.float16, 3000)
    save("autoencoder_kl_flux_tiny",
         tiny_vae(16, False, 4, seed=40, scaling_factor=0.3611, shift_factor=0.1159, force_upcast=False),
         torch.bfloat16, 4000)


if __name__ == "__main__":
    generate()
