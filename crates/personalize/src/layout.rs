//! Where each reference's tokens go: a mask on the reference's grid moved by a shift to the
//! generation's grid, as `(source token, destination token)` pairs.

use dreamforge_core::Error;

use crate::mask::TokenMask;

/// A shift in tokens (`dx` right, `dy` down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shift {
    pub dx: isize,
    pub dy: isize,
}

impl Shift {
    /// `DX,DY` in pixels, rounded to whole tokens of `token_px` pixels; returns the shift and,
    /// when rounding changed it, a notice saying so.
    pub fn parse_pixels(s: &str, token_px: usize) -> Result<(Self, Option<String>), Error> {
        let bad = || {
            Error::InvalidInput(format!(
                "--shift `{s}`: expected DX,DY in pixels, e.g. -128,0"
            ))
        };
        let (a, b) = s.split_once(',').ok_or_else(bad)?;
        let a: f64 = a.trim().parse().map_err(|_| bad())?;
        let b: f64 = b.trim().parse().map_err(|_| bad())?;
        if !a.is_finite() || !b.is_finite() {
            return Err(bad());
        }
        let t = token_px as f64;
        let shift = Self {
            dx: (a / t).round() as isize,
            dy: (b / t).round() as isize,
        };
        let (px, py) = (shift.dx * token_px as isize, shift.dy * token_px as isize);
        let note = (px as f64 != a || py as f64 != b).then(|| {
            format!("--shift {s} rounded to whole {token_px}-pixel tokens: {px},{py} pixels ({},{} tokens)", shift.dx, shift.dy)
        });
        Ok((shift, note))
    }
}

/// One reference's placement.
#[derive(Debug, Clone)]
pub struct Placement {
    /// `(source, destination)` token indices, row-major on the shared grid.
    pub pairs: Vec<(usize, usize)>,
    /// The destination mask (where the subject lands).
    pub dest: TokenMask,
}

impl Placement {
    /// `mask` moved by `shift`; an error when any masked token would leave the canvas
    /// (`what` names the reference in the message).
    pub fn new(mask: &TokenMask, shift: Shift, what: &str) -> Result<Self, Error> {
        let (w, h) = (mask.width as isize, mask.height as isize);
        let mut pairs = Vec::new();
        let mut dest = TokenMask {
            width: mask.width,
            height: mask.height,
            on: vec![false; mask.on.len()],
        };
        let mut off = 0;
        for y in 0..h {
            for x in 0..w {
                if !mask.get(x, y) {
                    continue;
                }
                let (nx, ny) = (x + shift.dx, y + shift.dy);
                if nx < 0 || ny < 0 || nx >= w || ny >= h {
                    off += 1;
                    continue;
                }
                let d = (ny * w + nx) as usize;
                pairs.push(((y * w + x) as usize, d));
                dest.on[d] = true;
            }
        }
        if off > 0 {
            return Err(Error::InvalidInput(format!(
                "{what}: the shift ({},{}) tokens pushes {off} of the subject's {} tokens off the {w}×{h}-token canvas",
                shift.dx,
                shift.dy,
                mask.count()
            )));
        }
        Ok(Self { pairs, dest })
    }
}

/// Places every reference; overlapping destinations are refused (naming both).
pub fn place_all(items: &[(TokenMask, Shift, String)]) -> Result<Vec<Placement>, Error> {
    let placed: Vec<Placement> = items
        .iter()
        .map(|(m, s, what)| Placement::new(m, *s, what))
        .collect::<Result<_, _>>()?;
    for i in 0..placed.len() {
        for j in i + 1..placed.len() {
            let n = placed[i]
                .dest
                .on
                .iter()
                .zip(&placed[j].dest.on)
                .filter(|(a, b)| **a && **b)
                .count();
            if n > 0 {
                return Err(Error::InvalidInput(format!(
                    "{} and {} overlap on {n} token(s) where they land; move one with --shift or shrink a mask",
                    items[i].2, items[j].2
                )));
            }
        }
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(w: usize, h: usize, x0: usize, y0: usize, s: usize) -> TokenMask {
        let mut m = TokenMask {
            width: w,
            height: h,
            on: vec![false; w * h],
        };
        for y in y0..y0 + s {
            for x in x0..x0 + s {
                m.on[y * w + x] = true;
            }
        }
        m
    }

    #[test]
    fn shift_moves_and_off_canvas_is_refused() {
        let m = square(8, 8, 1, 1, 2);
        let p = Placement::new(&m, Shift { dx: 3, dy: 4 }, "ref 1").unwrap();
        assert_eq!(p.pairs.len(), 4);
        assert!(p.pairs.contains(&(9, 5 * 8 + 4)));
        assert!(p.dest.get(5, 6) && !p.dest.get(1, 1));
        let e = Placement::new(&m, Shift { dx: 6, dy: 0 }, "ref 1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ref 1") && e.contains("off the 8×8-token canvas"),
            "{e}"
        );
    }

    #[test]
    fn overlaps_refused() {
        let a = (square(8, 8, 0, 0, 3), Shift::default(), "ref 1".to_string());
        let b = (
            square(8, 8, 0, 0, 3),
            Shift { dx: 2, dy: 0 },
            "ref 2".to_string(),
        );
        let e = place_all(&[a.clone(), b]).unwrap_err().to_string();
        assert!(e.contains("ref 1 and ref 2 overlap on 3"), "{e}");
        let c = (
            square(8, 8, 0, 0, 3),
            Shift { dx: 4, dy: 4 },
            "ref 2".to_string(),
        );
        assert_eq!(place_all(&[a, c]).unwrap().len(), 2);
    }

    #[test]
    fn pixel_shifts_round_to_tokens() {
        let (s, note) = Shift::parse_pixels("-128,0", 16).unwrap();
        assert_eq!((s.dx, s.dy, note), (-8, 0, None));
        let (s, note) = Shift::parse_pixels("20,-9", 16).unwrap();
        assert_eq!((s.dx, s.dy), (1, -1));
        assert!(note.unwrap().contains("16,-16 pixels"));
        assert!(Shift::parse_pixels("3", 16).is_err());
        assert!(Shift::parse_pixels("a,b", 16).is_err());
    }
}
