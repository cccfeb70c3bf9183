"""CLIP text encoder fixtures (transformers `CLIPTextModel` / `CLIPTextModelWithProjection`).

1. `clip_text_model_tiny`: SD1 / CLIP-L style (quick_gelu, legacy `eos_token_id = 2`, so pooling
   is at `argmax(input_ids)`), keys WITH the `text_model.` prefix and the
   `text_model.embeddings.position_ids` buffer, as hub checkpoints saved by transformers 4 have
   (transformers 5 drops both; they are put back here).
2. `clip_text_model_with_projection_tiny`: OpenCLIP bigG style (gelu, a real eos id so pooling is
   at the first eos, padding repeats eos and larger ids occur elsewhere), keys WITHOUT the
   `text_model.` prefix, plus `text_projection.weight`.

Weights are F16 (rounded first); goldens are f32 from the rounded weights.
"""

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from common import fresh_dir, perturb, round_to, sanitize_config_file, write_golden

TOL = {"max_abs": 1e-4, "rel_l2": 1e-5}
VOCAB = 1000


def tiny(cls, act, eos, seed):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        projection_dim=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=VOCAB - 2 if eos != 2 else 0,
        eos_token_id=eos,
        pad_token_id=1,
    )
    m = cls(cfg).eval()
    perturb(m, seed + 1)
    return round_to(m, torch.float16)


def prompt_ids(n_tokens, length, bos, eos, pad, seed):
    """bos, `n_tokens` random ids, eos, then padding up to `length`."""
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(3, VOCAB - 2, (n_tokens,), generator=g)
    ids = torch.full((length,), pad, dtype=torch.int64)
    ids[0] = bos
    ids[1 : 1 + n_tokens] = body
    ids[1 + n_tokens] = eos
    return ids


@torch.no_grad()
def cases(m, specs, outputs, seed):
    tensors, cs = {}, []
    for i, rows in enumerate(specs):
        ids = torch.stack([prompt_ids(*r, seed=seed + 10 * i + j) for j, r in enumerate(rows)])
        out = m(input_ids=ids, output_hidden_states=True)
        got = {
            "last_hidden_state": out.last_hidden_state,
            "penultimate_hidden_state": out.hidden_states[-2],
        }
        if hasattr(out, "pooler_output") and out.pooler_output is not None:
            got["pooler_output"] = out.pooler_output
        if getattr(out, "text_embeds", None) is not None:
            got["text_embeds"] = out.text_embeds
        tensors[f"case{i}.input_ids"] = ids
        names = {}
        for k in outputs:
            tensors[f"case{i}.{k}"] = got[k]
            names[k] = f"case{i}.{k}"
        cs.append({"inputs": {"input_ids": f"case{i}.input_ids"}, "outputs": names})
    return tensors, cs


def resave(path, rename, extra=None):
    sd = load_file(str(path))
    out = {rename(k): v for k, v in sd.items()}
    out.update(extra or {})
    save_file(out, str(path), metadata={"format": "pt"})


def generate():
    # 1. CLIPTextModel, hub layout (text_model. prefix + position_ids buffer), legacy pooling.
    d = fresh_dir("clip_text_model_tiny")
    m = tiny(CLIPTextModel, "quick_gelu", eos=2, seed=30)
    m.to(torch.float16).save_pretrained(d, safe_serialization=True)
    sanitize_config_file(d / "config.json")
    resave(
        d / "model.safetensors",
        lambda k: k if k.startswith("text_model.") else f"text_model.{k}",
        {"text_model.embeddings.position_ids": torch.arange(77, dtype=torch.int64)[None]},
    )
    m.to(torch.float32)
    # SD1-like: bos = VOCAB-2, eos = pad = VOCAB-1 (the largest id, so argmax finds the first eos).
    bos, eos = VOCAB - 2, VOCAB - 1
    specs = [
        [(5, 77, bos, eos, eos), (40, 77, bos, eos, eos)],
        [(3, 9, bos, eos, eos)],
    ]
    tensors, cs = cases(m, specs, ["last_hidden_state", "pooler_output", "penultimate_hidden_state"], 3000)
    write_golden(d, "clip_text_model", tensors, cs, TOL, weights="model.safetensors")

    # 2. CLIPTextModelWithProjection, transformers-5 layout without the prefix, first-eos pooling.
    d = fresh_dir("clip_text_model_with_projection_tiny")
    eos = 500  # ids above 500 occur in the text and bos, so argmax pooling would differ
    m = tiny(CLIPTextModelWithProjection, "gelu", eos=eos, seed=40)
    m.to(torch.float16).save_pretrained(d, safe_serialization=True)
    sanitize_config_file(d / "config.json")
    resave(d / "model.safetensors", lambda k: k.removeprefix("text_model."))
    m.to(torch.float32)
    bos = VOCAB - 2
    specs = [
        [(6, 77, bos, eos, eos), (30, 77, bos, eos, 0)],  # pad = eos (SD-style) and pad = 0 (`!`)
        [(4, 12, bos, eos, eos)],
    ]
    tensors, cs = cases(m, specs, ["text_embeds", "last_hidden_state", "penultimate_hidden_state"], 4000)
    write_golden(d, "clip_text_model_with_projection", tensors, cs, TOL, weights="model.safetensors")


if __name__ == "__main__":
    generate()
