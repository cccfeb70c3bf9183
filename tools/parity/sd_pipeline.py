"""End-to-end UNet-family fixtures: tiny diffusers `StableDiffusionPipeline` (+ its img2img and
inpaint variants on the same folder), a tiny `StableDiffusionXLPipeline`, and a tiny 9-channel
inpainting `StableDiffusionInpaintPipeline`. Every component is perturbed and rounded to F16 as
SD checkpoints ship; tokenizers are tiny CLIP BPEs built like flux_pipeline.py's. Each case runs
3 steps with CFG from fixed latents (text-to-image: `latents`, before `init_noise_sigma`;
img2img / inpainting: the `noise` the pipeline would draw, injected by replacing the module's
`randn_tensor`) and the VAE posterior mean for image latents (replacing `retrieve_latents`,
which would sample with the generator). Init images and masks are PNGs in the fixture folder,
read by both sides.

kind `sd_pipeline`: each case carries the call arguments (`mode` txt2img | img2img | inpaint,
`prompt`, `negative_prompt`, `guidance_scale`, `guidance_rescale`, `clip_skip`, `sampler`
(dreamforge name, or null for the folder's scheduler), `num_inference_steps`, `height`,
`width`, `num_images`, `strength`, `init_image`, `mask_image`); inputs `latents` or `noise`
([B, 4, h, w]); outputs `image` ([B, 3, H, W] in [0, 1], output_type="pt"). A case with
`source` repeats an earlier case loading the pipeline from that single-file checkpoint in the
folder (the same weights in the original LDM / SGM layout) with the folder as components.
"""

import types

import numpy as np
import torch
from PIL import Image
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
                       StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as sd_img2img
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as sd_inpaint
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from common import fresh_dir, perturb, round_to, sanitize_config_file, seeded, write_golden
from flux_pipeline import tiny_clip_tokenizer
from safetensors.torch import save_file
from single_file import check_hf_clip, check_open_clip, check_vae, clip_to_open_clip, ldm_extras, prefixed, text_sd, vae_to_ldm
from unet import LDM_PREFIX, to_ldm

TOL = {"max_abs": 1e-4, "rel_l2": 1e-5}

SCHEDULERS = {
    "ddim": lambda cfg: DDIMScheduler.from_config(cfg),
    "euler": lambda cfg: EulerDiscreteScheduler.from_config(cfg),
    "euler-a": lambda cfg: EulerAncestralDiscreteScheduler.from_config(cfg),
    "dpmpp-2m": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, use_karras_sigmas=False),
    "dpmpp-2m-karras": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, use_karras_sigmas=True),
}

SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")


def tiny_vae():
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[4, 8], layers_per_block=1,
                         latent_channels=4, norm_num_groups=2, sample_size=32, scaling_factor=0.18215).eval()


def tiny_clip(vocab, hidden=16, projection=False, act="quick_gelu"):
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act=act, projection_dim=hidden,
                         bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    m = (CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)).eval()
    # Reference-stack trap: transformers 5 flattened CLIPTextModel (no `.text_model`), but
    # diffusers' StableDiffusionPipeline clip_skip path still calls
    # `text_encoder.text_model.final_layer_norm`; give it that name without a module cycle.
    if not hasattr(m, "text_model"):
        object.__setattr__(m, "text_model", types.SimpleNamespace(final_layer_norm=m.final_layer_norm))
    return m


def tiny_sd_unet(in_channels=4):
    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, attention_head_dim=2, cross_attention_dim=16,
        norm_num_groups=4).eval()


def tiny_sdxl_unet():
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
        cross_attention_dim=32, norm_num_groups=4, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 16).eval()


