//! Scenes of the nano world: one or two objects (shape, colour, size, position) on a solid
//! background, drawn from a seed with a ChaCha8 stream (the same on every machine), and the
//! fixed split of (shape, colour) combinations held out of training captions.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

macro_rules! attribute {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in label order (the judge's class index is the position here).
            pub const ALL: &[$name] = &[$($name::$variant),+];

            /// The caption word(s).
            pub fn word(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }

            /// The judge's class index.
            pub fn index(self) -> usize {
                Self::ALL.iter().position(|&v| v == self).expect("listed")
            }

            /// The value named by `word`.
            pub fn from_word(word: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.word() == word)
            }
        }
    };
}

attribute!(
    /// An object's outline.
    Shape {
        Circle => "circle",
        Square => "square",
        Triangle => "triangle",
        Star => "star",
        Ring => "ring",
        Cross => "cross",
        Diamond => "diamond",
        Hexagon => "hexagon",
    }
);

attribute!(
    /// Object and background colours.
    Colour {
        Red => "red",
        Green => "green",
        Blue => "blue",
        Yellow => "yellow",
        Purple => "purple",
        Orange => "orange",
        White => "white",
        Black => "black",
    }
);

attribute!(
    /// Object size (radius ≈ 0.14 or 0.24 of the image side).
    Size {
        Small => "small",
        Large => "large",
    }
);

attribute!(
    /// Where a single object sits; two objects sit left and right.
    Position {
        Center => "in the center",
        TopLeft => "top left",
        TopRight => "top right",
        BottomLeft => "bottom left",
        BottomRight => "bottom right",
    }
);

impl Colour {
    /// 8-bit sRGB.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 30],
            Colour::Green => [30, 170, 50],
            Colour::Blue => [30, 70, 220],
            Colour::Yellow => [240, 210, 30],
            Colour::Purple => [140, 40, 180],
            Colour::Orange => [245, 130, 20],
            Colour::White => [245, 245, 245],
            Colour::Black => [20, 20, 20],
        }
    }
}

impl Position {
    /// Centre in unit image coordinates (x right, y down).
    pub fn centre(self) -> (f32, f32) {
        match self {
            Position::Center => (0.5, 0.5),
            Position::TopLeft => (0.27, 0.27),
            Position::TopRight => (0.73, 0.27),
            Position::BottomLeft => (0.27, 0.73),
            Position::BottomRight => (0.73, 0.73),
        }
    }
}

/// One object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Obj {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
}

/// A scene: one object at `position`, or two objects (left, right) side by side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scene {
    pub objects: Vec<Obj>,
    /// The single object's position (ignored for two objects, which sit left and right).
    pub position: Position,
    pub background: Colour,
}

impl Scene {
    /// Object centres in unit coordinates, in `objects` order.
    pub fn centres(&self) -> Vec<(f32, f32)> {
        match self.objects.len() {
            1 => vec![self.position.centre()],
            _ => vec![(0.27, 0.5), (0.73, 0.5)],
        }
    }
}

/// True for the (shape, colour) pairs held out of training captions (about one in eight, fixed
/// by a hash of the pair, so the split is the same everywhere): held-out prompts test
/// composition, not memory.
pub fn held_out(shape: Shape, colour: Colour) -> bool {
    let k = (shape.index() * 31 + colour.index() * 17 + 7) % 8;
    k == 3
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, all: &[T]) -> T {
    all[rng.random_range(0..all.len())]
}

fn sample_obj(rng: &mut ChaCha8Rng, background: Colour, want_held_out: Option<bool>) -> Obj {
    loop {
        let o = Obj {
            shape: pick(rng, Shape::ALL),
            colour: pick(rng, Colour::ALL),
            size: pick(rng, Size::ALL),
        };
        if o.colour == background {
            continue;
        }
        match want_held_out {
            Some(h) if held_out(o.shape, o.colour) != h => continue,
            _ => return o,
        }
    }
}

/// The scene for `seed`. `held_out_objects`: `Some(false)` draws only training combinations,
/// `Some(true)` makes the first object a held-out combination (evaluation prompts), `None` any.
pub fn sample_scene(seed: u64, held_out_objects: Option<bool>) -> Scene {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let background = pick(&mut rng, Colour::ALL);
    let n = if rng.random_bool(0.3) { 2 } else { 1 };
    let mut objects = vec![sample_obj(&mut rng, background, held_out_objects)];
    if n == 2 {
        // The second object is never held out in training scenes, and any in evaluation ones.
        let second = held_out_objects.map(|_| false);
        objects.push(sample_obj(&mut rng, background, second));
        // Two objects are drawn small so they never overlap.
        for o in &mut objects {
            o.size = Size::Small;
        }
    }
    Scene {
        objects,
        position: pick(&mut rng, Position::ALL),
        background,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_and_respect_the_split() {
        assert_eq!(sample_scene(5, None), sample_scene(5, None));
        let mut differ = 0;
        let mut two = 0;
        for seed in 0..2000 {
            let s = sample_scene(seed, Some(false));
            assert!(s.objects.iter().all(|o| !held_out(o.shape, o.colour)));
            assert!(s.objects.iter().all(|o| o.colour != s.background));
            let e = sample_scene(seed, Some(true));
            assert!(held_out(e.objects[0].shape, e.objects[0].colour));
            differ += usize::from(s != sample_scene(seed + 1, Some(false)));
            two += usize::from(s.objects.len() == 2);
        }
        assert!(differ > 1990);
        assert!((450..750).contains(&two), "{two} two-object scenes of 2000");
        let held = Shape::ALL
            .iter()
            .flat_map(|&s| Colour::ALL.iter().map(move |&c| (s, c)))
            .filter(|&(s, c)| held_out(s, c))
            .count();
        assert_eq!(held, 8, "one pair in eight is held out");
    }
}
