//! The subject folder: 1–5 (or more) photos of one subject, each with an optional caption in a
//! `.txt` file of the same stem (kohya / ai-toolkit convention; diffusers' DreamBooth scripts
//! have no sidecar captions), else the instance prompt (`a photo of {token} {class}`).
//!
//! Images are read as photos ([`RgbImage::read_photo`]: EXIF orientation applied, alpha over
//! white, grey / 16-bit to 8-bit RGB), their short side resized to the training resolution
//! (Lanczos, as PIL in the references) and centre-cropped to a square (diffusers DreamBooth
//! `--center_crop`; T-LoRA SDXL crops the centre square before resizing, the same pixels).
//!
//! An image that cannot be read stops the run (naming the file) instead of being skipped: a
//! subject set is a handful of hand-picked photos, and silently training on a subset would
//! change the result without the user noticing.

use std::path::{Path, PathBuf};

use dreamforge_core::image_io::RgbImage;
use dreamforge_core::{Error, Result};

/// File extensions read as images (the formats the engine decodes).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// One training image, ready for the autoencoder.
#[derive(Debug, Clone)]
pub struct SubjectImage {
    pub path: PathBuf,
    pub caption: String,
    /// `resolution × resolution` RGB.
    pub image: RgbImage,
    /// Size of the photo as read (after EXIF rotation).
    pub original: (u32, u32),
}

/// A loaded subject folder.
#[derive(Debug, Clone)]
pub struct SubjectSet {
    pub images: Vec<SubjectImage>,
    /// What the user should know (upscaled images, files ignored, captions without the
    /// trigger word, …).
    pub warnings: Vec<String>,
}

fn extension(p: &Path) -> Option<String> {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
}

