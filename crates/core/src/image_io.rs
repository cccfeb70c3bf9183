//! Image I/O. Output: tensors in [-1, 1] → 8-bit RGB PNGs carrying the generation settings as
//! an A1111-style `parameters` text chunk and a `dreamforge` JSON chunk. Files are written to a
//! temporary name in the destination folder and renamed, so a crash or a full disk never
//! leaves a half-written image under the final name. Input: init images and masks (PNG / JPEG,
//! any bit depth or colour type, converted like PIL's `convert("RGB")` / `convert("L")`),
//! Lanczos resizing as diffusers' `VaeImageProcessor` does, and the [-1, 1] / {0, 1} tensors
//! img2img and inpainting take.

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

impl RgbImage {
    /// Reads a PNG or JPEG; alpha is dropped and grey / 16-bit images are converted to 8-bit
    /// RGB. An unreadable, truncated or unsupported file is a format error naming the file.
    pub fn read(path: &Path) -> Result<Self> {
        let img = open_image(path)?.to_rgb8();
        let (width, height) = img.dimensions();
        Ok(Self {
            width,
            height,
            pixels: img.into_raw(),
        })
    }

    /// Reads a photo as a user's camera or editor left it: the EXIF orientation applied (phone
    /// pictures are stored sideways with a rotate tag), transparency composited over white
    /// (a cut-out subject stays on a plain background instead of whatever colours hide under
    /// alpha 0), grey and 16-bit images converted to 8-bit RGB. Returns what was done.
    pub fn read_photo(path: &Path) -> Result<(Self, PhotoNotes)> {
        use image::ImageDecoder;
        let reader = image_reader(path)?;
        let bad = |e: image::ImageError| Error::format(path, format!("not a readable image: {e}"));
        let mut decoder = reader.into_decoder().map_err(bad)?;
        let orientation = decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut img = image::DynamicImage::from_decoder(decoder).map_err(bad)?;
        if img.width() == 0 || img.height() == 0 {
            return Err(Error::format(path, "the image is empty (0 pixels)"));
        }
        let notes = PhotoNotes {
            rotated: orientation != image::metadata::Orientation::NoTransforms,
            had_alpha: img.color().has_alpha(),
            sixteen_bit: img.color().bytes_per_pixel() / img.color().channel_count() > 1,
        };
        img.apply_orientation(orientation);
        let rgba = img.to_rgba32f();
        let (width, height) = rgba.dimensions();
        let pixels = rgba
            .pixels()
            .flat_map(|p| {
                let a = p.0[3].clamp(0.0, 1.0);
                let over_white =
                    |v: f32| ((v.clamp(0.0, 1.0) * a + (1.0 - a)) * 255.0).round() as u8;
                [over_white(p.0[0]), over_white(p.0[1]), over_white(p.0[2])]
            })
            .collect();
        Ok((
            Self {
                width,
                height,
                pixels,
            },
            notes,
        ))
    }

    /// The mirror image (left ↔ right).
    pub fn flipped_horizontal(&self) -> Self {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut pixels = Vec::with_capacity(self.pixels.len());
        for y in 0..h {
            for x in (0..w).rev() {
                let i = (y * w + x) * 3;
                pixels.extend_from_slice(&self.pixels[i..i + 3]);
            }
        }
        Self {
            width: self.width,
            height: self.height,
            pixels,
        }
    }

    /// The centred square of side `min(width, height)`, resized (Lanczos) to `side`.
    pub fn center_square(&self, side: u32) -> Self {
        let c = self.width.min(self.height);
        let (x0, y0) = ((self.width - c) / 2, (self.height - c) / 2);
        let mut pixels = Vec::with_capacity((c * c * 3) as usize);
        for y in y0..y0 + c {
            let row = ((y * self.width + x0) * 3) as usize;
            pixels.extend_from_slice(&self.pixels[row..row + (c * 3) as usize]);
        }
        Self {
            width: c,
            height: c,
            pixels,
        }
        .resized(side, side)
    }

    /// Each pixel repeated `k`×`k` times (nearest-neighbour enlargement for viewing).
    pub fn upscaled_nearest(self, k: u32) -> Self {
        if k <= 1 {
            return self;
        }
        let (w, h) = (self.width as usize, self.height as usize);
        let k = k as usize;
        let mut pixels = Vec::with_capacity(self.pixels.len() * k * k);
        for y in 0..h * k {
            for x in 0..w * k {
                let i = ((y / k) * w + x / k) * 3;
                pixels.extend_from_slice(&self.pixels[i..i + 3]);
            }
        }
        Self {
            width: (w * k) as u32,
            height: (h * k) as u32,
            pixels,
        }
    }

    /// Lanczos-3 resize (diffusers resizes with PIL's Lanczos).
    pub fn resized(&self, width: u32, height: u32) -> Self {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        Self {
            width,
            height,
            pixels: lanczos::<image::Rgb<u8>>(&self.pixels, self.width, self.height, width, height),
        }
    }

