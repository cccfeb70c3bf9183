//! Image output: tensors in [-1, 1] → 8-bit RGB PNGs carrying the generation settings as an
//! A1111-style `parameters` text chunk and a `dreamforge` JSON chunk. Files are written to a
//! temporary name in the destination folder and renamed, so a crash or a full disk never
//! leaves a half-written image under the final name.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// An 8-bit RGB image.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// From CHW floats in [-1, 1] (the VAE's output range), rounding like diffusers'
    /// `(x / 2 + 0.5).clamp(0, 1) * 255` followed by `round`.
    pub fn from_chw_signed(chw: &[f32], height: usize, width: usize) -> Self {
        let plane = height * width;
        assert_eq!(chw.len(), 3 * plane, "expected a 3-channel image");
        let mut pixels = vec![0u8; 3 * plane];
        for c in 0..3 {
            for i in 0..plane {
                let v = (chw[c * plane + i] / 2.0 + 0.5).clamp(0.0, 1.0);
                pixels[i * 3 + c] = (v * 255.0).round() as u8;
            }
        }
        Self {
            width: width as u32,
            height: height as u32,
            pixels,
        }
    }
}

/// Writes bytes to `path` atomically (temp file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Output {
            path: path.into(),
            reason: "not a file name".into(),
        })?;
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let out_err = |e: std::io::Error| Error::Output {
        path: path.into(),
        reason: e.to_string(),
    };
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(out_err(e));
    }
    Ok(())
}

/// Encodes a PNG with text chunks (`(keyword, text)` pairs; non-Latin-1 text goes in iTXt).
pub fn encode_png(img: &RgbImage, text: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, img.width, img.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let err = |e: png::EncodingError| Error::InvalidInput(format!("PNG encoding: {e}"));
        for (k, v) in text {
            if v.chars().all(|c| (c as u32) < 256) {
                enc.add_text_chunk(k.to_string(), v.to_string())
                    .map_err(err)?;
            } else {
                enc.add_itxt_chunk(k.to_string(), v.to_string())
                    .map_err(err)?;
            }
        }
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(&img.pixels).map_err(err)?;
        w.finish().map_err(err)?;
    }
    Ok(buf)
}

/// Encodes and writes a PNG atomically.
pub fn save_png(path: &Path, img: &RgbImage, text: &[(&str, &str)]) -> Result<()> {
    let bytes = encode_png(img, text)?;
    write_atomic(path, &bytes)
}

/// Reads the text chunks (tEXt, zTXt, iTXt) of a PNG file.
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let dec = png::Decoder::new(std::io::BufReader::new(f));
    let reader = dec
        .read_info()
        .map_err(|e| Error::format(path, format!("not a readable PNG: {e}")))?;
    let info = reader.info();
    let mut out: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    for t in &info.utf8_text {
        out.push((t.keyword.clone(), t.get_text().unwrap_or_default()));
    }
    for t in &info.compressed_latin1_text {
        out.push((t.keyword.clone(), t.get_text().unwrap_or_default()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_roundtrip_keeps_text_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        let img = RgbImage::from_chw_signed(&[-1.0, 0.0, 1.0, 0.5, -0.5, 0.25], 1, 2);
        assert_eq!(img.pixels, vec![0, 255, 64, 128, 191, 159]);
        save_png(
            &p,
            &img,
            &[
                ("parameters", "a cat\nSteps: 3"),
                ("dreamforge", "{\"é\":1}"),
            ],
        )
        .unwrap();
        let text = read_png_text(&p).unwrap();
        assert!(text.contains(&("parameters".into(), "a cat\nSteps: 3".into())));
        assert!(text.contains(&("dreamforge".into(), "{\"é\":1}".into())));
        let decoded = image::open(&p).unwrap().to_rgb8();
        assert_eq!(decoded.into_raw(), img.pixels);
    }

    #[test]
    fn unwritable_destination_is_an_output_error() {
        let img = RgbImage::from_chw_signed(&[0.0; 3], 1, 1);
        let err = save_png(Path::new("/nonexistent-dir/x.png"), &img, &[]).unwrap_err();
        assert!(matches!(err, Error::Output { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent-dir/x.png"));
    }
}
