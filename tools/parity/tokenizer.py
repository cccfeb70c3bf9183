"""Tokenizer fixtures: the real CLIP vocabulary as diffusers ships it (vocab.json + merges.txt,
reference = transformers `CLIPTokenizer` loaded from that folder), the same vocabulary with
SDXL tokenizer_2's `!` pad token, and the real T5 v1.1 `tokenizer.json` (reference =
transformers 5 `T5Tokenizer(tokenizer_file=...)`, the class `T5TokenizerFast` became).

The real files are not downloadable from a model hub here; they come from PyPI packages:
  CLIP: comfylib==0.0.5 wheel, comfy/hazard/sd1_tokenizer/ (vocab MIT, OpenAI CLIP)
  T5:   stable-diffusion-cpp-python==0.4.7 sdist, t5_tokenizer_json_str in
        vendor/stable-diffusion.cpp/src/tokenizers/vocab/clip_t5.hpp (vocab Apache-2.0)
Point DREAMFORGE_CLIP_TOKENIZER_DIR / DREAMFORGE_T5_TOKENIZER_JSON at them, or (the default)
the generator reuses the copies already committed in the fixture folders.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import CLIPTokenizer, T5Tokenizer

from common import OUT, write_golden, write_json

TEXTS = [
    "a photo of a cat",
    "A Photo Of An ASTRONAUT riding a horse, on Mars!!! (masterpiece:1.2), 8k, ultra-detailed",
    "1234567 numbers 3.14159 and 1,000,000 -- 42nd",
    "café crème brûlée, naïve façade, Ærøskøbing, 東京タワー, 🐱 emoji",
    "   extra    whitespace\t\tand\nnew lines   ",
    "",
    "zxqvjkw flurbleglorp unvocabularizable",
    "they're we've I'm it's y'all'd",
    " ".join(["a long prompt that keeps going"] * 30),
]

CLIP_FILES = ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]

CLIP_NOTES = """# Licence notes

`vocab.json` and `merges.txt` are OpenAI CLIP's BPE vocabulary (MIT licence, Copyright (c) 2021
OpenAI), in the layout diffusers ships for Stable Diffusion 1.x (`openai/clip-vit-large-patch14`
tokenizer). `tokenizer_config.json` and `special_tokens_map.json` are the matching transformers
tokenizer configuration. Obtained from the PyPI wheel `comfylib==0.0.5`,
`comfy/hazard/sd1_tokenizer/` (byte-identical to what `open_clip/bpe_simple_vocab_16e6.txt.gz`
yields).
"""

PAD_BANG_NOTES = """# Licence notes

This folder holds only the tokenizer configuration of SDXL's `tokenizer_2` (pad token `!`);
the vocabulary is `../tokenizer_clip_vocab_merges` (OpenAI CLIP BPE vocabulary, MIT licence).
"""

T5_NOTES = """# Licence notes