    /// CHW floats in [-1, 1] (`2·(x/255) − 1`, diffusers' `normalize`).
    pub fn to_chw_signed(&self) -> Vec<f32> {
        let plane = (self.width * self.height) as usize;
        let mut out = vec![0f32; 3 * plane];
        for i in 0..plane {
            for c in 0..3 {
                out[c * plane + i] = self.pixels[i * 3 + c] as f32 / 255.0 * 2.0 - 1.0;
            }
        }
        out
    }
}

/// What [`RgbImage::read_photo`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhotoNotes {
    /// An EXIF orientation other than "as stored" was applied.
    pub rotated: bool,
    /// The image had an alpha channel (composited over white).
    pub had_alpha: bool,
    /// The image had 16-bit (or float) channels.
    pub sixteen_bit: bool,
}

/// An 8-bit single-channel image (an inpainting mask: white = repaint).
#[derive(Debug, Clone, PartialEq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl GrayImage {
    /// Reads a PNG or JPEG and converts it to luminance (an RGBA mask's alpha is ignored).
    pub fn read(path: &Path) -> Result<Self> {
        let img = open_image(path)?.to_luma8();
        let (width, height) = img.dimensions();
        Ok(Self {
            width,
            height,
            pixels: img.into_raw(),
        })
    }

    /// Lanczos-3 resize.
    pub fn resized(&self, width: u32, height: u32) -> Self {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        Self {
            width,
            height,
            pixels: lanczos::<image::Luma<u8>>(
                &self.pixels,
                self.width,
                self.height,
                width,
                height,
            ),
        }
    }

    /// `[H·W]` in {0, 1}: diffusers' mask processor binarizes `x/255 ≥ 0.5` to 1.
    pub fn to_binary_mask(&self) -> Vec<f32> {
        self.pixels
            .iter()
            .map(|&p| if p as f32 / 255.0 >= 0.5 { 1.0 } else { 0.0 })
            .collect()
    }
}

/// Lanczos-3 resize of 8-bit pixels of type `P` (row-major, interleaved).
fn lanczos<P: image::Pixel<Subpixel = u8> + 'static>(
    pixels: &[u8],
    width: u32,
    height: u32,
    new_width: u32,
    new_height: u32,
) -> Vec<u8> {
    let buf = image::ImageBuffer::<P, Vec<u8>>::from_raw(width, height, pixels.to_vec())
        .expect("pixel buffer matches the dimensions");
    image::imageops::resize(
        &buf,
        new_width,
        new_height,
        image::imageops::FilterType::Lanczos3,
    )
    .into_raw()
}

/// A reader for `path` whose format was recognised from its bytes.
fn image_reader(path: &Path) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        return Err(Error::format(
            path,
            "not a readable image (PNG or JPEG expected)",
        ));
    }
    Ok(reader)
}

fn open_image(path: &Path) -> Result<image::DynamicImage> {
    let reader = image_reader(path)?;
    let img = reader
        .decode()
        .map_err(|e| Error::format(path, format!("not a readable image: {e}")))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::format(path, "the image is empty (0 pixels)"));
    }
    Ok(img)
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
    fn reads_grey_and_rgba_pngs_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let grey = dir.path().join("g.png");
        image::GrayImage::from_raw(2, 1, vec![0, 200])
            .unwrap()
            .save(&grey)
            .unwrap();
        let rgb = RgbImage::read(&grey).unwrap();
        assert_eq!((rgb.width, rgb.height), (2, 1));
        assert_eq!(rgb.pixels, vec![0, 0, 0, 200, 200, 200]);
        let chw = rgb.to_chw_signed();
        assert_eq!(chw[0], -1.0);
        assert!((chw[1] - (200.0 / 255.0 * 2.0 - 1.0)).abs() < 1e-7);
        let m = GrayImage::read(&grey).unwrap();
        assert_eq!(m.to_binary_mask(), vec![0.0, 1.0]);

        let rgba = dir.path().join("a.png");
        image::RgbaImage::from_raw(1, 1, vec![10, 20, 30, 0])
            .unwrap()
            .save(&rgba)
            .unwrap();
        assert_eq!(RgbImage::read(&rgba).unwrap().pixels, vec![10, 20, 30]);

        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"\x89PNG\r\n\x1a\ntruncated").unwrap();
        let e = RgbImage::read(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad.png") && e.contains("not a readable image"),
            "{e}"
        );
        let missing = dir.path().join("missing.png");
        assert!(
            RgbImage::read(&missing)
                .unwrap_err()
                .to_string()
                .contains("missing.png")
        );
        let resized = rgb.resized(4, 2);
        assert_eq!(
            (resized.width, resized.height, resized.pixels.len()),
            (4, 2, 24)
        );
    }

    #[test]
    fn flipping_mirrors_each_row() {
        let img = RgbImage {
            width: 2,
            height: 2,
            pixels: vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4],
        };
        let f = img.flipped_horizontal();
        assert_eq!(f.pixels, vec![2, 2, 2, 1, 1, 1, 4, 4, 4, 3, 3, 3]);
        assert_eq!(f.flipped_horizontal(), img);
    }

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