/// Reads `dir` (not recursive; files in name order): images, their captions, the rest
/// ignored with a warning. `instance_prompt` is the caption of images without a `.txt`;
/// `trigger` is checked to appear in every caption.
pub fn load_subject(
    dir: &Path,
    instance_prompt: &str,
    trigger: &str,
    resolution: u32,
) -> Result<SubjectSet> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = 0usize;
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        if p.is_dir() {
            dirs += 1;
        } else {
            files.push(p);
        }
    }
    files.sort();
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let is_image = |p: &Path| extension(p).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()));
    let images: Vec<&PathBuf> = files.iter().filter(|p| is_image(p)).collect();
    if images.is_empty() {
        let found = if files.is_empty() && dirs == 0 {
            "the folder is empty".to_string()
        } else {
            let mut shown: Vec<String> = files.iter().take(8).map(|p| name(p)).collect();
            if files.len() > 8 {
                shown.push(format!("and {} more", files.len() - 8));
            }
            if dirs > 0 {
                shown.push(format!("{dirs} folder(s), not searched"));
            }
            format!("it holds {}", shown.join(", "))
        };
        return Err(Error::InvalidInput(format!(
            "{}: no subject images (.png, .jpg, .jpeg) found; {found}",
            dir.display()
        )));
    }
    let mut warnings = Vec::new();
    let ignored: Vec<String> = files
        .iter()
        .filter(|p| !is_image(p) && extension(p).as_deref() != Some("txt"))
        .map(|p| name(p))
        .collect();
    if !ignored.is_empty() {
        warnings.push(format!(
            "{}: ignored {} file(s) that are not PNG/JPEG images or .txt captions: {}",
            dir.display(),
            ignored.len(),
            ignored.join(", ")
        ));
    }
    let trigger_lc = trigger.to_lowercase();
    let mut out = Vec::with_capacity(images.len());
    for p in images {
        let caption_path = p.with_extension("txt");
        let caption = if caption_path.is_file() {
            let text =
                std::fs::read_to_string(&caption_path).map_err(|e| Error::io(&caption_path, e))?;
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if text.is_empty() {
                warnings.push(format!(
                    "{}: empty caption; using the instance prompt",
                    caption_path.display()
                ));
                instance_prompt.to_string()
            } else {
                text
            }
        } else {
            instance_prompt.to_string()
        };
        if !trigger.is_empty()
            && !caption
                .to_lowercase()
                .split(|c: char| !c.is_alphanumeric() && c != '_' && c != '<' && c != '>')
                .any(|w| w == trigger_lc)
        {
            warnings.push(format!(
                "{}: the caption \"{caption}\" does not contain the trigger word `{trigger}`; the adapter will not tie the subject to it for this image",
                name(p)
            ));
        }
        let (photo, notes) = RgbImage::read_photo(p)?;
        let short = photo.width.min(photo.height);
        if short < resolution {
            warnings.push(format!(
                "{}: {}x{} is smaller than the training resolution {resolution}; it is upscaled (blurrier training target)",
                name(p),
                photo.width,
                photo.height
            ));
        }
        if notes.had_alpha {
            warnings.push(format!(
                "{}: transparent pixels were composited over white",
                name(p)
            ));
        }
        let original = (photo.width, photo.height);
        out.push(SubjectImage {
            path: p.clone(),
            caption,
            image: photo.center_square(resolution),
            original,
        });
    }
    Ok(SubjectSet {
        images: out,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
            .save(path)
            .unwrap();
    }

    #[test]
    fn reads_images_captions_and_reports_odd_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        // A wide image: left half red, right half blue; the centre square straddles both.
        save_rgb(&d.join("a.png"), 8, 4, |x, _| {
            if x < 4 { [255, 0, 0] } else { [0, 0, 255] }
        });
        std::fs::write(d.join("a.txt"), "  a sks dog\n on grass ").unwrap();
        // 16-bit grey, no caption.
        image::ImageBuffer::<image::Luma<u16>, _>::from_fn(4, 4, |_, _| image::Luma([65535u16]))
            .save(d.join("b.png"))
            .unwrap();
        // RGBA, fully transparent black → white.
        image::RgbaImage::from_fn(4, 4, |_, _| image::Rgba([0, 0, 0, 0]))
            .save(d.join("c.PNG"))
            .unwrap();
        std::fs::write(d.join("notes.md"), "x").unwrap();
        let s = load_subject(d, "a photo of sks dog", "sks", 4).unwrap();
        assert_eq!(s.images.len(), 3);
        assert_eq!(s.images[0].caption, "a sks dog on grass");
        assert_eq!(s.images[0].original, (8, 4));
        let px = &s.images[0].image.pixels;
        assert_eq!((s.images[0].image.width, s.images[0].image.height), (4, 4));
        // Row 0: red, red, blue, blue (the centre 4 columns are x = 2..6).
        assert_eq!(&px[0..3], &[255, 0, 0]);
        assert_eq!(&px[9..12], &[0, 0, 255]);
        assert_eq!(s.images[1].caption, "a photo of sks dog");
        assert!(s.images[1].image.pixels.iter().all(|&v| v == 255));
        assert!(s.images[2].image.pixels.iter().all(|&v| v == 255));
        let w = s.warnings.join("\n");
        assert!(w.contains("notes.md"), "{w}");
        assert!(w.contains("c.PNG: transparent"), "{w}");

        // Small images warn; captions without the trigger warn.
        std::fs::write(d.join("b.txt"), "a dog").unwrap();
        let s = load_subject(d, "a photo of sks dog", "sks", 16).unwrap();
        let w = s.warnings.join("\n");
        assert!(w.contains("smaller than the training resolution 16"), "{w}");
        assert!(
            w.contains("b.png: the caption \"a dog\" does not contain"),
            "{w}"
        );
    }

    #[test]
    fn exif_rotation_is_applied() {
        // A JPEG 8 wide × 2 high tagged "rotate 90° clockwise" reads as 2 × 8.
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("r.jpg");
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode(&[128u8; 8 * 2 * 3], 8, 2, image::ExtendedColorType::Rgb8)
            .unwrap();
        // APP1 Exif segment, big-endian TIFF, one IFD entry: Orientation (0x0112) = 6.
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let len = (app1.len() + 2) as u16;
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        std::fs::write(&p, out).unwrap();
        let (img, notes) = RgbImage::read_photo(&p).unwrap();
        assert!(notes.rotated);
        assert_eq!((img.width, img.height), (2, 8));
    }

    #[test]
    fn empty_folders_and_broken_images_are_errors_naming_what_was_found() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let e = load_subject(d, "p", "sks", 8).unwrap_err().to_string();
        assert!(
            e.contains("no subject images") && e.contains("empty"),
            "{e}"
        );
        std::fs::write(d.join("x.gif"), "GIF89a").unwrap();
        std::fs::create_dir(d.join("more")).unwrap();
        let e = load_subject(d, "p", "sks", 8).unwrap_err().to_string();
        assert!(e.contains("x.gif") && e.contains("1 folder(s)"), "{e}");
        std::fs::write(d.join("broken.jpg"), b"\xFF\xD8\xFF\xE0 truncated").unwrap();
        let e = load_subject(d, "p", "sks", 8).unwrap_err().to_string();
        assert!(
            e.contains("broken.jpg") && e.contains("not a readable image"),
            "{e}"
        );
        let missing = d.join("nope");
        let e = load_subject(&missing, "p", "sks", 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