`tokenizer.json` is the T5 v1.1 SentencePiece (Unigram, 32100 pieces) tokenizer as the
`tokenizers` library serialises it (Google T5, Apache License 2.0). Obtained from the PyPI sdist
`stable-diffusion-cpp-python==0.4.7`, where stable-diffusion.cpp (MIT) embeds it as the byte array
`t5_tokenizer_json_str` in `vendor/stable-diffusion.cpp/src/tokenizers/vocab/clip_t5.hpp`;
rewritten here as compact JSON (same content, no indentation) to keep the fixture small.
"""


def _stash(names_by_dir):
    """Copies the source files somewhere safe before the fixture folders are rewritten."""
    tmp = Path(tempfile.mkdtemp(prefix="dreamforge-tok-"))
    out = {}
    for key, path in names_by_dir.items():
        if path is not None and Path(path).exists():
            dst = tmp / key
            shutil.copyfile(path, dst)
            out[key] = dst
    return tmp, out


def _fresh(name):
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def _ids(enc):
    return torch.tensor(enc["input_ids"], dtype=torch.int64), torch.tensor(enc["attention_mask"], dtype=torch.int64)


def _golden(d, tok_path, texts, max_length, pad_id, ids, mask, reference):
    case = {"outputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"}}
    write_golden(
        d,
        "tokenizer",
        {"input_ids": ids, "attention_mask": mask},
        [case],
        {"max_abs": 0.0, "rel_l2": 0.0},
        tokenizer=tok_path,
        texts=texts,
        max_length=max_length,
        padding="max_length",
        truncation=True,
        pad_id=pad_id,
        reference=reference,
    )


def generate():
    clip_src = os.environ.get("DREAMFORGE_CLIP_TOKENIZER_DIR", str(OUT / "tokenizer_clip_vocab_merges"))
    t5_src = os.environ.get("DREAMFORGE_T5_TOKENIZER_JSON", str(OUT / "tokenizer_t5" / "tokenizer.json"))
    tmp, src = _stash({**{f: Path(clip_src) / f for f in CLIP_FILES}, "t5.json": Path(t5_src)})
    try:
        missing = [f for f in [*CLIP_FILES, "t5.json"] if f not in src]
        if missing:
            raise SystemExit(f"tokenizer sources missing: {missing} (see this file's docstring)")

        # 1. The SD1 CLIP tokenizer folder, exactly as diffusers ships it.
        d = _fresh("tokenizer_clip_vocab_merges")
        for f in CLIP_FILES:
            shutil.copyfile(src[f], d / f)
        (d / "LICENSE-NOTES.md").write_text(CLIP_NOTES)
        tok = CLIPTokenizer.from_pretrained(str(d))
        assert tok.pad_token_id == 49407, tok.pad_token_id
        ids, mask = _ids(tok(TEXTS, padding="max_length", max_length=77, truncation=True))
        assert ids.shape == (len(TEXTS), 77) and ids[-1, -1] == 49407
        _golden(d, ".", TEXTS, 77, 49407, ids, mask, "transformers.CLIPTokenizer.from_pretrained(folder)")

        # 2. Same vocabulary, SDXL tokenizer_2's configuration (pad `!` = 0). The reference runs on
        #    a full folder; the fixture keeps only the configuration files.
        d = _fresh("tokenizer_clip_pad_bang")
        full = tmp / "pad_bang_full"
        full.mkdir()
        for f in ["vocab.json", "merges.txt"]:
            shutil.copyfile(src[f], full / f)
        cfg = json.loads(src["tokenizer_config.json"].read_text())
        cfg["pad_token"] = "!"
        cfg["name_or_path"] = "stabilityai/stable-diffusion-xl-base-1.0/tokenizer_2"
        stm = json.loads(src["special_tokens_map.json"].read_text())
        stm["pad_token"] = "!"
        for dst in (full, d):
            write_json(dst / "tokenizer_config.json", cfg)
            write_json(dst / "special_tokens_map.json", stm)
        (d / "LICENSE-NOTES.md").write_text(PAD_BANG_NOTES)
        tok = CLIPTokenizer.from_pretrained(str(full))
        assert tok.pad_token_id == 0, tok.pad_token_id
        ids, mask = _ids(tok(TEXTS, padding="max_length", max_length=77, truncation=True))
        _golden(d, "../tokenizer_clip_vocab_merges", TEXTS, 77, 0, ids, mask,
                "transformers.CLIPTokenizer.from_pretrained(vocab folder + this tokenizer_config.json)")

        # 3. T5 v1.1 tokenizer.json (compact JSON, verified to tokenize identically).
        d = _fresh("tokenizer_t5")
        text = src["t5.json"].read_text(encoding="utf-8")
        compact = json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
        (d / "tokenizer.json").write_text(compact, encoding="utf-8")
        (d / "LICENSE-NOTES.md").write_text(T5_NOTES)
        a, b = Tokenizer.from_str(text), Tokenizer.from_str(compact)
        assert [e.ids for e in a.encode_batch(TEXTS)] == [e.ids for e in b.encode_batch(TEXTS)]
        tok = T5Tokenizer(tokenizer_file=str(d / "tokenizer.json"))
        assert tok.pad_token_id == 0, tok.pad_token_id
        ids, mask = _ids(tok(TEXTS, padding="max_length", max_length=32, truncation=True))
        assert ids[-1, -1] == 1, "truncated T5 rows keep </s> last"
        _golden(d, "tokenizer.json", TEXTS, 32, 0, ids, mask,
                "transformers.T5Tokenizer(tokenizer_file=...) (T5TokenizerFast in transformers 4)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    generate()
