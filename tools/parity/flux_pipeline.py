"""End-to-end FLUX fixture: a tiny diffusers `FluxPipeline` (tiny CLIP + tiny T5 + 16-channel
VAE + FLUX transformer, each perturbed and rounded to the dtype real checkpoints use, tiny
tokenizers built with the reference libraries) run for 3 steps from fixed packed latents. The
decoded image pins packing, ids, μ-shift, guidance, true CFG, VAE scaling and tokenization together.

kind `flux_pipeline`: golden.json carries the call arguments per case; inputs `latents`
(packed [B, L, C]); outputs `image` ([B, 3, H, W] in [0, 1], output_type="pt"),
`prompt_embeds`, `pooled_prompt_embeds`. Cases with `mode` img2img / inpaint run
`FluxImg2ImgPipeline` / `FluxInpaintPipeline` on the same components with `strength`, the PNGs
`init_image` / `mask_image` from the folder, and input `noise` (unpacked [B, C, h, w]): the
noise the pipeline would draw, injected by replacing the module's `randn_tensor`, while
`retrieve_latents` returns the posterior mean instead of a generator sample.
"""

import json

import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxInpaintPipeline,
                       FluxPipeline, FluxTransformer2DModel)
from diffusers.pipelines.flux import pipeline_flux_img2img, pipeline_flux_inpaint
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers, decoders
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

from common import OUT, fresh_dir, perturb, round_to, sanitize_config_file, seeded, write_golden

