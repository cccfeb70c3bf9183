//! Masks on the token grid (`W/16 × H/16` for FLUX: VAE factor 8 × patch 2).

use dreamforge_core::Error;
use dreamforge_core::image_io::{GrayImage, RgbImage};

/// A binary mask over a `width × height` token grid, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMask {
    pub width: usize,
    pub height: usize,
    pub on: Vec<bool>,
}

impl TokenMask {
    /// Every token.
    pub fn full(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            on: vec![true; width * height],
        }
    }

    /// A PNG mask (white = subject) resized to the grid with nearest sampling, as the
    /// reference's `create_mask` (which keeps pixels equal to 255; here ≥ 128, so that a
    /// mask saved with anti-aliasing or as JPEG still works). `what` names the file in errors.
    pub fn from_image(
        m: &GrayImage,
        width: usize,
        height: usize,
        what: &str,
    ) -> Result<Self, Error> {
        // PIL's NEAREST: the source pixel under each target pixel's centre.
        let (mw, mh) = (m.width as usize, m.height as usize);
        let mut on = vec![false; width * height];
        for ty in 0..height {
            let y = (((ty as f64 + 0.5) * mh as f64 / height as f64) as usize).min(mh - 1);
            for tx in 0..width {
                let x = (((tx as f64 + 0.5) * mw as f64 / width as f64) as usize).min(mw - 1);
                on[ty * width + tx] = m.pixels[y * mw + x] >= 128;
            }
        }
        let mask = Self { width, height, on };
        if mask.count() == 0 {
            return Err(Error::InvalidInput(format!(
                "{what}: the mask is empty on the {width}×{height} token grid (no white pixels, or a subject smaller than one token)"
            )));
        }
        Ok(mask)
    }

    /// A simple foreground estimate for a reference without a mask: tokens whose mean colour
    /// differs from the image's border colour (the per-channel median of the outermost pixel
    /// ring) by more than 48 levels in some channel — right for a subject on a plain backdrop
    /// (product shots, the nano world), wrong for busy scenes, where a mask is needed.
    pub fn foreground(img: &RgbImage, width: usize, height: usize) -> Self {
        let (w, h) = (img.width as usize, img.height as usize);
        let px = |x: usize, y: usize, c: usize| img.pixels[(y * w + x) * 3 + c] as i32;
        let mut border: [Vec<i32>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for x in 0..w {
            for y in [0, h - 1] {
                for (c, b) in border.iter_mut().enumerate() {
                    b.push(px(x, y, c));
                }
            }
        }
        for y in 0..h {
            for x in [0, w - 1] {
                for (c, b) in border.iter_mut().enumerate() {
                    b.push(px(x, y, c));
                }
            }
        }
        let bg: Vec<i32> = border
            .iter_mut()
            .map(|b| {
                b.sort_unstable();
                b[b.len() / 2]
            })
            .collect();
        let mut on = vec![false; width * height];
        for ty in 0..height {
            for tx in 0..width {
                let (x0, x1) = (
                    tx * w / width,
                    ((tx + 1) * w / width).max(tx * w / width + 1),
                );
                let (y0, y1) = (
                    ty * h / height,
                    ((ty + 1) * h / height).max(ty * h / height + 1),
                );
                let n = ((x1 - x0) * (y1 - y0)) as i32;
                let far = (0..3).any(|c| {
                    let mut s = 0;
                    for y in y0..y1 {
                        for x in x0..x1 {
                            s += px(x, y, c);
                        }
                    }
                    (s / n - bg[c]).abs() > 48
                });
                on[ty * width + tx] = far;
            }
        }
        Self { width, height, on }
    }

    pub fn count(&self) -> usize {
        self.on.iter().filter(|&&b| b).count()
    }

    pub fn get(&self, x: isize, y: isize) -> bool {
        x >= 0
            && y >= 0
            && (x as usize) < self.width
            && (y as usize) < self.height
            && self.on[y as usize * self.width + x as usize]
    }

    /// Grown (`by > 0`, dilation) or shrunk (`by < 0`, erosion) by `|by|` tokens with a square
    /// structuring element.
    pub fn morphed(&self, by: isize) -> Self {
        if by == 0 {
            return self.clone();
        }
        let r = by.abs();
        let mut on = vec![false; self.on.len()];
        for y in 0..self.height as isize {
            for x in 0..self.width as isize {
                let mut any = false;
                let mut all = true;
                for dy in -r..=r {
                    for dx in -r..=r {
                        let v = self.get(x + dx, y + dy);
                        any |= v;
                        all &= v;
                    }
                }
                on[y as usize * self.width + x as usize] = if by > 0 { any } else { all };
            }
        }
        Self {
            width: self.width,
            height: self.height,
            on,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_threshold_and_empty() {
        let mut px = vec![0u8; 32 * 32];
        for y in 8..24 {
            for x in 16..32 {
                px[y * 32 + x] = 255;
            }
        }
        let g = GrayImage {
            width: 32,
            height: 32,
            pixels: px,
        };
        let m = TokenMask::from_image(&g, 4, 4, "m.png").unwrap();
        assert_eq!(m.count(), 4);
        assert!(m.get(2, 1) && m.get(3, 2) && !m.get(1, 1));
        let blank = GrayImage {
            width: 8,
            height: 8,
            pixels: vec![0; 64],
        };
        let e = TokenMask::from_image(&blank, 4, 4, "blank.png")
            .unwrap_err()
            .to_string();
        assert!(e.contains("blank.png") && e.contains("empty"), "{e}");
    }

    #[test]
    fn morphology() {
        let mut m = TokenMask {
            width: 5,
            height: 5,
            on: vec![false; 25],
        };
        m.on[12] = true;
        let d = m.morphed(1);
        assert_eq!(d.count(), 9);
        assert_eq!(d.morphed(-1), m);
        assert_eq!(m.morphed(-1).count(), 0);
    }

    #[test]
    fn foreground_on_a_plain_backdrop() {
        let (w, h) = (16u32, 16u32);
        let mut pixels = vec![200u8; (w * h * 3) as usize];
        for y in 4..8 {
            for x in 8..12 {
                let i = ((y * w + x) * 3) as usize;
                pixels[i..i + 3].copy_from_slice(&[10, 20, 240]);
            }
        }
        let m = TokenMask::foreground(
            &RgbImage {
                width: w,
                height: h,
                pixels,
            },
            4,
            4,
        );
        assert_eq!(m.count(), 1);
        assert!(m.get(2, 1));
    }
}
