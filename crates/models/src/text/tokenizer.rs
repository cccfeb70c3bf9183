//! Text tokenizers for the text encoders, on the `tokenizers` crate: a `tokenizer.json`
//! (T5, CLIP, anything `tokenizers` saves), or a diffusers CLIP tokenizer folder with
//! `vocab.json` + `merges.txt`, rebuilt exactly as transformers `CLIPTokenizer`
//! (`tokenization_clip.py`, the tokenizers-backed class of transformers 5) builds it: NFC +
//! whitespace collapse + lowercase, the CLIP split regex then byte-level, BPE with a `</w>`
//! end-of-word suffix, `<|startoftext|> … <|endoftext|>` around each text.
//!
//! [`TextTokenizer::encode_batch`] matches transformers'
//! `tok(texts, padding="max_length", truncation=True, max_length=n)`: the text is cut so that
//! it fits with its special tokens (CLIP keeps `bos … eos`, T5 keeps `</s>` last), then padded
//! on the right with the pad id.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokenizers::{AddedToken, Tokenizer, TruncationDirection};

use dreamforge_core::{Error, Result};

/// What [`TextTokenizer::encode_batch`] returns, one row per text, each `max_length` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, padded with the pad id.
    pub ids: Vec<Vec<i64>>,
    /// 1 for real tokens (specials included), 0 for padding.
    pub attention_mask: Vec<Vec<i64>>,
    /// True where the text was cut to fit `max_length` (the caller may warn).
    pub truncated: Vec<bool>,
}

/// A loaded tokenizer with its pad token resolved.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    pad_id: u32,
    pad_token: Option<String>,
    unk_id: Option<u32>,
    model_max_length: Option<usize>,
    source: PathBuf,
}

/// Special tokens read from `tokenizer_config.json` / `special_tokens_map.json`.
#[derive(Debug, Clone, Default)]
struct SpecialTokens {
    pad: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
    unk: Option<String>,
    model_max_length: Option<usize>,
}

const CLIP_BOS: &str = "<|startoftext|>";
const CLIP_EOS: &str = "<|endoftext|>";
const CLIP_SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

