//! Nano subjects: concepts the nano model never saw, for personalization experiments
//! (shared/design/NANO.md "Subjects"). Pretraining objects are flat colours; a subject is an
//! object of a known class (its shape word, the DreamBooth "class noun") wearing a unique
//! two-colour texture — stripes at an angle, a checkerboard, dots or concentric bands — drawn
//! in the object's own coordinates, so it moves and scales with the object. Deterministic from
//! a seed, rendered with the world's 4×4 anti-aliasing.
//!
//! A subject set is ONE image (the hardest setting of the T-LoRA paper): the subject large, at
//! a position, on a background. Evaluation prompts put it in contexts the image did not show
//! (other backgrounds and positions); the judge checks those attributes (prompt fidelity) and
//! its features give subject similarity to the training image.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::render::{inside, radius, supersample};
use crate::scene::{Colour, Position, Shape, Size};

/// A subject's texture, in object-local coordinates (units of the object radius).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pattern {
    Stripes { angle: f32, period: f32 },
    Checker { period: f32 },
    Dots { period: f32 },
    Bands { period: f32 },
}

/// One subject.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Subject {
    /// The class: the shape word the prompts use.
    pub shape: Shape,
    pub base: Colour,
    pub accent: Colour,
    pub pattern: Pattern,
}

impl Subject {
    /// The subject of `seed` (shapes with room for a texture: not the thin ring or cross).
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EB1_EC75);
        let shapes = [
            Shape::Circle,
            Shape::Square,
            Shape::Triangle,
            Shape::Star,
            Shape::Diamond,
            Shape::Hexagon,
        ];
        let shape = shapes[rng.random_range(0..shapes.len())];
        let base = Colour::ALL[rng.random_range(0..Colour::ALL.len())];
        let accent = loop {
            let c = Colour::ALL[rng.random_range(0..Colour::ALL.len())];
            if c != base {
                break c;
            }
        };
        let period = rng.random_range(0.35..0.6);
        let pattern = match rng.random_range(0..4) {
            0 => Pattern::Stripes {
                angle: rng.random_range(0.0..std::f32::consts::PI),
                period,
            },
            1 => Pattern::Checker { period },
            2 => Pattern::Dots { period },
            _ => Pattern::Bands { period },
        };
        Self {
            shape,
            base,
            accent,
            pattern,
        }
    }

    /// The colour at offset `(x, y)` from the centre, in units of the object radius.
    fn colour_at(&self, x: f32, y: f32) -> Colour {
        let accent = match self.pattern {
            Pattern::Stripes { angle, period } => {
                let t = x * angle.cos() + y * angle.sin();
                (t / period).rem_euclid(1.0) < 0.5
            }
            Pattern::Checker { period } => {
                ((x / period).floor() as i64 + (y / period).floor() as i64).rem_euclid(2) == 0
            }
            Pattern::Dots { period } => {
                let fx = (x / period).rem_euclid(1.0) - 0.5;
                let fy = (y / period).rem_euclid(1.0) - 0.5;
                fx * fx + fy * fy < 0.09
            }
            Pattern::Bands { period } => ((x * x + y * y).sqrt() / period).rem_euclid(1.0) < 0.5,
        };
        if accent { self.accent } else { self.base }
    }

    /// The subject in a scene as `side`×`side` 8-bit RGB (row-major HWC).
    pub fn render(
        &self,
        size: Size,
        position: Position,
        background: Colour,
        side: usize,
    ) -> Vec<u8> {
        let r = radius(size);
        let (cx, cy) = position.centre();
        let bg = background.rgb().map(f32::from);
        supersample(side, |u, v| {
            let (dx, dy) = (u - cx, v - cy);
            if inside(self.shape, dx, dy, r) {
                self.colour_at(dx / r, dy / r).rgb().map(f32::from)
            } else {
                bg
            }
        })
    }
}

/// The caption of the subject (trigger word `token`) in a scene: colour left unstated (the
/// texture is the subject's identity), e.g. "a large sks star on a blue background, top left".
pub fn subject_caption(
    token: &str,
    shape: Shape,
    size: Size,
    position: Position,
    background: Colour,
) -> String {
    let bg = background.word();
    let article = if bg.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!(
        "a {} {token} {} on {article} {bg} background, {}",
        size.word(),
        shape.word(),
        position.word()
    )
}

/// A one-image subject set: the subject of `seed`, large, at a seeded position and background
/// (a colour different from both of its own), with its caption.
pub struct SubjectSet {
    pub subject: Subject,
    pub position: Position,
    pub background: Colour,
}

impl SubjectSet {
    pub fn from_seed(seed: u64) -> Self {
        let subject = Subject::from_seed(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0005_CE2E);
        let position = Position::ALL[rng.random_range(0..Position::ALL.len())];
        let background = loop {
            let c = Colour::ALL[rng.random_range(0..Colour::ALL.len())];
            if c != subject.base && c != subject.accent {
                break c;
            }
        };
        Self {
            subject,
            position,
            background,
        }
    }

    /// Evaluation prompts: the subject in every (background, position) context the training
    /// image does not show, except backgrounds matching its own colours (which would hide it),
    /// `count` of them, spread over backgrounds and positions.
    pub fn eval_prompts(&self, token: &str, count: usize) -> Vec<String> {
        let mut out = Vec::new();
        let bgs: Vec<Colour> = Colour::ALL
            .iter()
            .copied()
            .filter(|&c| c != self.background && c != self.subject.base && c != self.subject.accent)
            .collect();
        let poss: Vec<Position> = Position::ALL
            .iter()
            .copied()
            .filter(|&p| p != self.position)
            .collect();
        let mut i = 0;
        while out.len() < count && i < bgs.len() * poss.len() {
            let bg = bgs[i % bgs.len()];
            let pos = poss[(i / bgs.len() + i) % poss.len()];
            out.push(subject_caption(
                token,
                self.subject.shape,
                Size::Large,
                pos,
                bg,
            ));
            i += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_textured_deterministic_and_distinct() {
        let s = SubjectSet::from_seed(3);
        let a = s.subject.render(Size::Large, s.position, s.background, 64);
        assert_eq!(
            a,
            SubjectSet::from_seed(3)
                .subject
                .render(Size::Large, s.position, s.background, 64)
        );
        // Both texture colours appear exactly, and the background.
        let count = |c: Colour| a.chunks(3).filter(|p| *p == c.rgb()).count();
        assert!(count(s.subject.base) > 20, "{:?}", s.subject);
        assert!(count(s.subject.accent) > 20, "{:?}", s.subject);
        assert!(count(s.background) > 1500);
        let others: Vec<Subject> = (0..12).map(Subject::from_seed).collect();
        for i in 0..others.len() {
            for j in i + 1..others.len() {
                assert_ne!(others[i], others[j]);
            }
        }
        let p = s.eval_prompts("sks", 8);
        assert_eq!(p.len(), 8);
        assert!(
            p.iter()
                .all(|q| q.contains("sks") && !q.contains(s.background.word()))
        );
        let spec = crate::parse(&p[0].replace("sks ", "")).unwrap();
        assert_eq!(spec.objects[0].shape, s.subject.shape);
    }
}