def write_single_file(d, name, unet, vae, encoders):
    """The same components as one original-layout checkpoint (what users download): UNet under
    `model.diffusion_model.` (F16), VAE under `first_stage_model.` (F16), text encoders in their
    LDM / SGM layouts (`encoders`: (root, model, open_clip) — F32 CLIP-L, F16 OpenCLIP), plus the
    schedule tables and EMA counters training checkpoints carry. diffusers' own converters must
    map it back to the exact component weights."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    ckpt = {}
    usd = {k: v.half() for k, v in unet.state_dict().items()}
    ldm = prefixed(LDM_PREFIX, to_ldm(usd, dict(unet.config)))
    back = convert_ldm_unet_checkpoint(dict(ldm), dict(unet.config))
    assert set(back) == set(usd) and all(torch.equal(back[k], usd[k]) for k in usd)
    ckpt.update(ldm)
    ckpt.update(prefixed("first_stage_model.", vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)),
                         torch.float16))
    for root, m, open_clip in encoders:
        if open_clip:
            ckpt.update(prefixed(root, clip_to_open_clip(text_sd(m), m.config.num_hidden_layers), torch.float16))
        else:
            ckpt.update(prefixed(f"{root}text_model.", text_sd(m), torch.float32))
            ckpt[f"{root}text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    ckpt.update(ldm_extras())
    check_vae(ckpt, vae)
    for root, m, open_clip in encoders:
        (check_open_clip if open_clip else check_hf_clip)(ckpt, m, root)
    save_file({k: v.contiguous() for k, v in ckpt.items()}, str(d / name))


def single_file_case(cases, index, name):
    """A copy of case `index` that loads the pipeline from the single file `name` (configs,
    tokenizers and scheduler from the folder, as `--components` gives them)."""
    c = dict(cases[index])
    c["source"] = name
    cases.append(c)


def finish(d, modules):
    """Perturb, round to F16, save as save_pretrained does, back to f32 for the goldens."""
    for i, m in enumerate(modules):
        perturb(m, 70 + i, scale=0.05)
        round_to(m, torch.float16)


def save(pipe, d, modules):
    for m in modules:
        m.to(torch.float16)
    pipe.save_pretrained(d, safe_serialization=True)
    for m in modules:
        m.to(torch.float32)
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        for name in ("config.json", "scheduler_config.json"):
            if (d / sub / name).exists():
                sanitize_config_file(d / sub / name)


def tokenizer_folder(d, sub, pad=None):
    """A CLIP tokenizer folder as hub SD repos ship it (vocab.json + merges.txt + configs)."""
    (d / sub).mkdir(exist_ok=True)
    tok, vocab = tiny_clip_tokenizer(d / sub)
    if pad is not None:
        tok = CLIPTokenizer(str(d / sub / "vocab.json"), str(d / sub / "merges.txt"), model_max_length=77,
                            pad_token=pad)
    return tok, vocab


def write_images(d):
    """An init image (smooth colour gradients) and a mask (a white rectangle), 32x32."""
    y, x = np.mgrid[0:32, 0:32]
    img = np.stack([x * 8, y * 8, 255 - (x + y) * 4], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(img, "RGB").save(d / "init.png")
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 12:28] = 255
    Image.fromarray(m, "L").save(d / "mask.png")
    return Image.open(d / "init.png").convert("RGB"), Image.open(d / "mask.png").convert("L")


class Injected:
    """Replaces a pipeline module's `randn_tensor` (returns the fixed noise) and
    `retrieve_latents` (posterior mean) for the duration of a call."""

    def __init__(self, module, noise):
        self.module, self.noise = module, noise

    def __enter__(self):
        self.saved = (self.module.randn_tensor, self.module.retrieve_latents)
        self.module.randn_tensor = lambda shape, **kw: self.noise.clone().reshape(shape)
        self.module.retrieve_latents = lambda enc, generator=None, sample_mode="sample": enc.latent_dist.mode()

    def __exit__(self, *a):
        self.module.randn_tensor, self.module.retrieve_latents = self.saved


def clip_skipped_embeds(pipe, prompt, negative, k):
    """diffusers applies `clip_skip` to the positive prompt only (the negative path always takes
    the last / penultimate layer: huggingface/diffusers PRs #13796, #13973, closed unmerged).
    A1111, ComfyUI and sd-scripts skip the same layers for both, so dreamforge does too; the
    fixture therefore encodes both texts through diffusers' own positive path with the same
    `clip_skip` and passes the embeddings in."""
    kw = dict(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False, clip_skip=k)
    if isinstance(pipe, StableDiffusionXLPipeline):
        pe, _, ppe, _ = pipe.encode_prompt(prompt, **kw)
        ne, _, npe, _ = pipe.encode_prompt(negative, **kw)
        return dict(prompt=None, negative_prompt=None, prompt_embeds=pe, negative_prompt_embeds=ne,
                    pooled_prompt_embeds=ppe, negative_pooled_prompt_embeds=npe, clip_skip=None)
    pe, _ = pipe.encode_prompt(prompt, **kw)
    ne, _ = pipe.encode_prompt(negative, **kw)
    return dict(prompt=None, negative_prompt=None, prompt_embeds=pe, negative_prompt_embeds=ne, clip_skip=None)


@torch.no_grad()
def run_cases(d, pipes, specs, default_scheduler_cfg):
    tensors, cases = {}, []
    for i, s in enumerate(specs):
        mode = s.get("mode", "txt2img")
        pipe = pipes[mode]
        cfg = default_scheduler_cfg
        sampler = s.get("sampler")
        pipe.scheduler = SCHEDULERS[sampler](cfg) if sampler else type(pipes["txt2img"].scheduler).from_config(cfg)
        b, h, w = s.get("num_images", 1), s["height"] // 2, s["width"] // 2
        x = seeded((b, 4, h, w), 500 + i)
        kwargs = dict(prompt=s["prompt"], negative_prompt=s.get("negative_prompt"), num_images_per_prompt=b,
                      num_inference_steps=3, guidance_scale=s["guidance_scale"],
                      guidance_rescale=s.get("guidance_rescale", 0.0), clip_skip=s.get("clip_skip"),
                      output_type="pt")
        if s.get("clip_skip") is not None:
            kwargs.update(clip_skipped_embeds(pipe, s["prompt"], s.get("negative_prompt") or "", s["clip_skip"]))
        if mode == "txt2img":
            kwargs.update(height=s["height"], width=s["width"], latents=x.clone())
            image = pipe(**kwargs).images
            key = "latents"
        else:
            init, mask = write_images(d)
            kwargs.update(image=init, strength=s["strength"])
            module = sd_img2img if mode == "img2img" else sd_inpaint
            if mode == "inpaint":
                kwargs.update(mask_image=mask, height=s["height"], width=s["width"])
            with Injected(module, x):
                image = pipe(**kwargs).images
            key = "noise"
        tensors[f"case{i}.{key}"] = x
        tensors[f"case{i}.image"] = image
        cases.append({
            "inputs": {key: f"case{i}.{key}"}, "outputs": {"image": f"case{i}.image"},
            "mode": mode, "prompt": s["prompt"], "negative_prompt": s.get("negative_prompt"),
            "guidance_scale": s["guidance_scale"], "guidance_rescale": s.get("guidance_rescale", 0.0),
            "clip_skip": s.get("clip_skip"), "sampler": sampler, "num_inference_steps": 3,
            "height": s["height"], "width": s["width"], "num_images": b, "strength": s.get("strength"),
            "init_image": None if mode == "txt2img" else "init.png",
            "mask_image": "mask.png" if mode == "inpaint" else None,
        })
    return tensors, cases


def sd_pipeline():
    d = fresh_dir("sd_pipeline_tiny")
    torch.manual_seed(1)
    tok, vocab = tokenizer_folder(d, "tokenizer")
    te, vae, unet = tiny_clip(vocab), tiny_vae(), tiny_sd_unet()
    modules = [te, vae, unet]
    finish(d, modules)
    sched = DPMSolverMultistepScheduler(**SD_SCHEDULER)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    save(pipe, d, modules)
    pipes = {"txt2img": pipe, "img2img": StableDiffusionImg2ImgPipeline(**pipe.components),
             "inpaint": StableDiffusionInpaintPipeline(**pipe.components)}
    specs = [
        dict(prompt="a photo of a cat", negative_prompt="blurry", guidance_scale=7.5, height=32, width=32),
        dict(prompt="a red circle on a blue background", guidance_scale=5.0, guidance_rescale=0.7, clip_skip=1,
             sampler="euler", num_images=2, height=24, width=40),
        dict(prompt="sks dog in a bucket", guidance_scale=6.0, sampler="dpmpp-2m-karras", height=32, width=32),
        dict(prompt="oil painting of mountains at sunset", negative_prompt="a cat", guidance_scale=4.0,
             sampler="ddim", height=32, width=32),
        dict(mode="img2img", prompt="oil painting of mountains at sunset", guidance_scale=7.0, strength=0.7,
             sampler="euler", height=32, width=32),
        dict(mode="img2img", prompt="a cat and a dog", guidance_scale=3.0, strength=0.5, sampler="ddim",
             height=32, width=32),
        dict(mode="inpaint", prompt="a small yellow star and a green square", guidance_scale=7.5, strength=1.0,
             sampler="euler", height=32, width=32),
        dict(mode="inpaint", prompt="a photo of a cat", guidance_scale=5.0, strength=0.7,
             sampler="dpmpp-2m", height=32, width=32),
    ]
    tensors, cases = run_cases(d, pipes, specs, sched.config)
    write_single_file(d, "sd_tiny_ldm.safetensors", unet, vae, [("cond_stage_model.transformer.", te, False)])
    single_file_case(cases, 0, "sd_tiny_ldm.safetensors")
    single_file_case(cases, 6, "sd_tiny_ldm.safetensors")
    write_golden(d, "sd_pipeline", tensors, cases, TOL)


def sd_inpaint_pipeline():
    d = fresh_dir("sd_inpaint_pipeline_tiny")
    torch.manual_seed(2)
    tok, vocab = tokenizer_folder(d, "tokenizer")
    te, vae, unet = tiny_clip(vocab), tiny_vae(), tiny_sd_unet(in_channels=9)
    modules = [te, vae, unet]
    finish(d, modules)
    sched = EulerDiscreteScheduler(**SD_SCHEDULER)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    save(pipe, d, modules)
    specs = [
        dict(mode="inpaint", prompt="a small yellow star and a green square", guidance_scale=7.5, strength=1.0,
             height=32, width=32),
        dict(mode="inpaint", prompt="a photo of a cat", negative_prompt="blurry", guidance_scale=5.0, strength=0.7,
             sampler="ddim", height=32, width=32),
    ]
    tensors, cases = run_cases(d, {"inpaint": pipe, "txt2img": pipe}, specs, sched.config)
    write_golden(d, "sd_pipeline", tensors, cases, TOL)


def sdxl_pipeline():
    d = fresh_dir("sdxl_pipeline_tiny")
    torch.manual_seed(3)
    tok, vocab = tokenizer_folder(d, "tokenizer")
    tok2, _ = tokenizer_folder(d, "tokenizer_2", pad="!")
    te = tiny_clip(vocab)
    te2 = tiny_clip(vocab, projection=True, act="gelu")
    vae, unet = tiny_vae(), tiny_sdxl_unet()
    vae.register_to_config(scaling_factor=0.13025)
    modules = [te, te2, vae, unet]
    finish(d, modules)
    sched = EulerDiscreteScheduler(**SD_SCHEDULER)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
                                     unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True,
                                     add_watermarker=False)
    save(pipe, d, modules)
    specs = [
        dict(prompt="a photo of a cat", guidance_scale=5.0, height=32, width=32),
        dict(prompt="portrait of an astronaut, studio light", negative_prompt="blurry", guidance_scale=6.0,
             clip_skip=1, sampler="dpmpp-2m-karras", num_images=2, height=24, width=32),
    ]
    tensors, cases = run_cases(d, {"txt2img": pipe}, specs, sched.config)
    write_single_file(d, "sdxl_tiny_sgm.safetensors", unet, vae,
                      [("conditioner.embedders.0.transformer.", te, False),
                       ("conditioner.embedders.1.model.", te2, True)])
    single_file_case(cases, 1, "sdxl_tiny_sgm.safetensors")
    write_golden(d, "sd_pipeline", tensors, cases, TOL)


def generate():
    sd_pipeline()
    sd_inpaint_pipeline()
    sdxl_pipeline()


if __name__ == "__main__":
    generate()