impl TextTokenizer {
    /// Loads a `tokenizer.json` file, a folder holding `tokenizer.json`, or a diffusers CLIP
    /// tokenizer folder (`vocab.json` + `merges.txt`). Special tokens (pad, and for CLIP
    /// bos/eos/unk) and `model_max_length` come from `tokenizer_config.json` /
    /// `special_tokens_map.json` beside it when present.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "tokenizer file or folder not found",
                ),
            ));
        }
        let (tokenizer, dir) = if path.is_dir() {
            let tj = path.join("tokenizer.json");
            if tj.exists() {
                (read_tokenizer_json(&tj)?, path.to_path_buf())
            } else {
                let vocab = path.join("vocab.json");
                let merges = path.join("merges.txt");
                for f in [&vocab, &merges] {
                    if !f.exists() {
                        return Err(Error::io(
                            f,
                            std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                "tokenizer folder has no tokenizer.json, and this file (needed for a vocab.json + merges.txt CLIP tokenizer) is missing",
                            ),
                        ));
                    }
                }
                let specials = read_specials(path)?;
                (build_clip(&vocab, &merges, &specials)?, path.to_path_buf())
            }
        } else {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (read_tokenizer_json(path)?, dir)
        };
        let specials = read_specials(&dir)?;
        let mut t = Self {
            tokenizer,
            pad_id: 0,
            pad_token: None,
            unk_id: None,
            model_max_length: None,
            source: path.to_path_buf(),
        };
        t.unk_id = specials
            .unk
            .as_deref()
            .and_then(|u| t.tokenizer.token_to_id(u));
        t.resolve_pad(&specials, path)?;
        t.model_max_length = specials.model_max_length;
        Ok(t)
    }

    /// Applies the `tokenizer_config.json` / `special_tokens_map.json` of another folder over
    /// this tokenizer (pad token and `model_max_length`), e.g. SDXL's `tokenizer_2`, which
    /// shares CLIP's vocabulary but pads with `!`.
    pub fn with_special_tokens_from(mut self, dir: &Path) -> Result<Self> {
        let specials = read_specials(dir)?;
        if let Some(pad) = &specials.pad {
            self.pad_id = self.tokenizer.token_to_id(pad).ok_or_else(|| {
                Error::config(
                    dir,
                    format!(
                        "pad token `{pad}` is not in the vocabulary of {}",
                        self.source.display()
                    ),
                )
            })?;
            self.pad_token = Some(pad.clone());
            self.register_special(pad, dir)?;
        }
        if specials.model_max_length.is_some() {
            self.model_max_length = specials.model_max_length;
        }
        Ok(self)
    }

    fn resolve_pad(&mut self, specials: &SpecialTokens, path: &Path) -> Result<()> {
        let tok = &self.tokenizer;
        let (pad_token, pad_id) = if let Some(pad) = &specials.pad {
            let id = tok.token_to_id(pad).ok_or_else(|| {
                Error::config(
                    path,
                    format!(
                        "pad token `{pad}` (from tokenizer_config.json) is not in the vocabulary"
                    ),
                )
            })?;
            (Some(pad.clone()), id)
        } else if let Some(p) = tok.get_padding() {
            (Some(p.pad_token.clone()), p.pad_id)
        } else if let Some(id) = tok.token_to_id("<pad>") {
            (Some("<pad>".to_string()), id)
        } else if let Some(id) = tok.token_to_id(CLIP_EOS) {
            // transformers CLIPTokenizer's default pad token.
            (Some(CLIP_EOS.to_string()), id)
        } else {
            (None, 0)
        };
        if let Some(pad) = &specials.pad {
            self.register_special(pad, path)?;
        }
        self.pad_token = pad_token;
        self.pad_id = pad_id;
        Ok(())
    }

    /// Registers a configured special token as an added token, as transformers does for every
    /// special token it is given: the text is split around it and it is never merged (with
    /// SDXL's pad `!`, `"!!!"` becomes three `!` tokens, not the `!!!</w>` BPE token).
    fn register_special(&mut self, token: &str, path: &Path) -> Result<()> {
        self.tokenizer
            .add_special_tokens([AddedToken::from(token.to_string(), true)])
            .map_err(|e| {
                Error::config(
                    path,
                    format!("cannot register special token `{token}`: {e}"),
                )
            })?;
        Ok(())
    }

    /// The words of `text` the vocabulary does not know (they became the unknown token), in
    /// order; empty when the tokenizer has no unknown token.
    pub fn unknown_words(&self, text: &str) -> Vec<String> {
        let Some(unk) = self.unk_id else {
            return Vec::new();
        };
        let Ok(enc) = self.tokenizer.encode(text, false) else {
            return Vec::new();
        };
        enc.get_ids()
            .iter()
            .zip(enc.get_offsets())
            .filter(|(id, _)| **id == unk)
            .filter_map(|(_, &(a, b))| text.get(a..b).map(str::to_string))
            .collect()
    }

    /// The vocabulary's ordinary tokens (no special tokens), sorted — for messages about small
    /// word-level vocabularies.
    pub fn words(&self) -> Vec<String> {
        let specials: Vec<String> = self
            .tokenizer
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.clone())
            .collect();
        let mut w: Vec<String> = self
            .tokenizer
            .get_vocab(false)
            .into_keys()
            .filter(|t| !specials.contains(t))
            .collect();
        w.sort();
        w
    }

    /// The id used for padding.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn pad_token(&self) -> Option<&str> {
        self.pad_token.as_deref()
    }

    /// `model_max_length` from `tokenizer_config.json` (77 for CLIP), when given.
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The wrapped `tokenizers` tokenizer (without truncation or padding configured).
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokenizes each text with its special tokens, truncated to fit and right-padded to
    /// exactly `max_length` (transformers `padding="max_length", truncation=True`).
    pub fn encode_batch(&self, texts: &[&str], max_length: usize) -> Result<Encoded> {
        let n_added = self
            .tokenizer
            .get_post_processor()
            .map(|p| tokenizers::PostProcessor::added_tokens(p, false))
            .unwrap_or(0);
        if max_length <= n_added {
            return Err(Error::InvalidInput(format!(
                "max_length {max_length} leaves no room for text next to the {n_added} special token(s) of {}",
                self.source.display()
            )));
        }
        let mut out = Encoded {
            ids: Vec::with_capacity(texts.len()),
            attention_mask: Vec::with_capacity(texts.len()),
            truncated: Vec::with_capacity(texts.len()),
        };
        for text in texts {
            let err = |e: tokenizers::Error| {
                Error::InvalidInput(format!(
                    "tokenizing {text:?} with {}: {e}",
                    self.source.display()
                ))
            };
            let mut enc = self.tokenizer.encode(*text, false).map_err(err)?;
            let truncated = enc.len() + n_added > max_length;
            if truncated {
                enc.truncate(max_length - n_added, 0, TruncationDirection::Right);
            }
            let enc = self.tokenizer.post_process(enc, None, true).map_err(err)?;
            let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
            ids.truncate(max_length);
            let mut mask = vec![1i64; ids.len()];
            mask.resize(max_length, 0);
            ids.resize(max_length, self.pad_id as i64);
            out.ids.push(ids);
            out.attention_mask.push(mask);
            out.truncated.push(truncated);
        }
        Ok(out)
    }
}

