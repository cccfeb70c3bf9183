//! img2img and inpainting inputs shared by both families, prepared the way diffusers'
//! `VaeImageProcessor` does: the init image resized (Lanczos) to the generation size and
//! normalized to [-1, 1]; the mask converted to grey, resized and binarized (`≥ 0.5` → 1,
//! white = repaint); then nearest-downsampled to the latent grid like
//! `torch.nn.functional.interpolate(mask, size=(h, w))`.

use std::path::{Path, PathBuf};

use dreamforge_core::image_io::{GrayImage, RgbImage};
use dreamforge_core::{Error, HostTensor, Result};

/// An init image (and optional inpainting mask) at the generation size.
#[derive(Debug, Clone)]
pub struct InitImage {
    /// `[1, 3, H, W]` in [-1, 1].
    pub image: HostTensor,
    /// `[1, 1, H, W]` in {0, 1}; 1 = repaint.
    pub mask: Option<HostTensor>,
    /// How much of the schedule runs, in (0, 1]: 1 starts from pure noise.
    pub strength: f32,
    /// Where the image came from (for metadata).
    pub image_path: PathBuf,
    pub mask_path: Option<PathBuf>,
}

/// `strength` must lie in (0, 1].
pub fn check_strength(strength: f32) -> Result<()> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Error::InvalidInput(format!(
            "--strength must be in (0, 1] (got {strength})"
        )));
    }
    Ok(())
}

impl InitImage {
    /// Reads `image` (and `mask`, which must have the init image's size), resizing both to
    /// `width`×`height` with a notice when the sizes differ.
    pub fn load(
        image: &Path,
        mask: Option<&Path>,
        strength: f32,
        width: usize,
        height: usize,
        notices: &mut Vec<String>,
    ) -> Result<Self> {
        check_strength(strength)?;
        let img = RgbImage::read(image)?;
        let (w, h) = (width as u32, height as u32);
        if (img.width, img.height) != (w, h) {
            notices.push(format!(
                "{}: resized from {}x{} to {w}x{h}",
                image.display(),
                img.width,
                img.height
            ));
        }
        let mask_t = match mask {
            Some(mp) => {
                let m = GrayImage::read(mp)?;
                if (m.width, m.height) != (img.width, img.height) {
                    return Err(Error::InvalidInput(format!(
                        "{}: the mask is {}x{} but the init image {} is {}x{}; they must have the same size",
                        mp.display(),
                        m.width,
                        m.height,
                        image.display(),
                        img.width,
                        img.height
                    )));
                }
                let m = m.resized(w, h);
                Some(HostTensor::new(
                    vec![1, 1, height, width],
                    m.to_binary_mask(),
                ))
            }
            None => None,
        };
        let img = img.resized(w, h);
        Ok(Self {
            image: HostTensor::new(vec![1, 3, height, width], img.to_chw_signed()),
            mask: mask_t,
            strength,
            image_path: image.to_path_buf(),
            mask_path: mask.map(Path::to_path_buf),
        })
    }

    /// The image with the repaint region zeroed (`image · (mask < 0.5)`), what inpainting
    /// UNets take as `masked_image`; the plain image without a mask.
    pub fn masked_image(&self) -> HostTensor {
        let Some(mask) = &self.mask else {
            return self.image.clone();
        };
        let plane = mask.data.len();
        let data = self
            .image
            .data
            .iter()
            .enumerate()
            .map(|(i, &v)| if mask.data[i % plane] < 0.5 { v } else { 0.0 })
            .collect();
        HostTensor::new(self.image.shape.clone(), data)
    }
}

/// Nearest-neighbour resize of `[B, C, H, W]` to `[B, C, h, w]` as PyTorch's default
/// `interpolate(mode="nearest")` indexes: `src = floor(dst · H / h)`.
pub fn nearest_resize(t: &HostTensor, h: usize, w: usize) -> HostTensor {
    let [b, c, sh, sw] = [t.shape[0], t.shape[1], t.shape[2], t.shape[3]];
    let mut out = Vec::with_capacity(b * c * h * w);
    let scale_h = sh as f32 / h as f32;
    let scale_w = sw as f32 / w as f32;
    for n in 0..b * c {
        let base = n * sh * sw;
        for y in 0..h {
            let sy = ((y as f32 * scale_h).floor() as usize).min(sh - 1);
            for x in 0..w {
                let sx = ((x as f32 * scale_w).floor() as usize).min(sw - 1);
                out.push(t.data[base + sy * sw + sx]);
            }
        }
    }
    HostTensor::new(vec![b, c, h, w], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strength_bounds() {
        assert!(check_strength(1.0).is_ok());
        assert!(check_strength(0.01).is_ok());
        for bad in [0.0, -0.5, 1.01, f32::NAN] {
            let e = check_strength(bad).unwrap_err().to_string();
            assert!(e.contains("(0, 1]"), "{e}");
        }
    }

    #[test]
    fn nearest_takes_top_left_of_each_cell() {
        let t = HostTensor::new(vec![1, 1, 4, 4], (0..16).map(|v| v as f32).collect());
        let r = nearest_resize(&t, 2, 2);
        assert_eq!(r.data, vec![0.0, 2.0, 8.0, 10.0]);
    }

    #[test]
    fn mask_must_match_image_size_and_images_are_resized_with_a_notice() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("i.png");
        let mask = dir.path().join("m.png");
        let small = dir.path().join("s.png");
        image::RgbImage::from_pixel(16, 8, image::Rgb([255, 0, 0]))
            .save(&img)
            .unwrap();
        image::GrayImage::from_fn(16, 8, |x, _| image::Luma([if x < 8 { 0 } else { 255 }]))
            .save(&mask)
            .unwrap();
        image::GrayImage::from_pixel(4, 4, image::Luma([255]))
            .save(&small)
            .unwrap();
        let mut notes = Vec::new();
        let ii = InitImage::load(&img, Some(&mask), 0.5, 16, 8, &mut notes).unwrap();
        assert!(notes.is_empty());
        assert_eq!(ii.image.shape, vec![1, 3, 8, 16]);
        assert_eq!(ii.image.data[0], 1.0);
        let m = ii.mask.as_ref().unwrap();
        assert_eq!((m.data[0], m.data[15]), (0.0, 1.0));
        let masked = ii.masked_image();
        assert_eq!((masked.data[0], masked.data[15]), (1.0, 0.0));

        let ii = InitImage::load(&img, None, 1.0, 32, 32, &mut notes).unwrap();
        assert_eq!(ii.image.shape, vec![1, 3, 32, 32]);
        assert!(notes[0].contains("resized from 16x8 to 32x32"), "{notes:?}");

        let e = InitImage::load(&img, Some(&small), 0.5, 16, 8, &mut notes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.png") && e.contains("same size"), "{e}");
        let e = InitImage::load(&img, None, 0.0, 16, 8, &mut notes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--strength"), "{e}");
    }
}
