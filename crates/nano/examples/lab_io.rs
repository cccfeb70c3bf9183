//! Data in and out of the PyTorch nano laboratory (`tools/nano/torch_lab.py`): dumps nano
//! scenes (pixels, exact captions, their token ids) as raw arrays, and judges raw sample arrays
//! against their prompts with the shipped judge. The laboratory trains the same diffusers /
//! transformers architectures as `dreamforge nano pretrain` on a GPU, to try training recipes
//! in minutes before spending a 2.5 h CPU run on one.
//!
//! ```text
//! lab_io dump DIR N SEED [train|held-out|seen]   # DIR/{images.u8 [N,64,64,3], ids.i32 [N,16],
//!                                                #      captions.txt, empty_ids.i32, tokenizer/}
//! lab_io eval SAMPLES.u8 PROMPTS.txt JUDGE       # prints prompt fidelity + per-attribute rates
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use dreamforge_models::text::tokenizer::TextTokenizer;
use dreamforge_nano::caption::{caption, parse};
use dreamforge_nano::judge_train::load_judge;
use dreamforge_nano::metrics::judge_prompts;
use dreamforge_nano::model::NanoConfig;
use dreamforge_nano::pretrain::write_tokenizer;
use dreamforge_nano::{render, sample_scene};

fn write(path: &Path, bytes: &[u8]) {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(bytes))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn ids_bytes(tok: &TextTokenizer, texts: &[&str], len: usize) -> Vec<u8> {
    let enc = tok
        .encode_batch(texts, len)
        .expect("nano captions tokenize");
    enc.ids
        .into_iter()
        .flatten()
        .flat_map(|v| (v as i32).to_le_bytes())
        .collect()
}

fn dump(dir: PathBuf, n: usize, seed: u64, split: &str) {
    let cfg = NanoConfig::default();
    std::fs::create_dir_all(&dir).expect("create dump dir");
    write_tokenizer(&dir.join("tokenizer"), &cfg).expect("tokenizer");
    let tok = TextTokenizer::load(&dir.join("tokenizer")).expect("tokenizer loads");
    let split = match split {
        "train" | "seen" => Some(false),
        "held-out" => Some(true),
        other => panic!("split {other}: train|held-out|seen"),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(n * cfg.side * cfg.side * 3);
    let mut captions = Vec::with_capacity(n);
    for _ in 0..n {
        let s = sample_scene(rng.random::<u64>(), split);
        pixels.extend(render(&s, cfg.side));
        captions.push(caption(&s));
    }
    let len = cfg.max_tokens();
    let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
    write(&dir.join("images.u8"), &pixels);
    write(&dir.join("ids.i32"), &ids_bytes(&tok, &texts, len));
    write(&dir.join("empty_ids.i32"), &ids_bytes(&tok, &[""], len));
    write(
        &dir.join("captions.txt"),
        (captions.join("\n") + "\n").as_bytes(),
    );
    println!("{n} scenes, {len} tokens each -> {}", dir.display());
}

fn eval(samples: PathBuf, prompts: PathBuf, judge: PathBuf) {
    let device = Device::flex();
    let judge = load_judge(&judge, &device).expect("judge loads");
    let raw = std::fs::read(&samples).expect("samples");
    let prompts: Vec<String> = std::fs::read_to_string(&prompts)
        .expect("prompts")
        .lines()
        .map(str::to_owned)
        .collect();
    let n = prompts.len();
    assert_eq!(raw.len(), n * 64 * 64 * 3, "samples.u8 is [n, 64, 64, 3]");
    let mut chw = vec![0f32; raw.len()];
    for i in 0..n {
        for p in 0..64 * 64 {
            for c in 0..3 {
                chw[i * 3 * 4096 + c * 4096 + p] =
                    raw[i * 3 * 4096 + p * 3 + c] as f32 / 127.5 - 1.0;
            }
        }
    }
    let x = Tensor::<4>::from_data(TensorData::new(chw, [n, 3, 64, 64]), &device);
    let judged = judge_prompts(&judge, x, &prompts).expect("nano prompts");
    let (mut all, mut bg, mut count, mut shape, mut colour, mut pos) = (0, 0, 0, 0, 0, 0);
    for j in &judged {
        let spec = parse(&j.prompt).expect("parses");
        let s = j.reading.scene();
        all += j.follows_prompt as usize;
        bg += (spec.background == Some(s.background)) as usize;
        count += (spec.objects.len() == s.objects.len()) as usize;
        shape += (spec.objects[0].shape == s.objects[0].shape) as usize;
        colour += (spec.objects[0].colour == Some(s.objects[0].colour)) as usize;
        pos += (s.objects.len() != 1 || spec.position.is_none_or(|p| p == s.position)) as usize;
    }
    let pct = |k: usize| 100.0 * k as f64 / n as f64;
    println!(
        "{{\"n\": {n}, \"fidelity\": {:.1}, \"background\": {:.1}, \"count\": {:.1}, \"shape0\": {:.1}, \"colour0\": {:.1}, \"position\": {:.1}}}",
        pct(all),
        pct(bg),
        pct(count),
        pct(shape),
        pct(colour),
        pct(pos)
    );
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    match a.first().map(String::as_str) {
        Some("dump") if a.len() >= 4 => dump(
            a[1].clone().into(),
            a[2].parse().expect("N"),
            a[3].parse().expect("SEED"),
            a.get(4).map(String::as_str).unwrap_or("train"),
        ),
        Some("eval") if a.len() == 4 => eval(
            a[1].clone().into(),
            a[2].clone().into(),
            a[3].clone().into(),
        ),
        _ => {
            eprintln!(
                "usage: lab_io dump DIR N SEED [train|held-out|seen] | lab_io eval SAMPLES.u8 PROMPTS.txt JUDGE"
            );
            std::process::exit(2);
        }
    }
}