fn read_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut t: Tokenizer = text
        .parse()
        .map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))?;
    // Truncation and padding are applied per call by `encode_batch`; keep the pad info only
    // for pad-id resolution.
    t.with_truncation(None)
        .map_err(|e| Error::format(path, format!("cannot clear truncation: {e}")))?;
    Ok(t)
}

/// Reads a token that is either a string or an `AddedToken` object with `content`.
fn token_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// `tokenizer_config.json` wins over `special_tokens_map.json`, as in transformers.
fn read_specials(dir: &Path) -> Result<SpecialTokens> {
    let mut s = SpecialTokens::default();
    for name in ["special_tokens_map.json", "tokenizer_config.json"] {
        let Some(v) = read_json(&dir.join(name))? else {
            continue;
        };
        for (field, slot) in [
            ("pad_token", &mut s.pad),
            ("bos_token", &mut s.bos),
            ("eos_token", &mut s.eos),
            ("unk_token", &mut s.unk),
        ] {
            if let Some(t) = token_field(&v, field) {
                *slot = Some(t);
            }
        }
        if let Some(m) = v.get("model_max_length").and_then(Value::as_u64) {
            // transformers writes a huge sentinel (1e30) when there is no limit.
            if m < 1 << 32 {
                s.model_max_length = Some(m as usize);
            }
        }
    }
    Ok(s)
}

