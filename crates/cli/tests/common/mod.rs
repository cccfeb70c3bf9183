//! Helpers shared by the CLI end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity")
}

pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dreamforge"))
        .args(args)
        .output()
        .expect("binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failure with `code` whose `error:` line contains every needle.
pub fn assert_fails(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in: {err}"));
    for n in needles {
        assert!(line.contains(n), "`{n}` not in `{line}`");
    }
    assert!(!err.contains("panicked"), "{err}");
}

pub fn png_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "png"));
    v.sort();
    v
}

/// A golden tensor of a fixture folder as f32 (shape, data).
pub fn golden_tensor(fixture: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixtures().join(fixture).join("golden.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), data)
}

/// Writes one golden tensor of a fixture as a one-tensor safetensors file (a `--noise` input).
pub fn write_golden_tensor(fixture: &str, key: &str, path: &Path) {
    let bytes = std::fs::read(fixtures().join(fixture).join("golden.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    safetensors::serialize_to_file([("noise", t)], None, path).unwrap();
}

/// A PNG's 8-bit RGB pixels, size and text chunks.
pub fn read_png(path: &Path) -> (usize, usize, Vec<u8>, Vec<(String, String)>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    let info = reader.info();
    let text = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    (frame.width as usize, frame.height as usize, buf, text)
}

/// Largest difference (in 8-bit levels) between PNG pixels and a golden `[3, H, W]` image in
/// [0, 1] (diffusers `output_type="pt"`), image `index` of the batch.
/// The largest per-value difference between two 8-bit images.
pub fn max_byte_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len(), "images of different sizes");
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

pub fn max_level_diff(png: &[u8], golden: &[f32], index: usize, h: usize, w: usize) -> i32 {
    let plane = h * w;
    let g = &golden[index * 3 * plane..(index + 1) * 3 * plane];
    let mut worst = 0i32;
    for c in 0..3 {
        for i in 0..plane {
            let want = (g[c * plane + i] * 255.0).round() as i32;
            worst = worst.max((png[i * 3 + c] as i32 - want).abs());
        }
    }
    worst
}