CORPUS = [
    "a photo of a cat", "a red circle on a blue background", "a small yellow star and a green square",
    "portrait of an astronaut, studio light", "the quick brown fox jumps over the lazy dog",
    "sks dog in a bucket", "oil painting of mountains at sunset", "a cat and a dog",
]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer(d):
    """CLIP-style BPE files: 256 byte symbols, their `</w>` forms, merges learned from CORPUS."""
    base = bytes_to_unicode()
    vocab = base + [b + "</w>" for b in base]
    words = [w for line in CORPUS for w in line.lower().replace(",", " ,").split()]
    seqs = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    merges = []
    for _ in range(60):  # greedy BPE on the corpus
        counts = {}
        for s in seqs:
            for a, b in zip(s, s[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        (a, b), _ = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append(f"{a} {b}")
        vocab.append(a + b)
        new = []
        for s in seqs:
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            new.append(out)
        seqs = new
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=77)
    return tok, len(vocab)


def tiny_t5_tokenizer():
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      shrinking_factor=0.75, max_piece_length=8, n_sub_iterations=2)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def build(d, t5_tokenizer_json=None):
    torch.manual_seed(0)
    clip_tok, clip_vocab = tiny_clip_tokenizer(d)
    t5_tok = tiny_t5_tokenizer()
    if t5_tokenizer_json is not None:
        t5_tok = T5TokenizerFast(tokenizer_object=Tokenizer.from_str(t5_tokenizer_json), pad_token="<pad>",
                                 eos_token="</s>", unk_token="<unk>", extra_ids=0)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=clip_vocab, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=24,
        bos_token_id=clip_vocab - 2, eos_token_id=clip_vocab - 1, pad_token_id=clip_vocab - 1)).eval()
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
        dense_act_fn="gelu_new", is_gated_act=True)).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
        latent_channels=16, norm_num_groups=4, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False).eval()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24, guidance_embeds=True,
        axes_dims_rope=[4, 6, 6]).eval()
    sched = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    dtypes = {"text_encoder": (clip, torch.float16), "text_encoder_2": (t5, torch.bfloat16),
              "vae": (vae, torch.bfloat16), "transformer": (transformer, torch.bfloat16)}
    for i, (m, dt) in enumerate(dtypes.values()):
        perturb(m, 50 + i)
        round_to(m, dt)
    pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                        tokenizer_2=t5_tok, transformer=transformer)
    for m, dt in dtypes.values():
        m.to(dt)
    pipe.save_pretrained(d, safe_serialization=True)
    for m, _ in dtypes.values():
        m.to(torch.float32)
    for sub in ("transformer", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        for name in ("config.json", "scheduler_config.json"):
            if (d / sub / name).exists():
                sanitize_config_file(d / sub / name)
    # Real FLUX folders ship the CLIP tokenizer as vocab.json + merges.txt (no tokenizer.json).
    for f in ("vocab.json", "merges.txt"):
        (d / f).rename(d / "tokenizer" / f)
    (d / "tokenizer" / "tokenizer.json").unlink()
    return pipe


@torch.no_grad()
def generate():
    # The Unigram trainer is not deterministic (hash-map order breaks score ties), so a committed
    # T5 tokenizer is kept as a pinned asset and reused; it is trained only when absent.
    pinned = OUT / "flux_pipeline_tiny" / "tokenizer_2" / "tokenizer.json"
    pinned_json = pinned.read_text() if pinned.exists() else None
    d = fresh_dir("flux_pipeline_tiny")
    pipe = build(d, pinned_json)
    specs = [
        dict(prompt="a photo of a cat", num_images=1, guidance_scale=3.5, true_cfg_scale=1.0, negative_prompt=None,
             height=32, width=32),
        dict(prompt="portrait of an astronaut, studio light, " + "very " * 80 + "detailed", num_images=2,
             guidance_scale=2.0, true_cfg_scale=2.5, negative_prompt="blurry", height=32, width=48),
    ]
    tensors, cases = {}, []
    for i, s in enumerate(specs):
        b, h, w = s["num_images"], s["height"] // 2, s["width"] // 2  # latent size (vae factor 2)
        latents = seeded((b, (h // 2) * (w // 2), 64), 300 + i)
        kwargs = dict(prompt=s["prompt"], num_images_per_prompt=b, height=s["height"], width=s["width"],
                      num_inference_steps=3, guidance_scale=s["guidance_scale"], latents=latents.clone(),
                      max_sequence_length=16, output_type="pt")
        if s["negative_prompt"] is not None:
            kwargs.update(negative_prompt=s["negative_prompt"], true_cfg_scale=s["true_cfg_scale"])
        image = pipe(**kwargs).images
        pe, ppe, _ = pipe.encode_prompt(prompt=s["prompt"], prompt_2=None, max_sequence_length=16,
                                        num_images_per_prompt=1)
        tensors[f"case{i}.latents"] = latents
        tensors[f"case{i}.image"] = image
        tensors[f"case{i}.prompt_embeds"] = pe
        tensors[f"case{i}.pooled_prompt_embeds"] = ppe
        cases.append({
            "inputs": {"latents": f"case{i}.latents"},
            "outputs": {"image": f"case{i}.image", "prompt_embeds": f"case{i}.prompt_embeds",
                        "pooled_prompt_embeds": f"case{i}.pooled_prompt_embeds"},
            "prompt": s["prompt"], "negative_prompt": s["negative_prompt"], "true_cfg_scale": s["true_cfg_scale"],
            "guidance_scale": s["guidance_scale"], "num_inference_steps": 3, "height": s["height"],
            "width": s["width"], "num_images": b, "max_sequence_length": 16,
        })
    tensors2, cases2 = image_cases(d, pipe, len(cases))
    tensors.update(tensors2)
    write_golden(d, "flux_pipeline", tensors, cases + cases2, {"max_abs": 1e-4, "rel_l2": 1e-5})


@torch.no_grad()
def image_cases(d, pipe, first):
    from sd_pipeline import Injected, write_images
    init, mask = write_images(d)
    specs = [
        dict(mode="img2img", prompt="oil painting of mountains at sunset", strength=0.6, guidance_scale=3.5,
             num_inference_steps=4),
        dict(mode="inpaint", prompt="a small yellow star and a green square", strength=0.8, guidance_scale=2.0,
             num_inference_steps=3),
        dict(mode="inpaint", prompt="a photo of a cat", strength=1.0, guidance_scale=3.0, num_inference_steps=3),
    ]
    tensors, cases = {}, []
    for j, s in enumerate(specs):
        i = first + j
        noise = seeded((1, 16, 16, 16), 400 + i)
        if s["mode"] == "img2img":
            p, module, extra = FluxImg2ImgPipeline(**pipe.components), pipeline_flux_img2img, {}
        else:
            p, module, extra = FluxInpaintPipeline(**pipe.components), pipeline_flux_inpaint, {"mask_image": mask}
        with Injected(module, noise):
            image = p(prompt=s["prompt"], image=init, strength=s["strength"], height=32, width=32,
                      num_inference_steps=s["num_inference_steps"], guidance_scale=s["guidance_scale"],
                      max_sequence_length=16, output_type="pt", **extra).images
        tensors[f"case{i}.noise"] = noise
        tensors[f"case{i}.image"] = image
        cases.append({
            "inputs": {"noise": f"case{i}.noise"}, "outputs": {"image": f"case{i}.image"},
            "mode": s["mode"], "prompt": s["prompt"], "negative_prompt": None, "true_cfg_scale": 1.0,
            "guidance_scale": s["guidance_scale"], "num_inference_steps": s["num_inference_steps"], "height": 32,
            "width": 32, "num_images": 1, "max_sequence_length": 16, "strength": s["strength"],
            "init_image": "init.png", "mask_image": "mask.png" if s["mode"] == "inpaint" else None,
        })
    return tensors, cases


if __name__ == "__main__":
    generate()