/// Builds the `tokenizer.json` transformers' `CLIPTokenizer` would hold for these files.
fn build_clip(
    vocab_path: &Path,
    merges_path: &Path,
    specials: &SpecialTokens,
) -> Result<Tokenizer> {
    let vocab = read_json(vocab_path)?.unwrap_or(Value::Null);
    let vocab_map = vocab
        .as_object()
        .ok_or_else(|| Error::format(vocab_path, "expected a JSON object of token → id"))?;
    let id_of = |tok: &str| -> Result<u64> {
        vocab_map.get(tok).and_then(Value::as_u64).ok_or_else(|| {
            Error::format(
                vocab_path,
                format!("special token `{tok}` is not in the vocabulary"),
            )
        })
    };
    let merges_text =
        std::fs::read_to_string(merges_path).map_err(|e| Error::io(merges_path, e))?;
    let mut merges = Vec::new();
    for (n, line) in merges_text.lines().enumerate() {
        if (n == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                merges.push(json!([a, b]))
            }
            _ => {
                return Err(Error::format(
                    merges_path,
                    format!(
                        "line {}: expected two space-separated symbols, got {line:?}",
                        n + 1
                    ),
                ));
            }
        }
    }
    let bos = specials.bos.clone().unwrap_or_else(|| CLIP_BOS.into());
    let eos = specials.eos.clone().unwrap_or_else(|| CLIP_EOS.into());
    let unk = specials.unk.clone().unwrap_or_else(|| CLIP_EOS.into());
    let (bos_id, eos_id) = (id_of(&bos)?, id_of(&eos)?);
    id_of(&unk)?;
    let mut added = vec![
        json!({"id": bos_id, "content": bos, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": true, "special": true}),
    ];
    if eos != bos {
        added.push(
            json!({"id": eos_id, "content": eos, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}),
        );
    }
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CLIP_SPLIT_REGEX}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [eos, eos_id], "cls": [bos, bos_id],
            "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    });
    serde_json::from_value::<Tokenizer>(spec).map_err(|e| {
        Error::format(
            vocab_path,
            format!(
                "cannot build a CLIP tokenizer from this vocab.json and {}: {e}",
                merges_path.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dreamforge-tok-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A tiny CLIP-style folder: letters a–e with `</w>` forms, one merge.
    fn tiny_clip(dir: &Path) {
        let mut vocab = serde_json::Map::new();
        let mut id = 0u64;
        for c in ["a", "b", "c", "d", "e", "!"] {
            vocab.insert(c.into(), id.into());
            id += 1;
            vocab.insert(format!("{c}</w>"), id.into());
            id += 1;
        }
        vocab.insert("ab</w>".into(), id.into());
        vocab.insert(CLIP_BOS.into(), (id + 1).into());
        vocab.insert(CLIP_EOS.into(), (id + 2).into());
        std::fs::write(dir.join("vocab.json"), Value::Object(vocab).to_string()).unwrap();
        std::fs::write(dir.join("merges.txt"), "#version: 0.2\na b</w>\n").unwrap();
    }

    #[test]
    fn missing_merges_names_the_file() {
        let d = tmp("nomerges");
        tiny_clip(&d);
        std::fs::remove_file(d.join("merges.txt")).unwrap();
        let err = TextTokenizer::load(&d).unwrap_err().to_string();
        assert!(err.contains("merges.txt"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_vocab_names_the_file() {
        let d = tmp("novocab");
        tiny_clip(&d);
        std::fs::remove_file(d.join("vocab.json")).unwrap();
        let err = TextTokenizer::load(&d).unwrap_err().to_string();
        assert!(err.contains("vocab.json"), "{err}");
        let err = TextTokenizer::load(&d.join("tokenizer.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn clip_pads_truncates_and_reports() {
        let d = tmp("clip");
        tiny_clip(&d);
        let t = TextTokenizer::load(&d).unwrap();
        let eos = t.token_to_id(CLIP_EOS).unwrap() as i64;
        let bos = t.token_to_id(CLIP_BOS).unwrap() as i64;
        assert_eq!(t.pad_id() as i64, eos);
        let e = t.encode_batch(&["AB", "a b c d e a b c d e"], 6).unwrap();
        // "ab" merges into one word token.
        assert_eq!(e.ids[0], vec![bos, 12, eos, eos, eos, eos]);
        assert_eq!(e.attention_mask[0], vec![1, 1, 1, 0, 0, 0]);
        assert_eq!(e.truncated, vec![false, true]);
        assert_eq!(e.ids[1].len(), 6);
        assert_eq!(e.ids[1][0], bos);
        assert_eq!(e.ids[1][5], eos);
        assert!(t.encode_batch(&["a"], 2).is_err());

        // A pad token from tokenizer_config.json (SDXL tokenizer_2 style).
        let over = tmp("clip-over");
        std::fs::write(
            over.join("tokenizer_config.json"),
            r#"{"pad_token": "!", "model_max_length": 77}"#,
        )
        .unwrap();
        let t2 = t.clone().with_special_tokens_from(&over).unwrap();
        assert_eq!(t2.pad_id(), 10);
        assert_eq!(t2.model_max_length(), Some(77));
        assert_eq!(
            t2.encode_batch(&["b"], 4).unwrap().ids[0],
            vec![bos, 3, eos, 10]
        );
        // The pad token is special once configured: "!!" is two `!` tokens (10), not BPE pieces.
        assert_eq!(
            t2.encode_batch(&["!!"], 5).unwrap().ids[0],
            vec![bos, 10, 10, eos, 10]
        );
        assert_eq!(
            t.encode_batch(&["!!"], 5).unwrap().ids[0],
            vec![bos, 10, 11, eos, eos]
        );
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&over);
    }

    #[test]
    fn real_clip_vocab_reports_truncation() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/parity/tokenizer_clip_vocab_merges");
        let t = TextTokenizer::load(&dir).unwrap();
        assert_eq!((t.pad_id(), t.model_max_length()), (49407, Some(77)));
        let long = "a photo of a cat ".repeat(30);
        let e = t.encode_batch(&["a photo of a cat", &long], 77).unwrap();
        assert_eq!(e.truncated, vec![false, true]);
        assert_eq!(&e.ids[0][..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
        assert_eq!((e.ids[1][0], e.ids[1][76]), (49406, 49407));
        assert_eq!(e.attention_mask[1].iter().sum::<i64>(), 77);
    }

    #[test]
    fn bad_merges_line_is_a_format_error() {
        let d = tmp("badmerges");
        tiny_clip(&d);
        std::fs::write(d.join("merges.txt"), "#version: 0.2\na b c\n").unwrap();
        let err = TextTokenizer::load(&d).unwrap_err().to_string();
        assert!(
            err.contains("merges.txt") && err.contains("line 2"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
