//! Captions of the nano world and their parser. `caption` writes the one exact caption of a
//! scene ("a small red circle on a blue background, top left"; "a small red circle and a small
//! green star on an orange background" — left then right). `parse` reads a prompt back into the
//! attributes it states (unstated ones stay open), accepting any word order the grammar's
//! phrases allow, and rejects words outside the world, listing them and the vocabulary: the nano
//! model only knows its world. `complete_prompt` fills what a prompt leaves open, seeded, into
//! the full caption form the shipped model was trained on.

use std::collections::BTreeSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::scene::{Colour, Obj, Position, Scene, Shape, Size};

/// The exact caption of `scene`.
pub fn caption(scene: &Scene) -> String {
    caption_with(scene, &vec![true; scene.objects.len()], true)
}

/// Completes a nano prompt that leaves attributes open ("a red circle on a blue background")
/// into the full caption form pretraining used ("a large red circle on a blue background, in
/// the center"): every size, colour, background and (one object) position it does not state is
/// drawn from `seed`, within the world's rules (an object never takes the background's colour;
/// two objects are small). The result states everything the prompt states, so a picture of it
/// is a picture of the prompt — the caption-upsampling idea, exact here because the world is
/// closed. `None` when nothing is open or the prompt is not a nano prompt.
pub fn complete_prompt(prompt: &str, seed: u64) -> Option<String> {
    let spec = parse(prompt).ok()?;
    let n = spec.objects.len();
    let open = spec.background.is_none()
        || (n == 1 && spec.position.is_none())
        || spec
            .objects
            .iter()
            .any(|o| o.colour.is_none() || o.size.is_none());
    if !open {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pick = |from: &[Colour]| from[rng.random_range(0..from.len())];
    let named: Vec<Colour> = spec.objects.iter().filter_map(|o| o.colour).collect();
    let background = spec.background.unwrap_or_else(|| {
        let free: Vec<Colour> = Colour::ALL
            .iter()
            .copied()
            .filter(|c| !named.contains(c))
            .collect();
        pick(if free.is_empty() { Colour::ALL } else { &free })
    });
    let others: Vec<Colour> = Colour::ALL
        .iter()
        .copied()
        .filter(|&c| c != background)
        .collect();
    let colours: Vec<Colour> = spec
        .objects
        .iter()
        .map(|o| o.colour.unwrap_or_else(|| pick(&others)))
        .collect();
    let objects = spec
        .objects
        .iter()
        .zip(colours)
        .map(|(o, colour)| Obj {
            shape: o.shape,
            colour,
            size: o.size.unwrap_or_else(|| {
                if n == 2 {
                    Size::Small
                } else {
                    Size::ALL[rng.random_range(0..Size::ALL.len())]
                }
            }),
        })
        .collect();
    let position = spec
        .position
        .unwrap_or_else(|| Position::ALL[rng.random_range(0..Position::ALL.len())]);
    Some(caption(&Scene {
        objects,
        position,
        background,
    }))
}

/// The caption of `scene` stating object `i`'s size only where `sizes[i]`, and the position
/// (one object) only with `position`: still true of the scene, just less specific.
pub fn caption_with(scene: &Scene, sizes: &[bool], position: bool) -> String {
    let objs: Vec<String> = scene
        .objects
        .iter()
        .zip(sizes.iter().chain(std::iter::repeat(&true)))
        .map(|(o, &size)| {
            if size {
                format!("a {} {} {}", o.size.word(), o.colour.word(), o.shape.word())
            } else {
                format!("a {} {}", o.colour.word(), o.shape.word())
            }
        })
        .collect();
    let bg = scene.background.word();
    let article = if bg.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    let mut s = format!("{} on {article} {bg} background", objs.join(" and "));
    if scene.objects.len() == 1 && position {
        s.push_str(", ");
        s.push_str(scene.position.word());
    }
    s
}

/// One object a prompt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjSpec {
    pub shape: Shape,
    pub colour: Option<Colour>,
    pub size: Option<Size>,
}

/// What a prompt states; `None` = left open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptSpec {
    pub objects: Vec<ObjSpec>,
    pub background: Option<Colour>,
    pub position: Option<Position>,
}

impl PromptSpec {
    /// True when `scene` satisfies every stated attribute (objects in order).
    pub fn matches(&self, scene: &Scene) -> bool {
        self.objects.len() == scene.objects.len()
            && self.objects.iter().zip(&scene.objects).all(|(p, o)| {
                p.shape == o.shape
                    && p.colour.is_none_or(|c| c == o.colour)
                    && p.size.is_none_or(|s| s == o.size)
            })
            && self.background.is_none_or(|b| b == scene.background)
            && (scene.objects.len() != 1 || self.position.is_none_or(|p| p == scene.position))
    }
}

/// Why a prompt is outside the nano world.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "the nano model only knows its own world; unknown word(s): {}. Its words: {}",
        .unknown.join(", "),
        vocabulary().join(" ")
    )]
    UnknownWords { unknown: Vec<String> },
    #[error("the prompt names no shape (one of: {})", Shape::ALL.iter().map(|s| s.word()).collect::<Vec<_>>().join(", "))]
    NoShape,
    #[error("the nano world has at most two objects per scene (the prompt names {0})")]
    TooManyObjects(usize),
    #[error("`{0}` is not followed by `background`, or a colour is stated twice for one object")]
    Dangling(String),
}

const GLUE: &[&str] = &["a", "an", "and", "on", "the", "background", "in", "with"];
const PLACES: &[&str] = &["center", "centre", "top", "bottom", "left", "right"];

/// Every word the nano world knows, sorted.
pub fn vocabulary() -> Vec<&'static str> {
    let mut v: BTreeSet<&'static str> = GLUE.iter().chain(PLACES).copied().collect();
    v.extend(Shape::ALL.iter().map(|s| s.word()));
    v.extend(Colour::ALL.iter().map(|c| c.word()));
    v.extend(Size::ALL.iter().map(|s| s.word()));
    v.into_iter().collect()
}

fn words(prompt: &str) -> Vec<String> {
    prompt
        .to_lowercase()
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '.' | ';' | ':' | '!'))
        .filter(|w| !w.is_empty())
        .map(|w| match w {
            // Plural-free singulars people type.
            "centre" => "center".to_string(),
            other => other.to_string(),
        })
        .collect()
}

/// Reads the attributes a prompt states.
pub fn parse(prompt: &str) -> Result<PromptSpec, ParseError> {
    let ws = words(prompt);
    let vocab = vocabulary();
    let unknown: Vec<String> = ws
        .iter()
        .filter(|w| !vocab.contains(&w.as_str()))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !unknown.is_empty() {
        return Err(ParseError::UnknownWords { unknown });
    }
    let mut objects = Vec::new();
    let mut colour = None;
    let mut size = None;
    let mut background = None;
    let mut vertical = None;
    let mut horizontal = None;
    let mut center = false;
    for (i, w) in ws.iter().enumerate() {
        let w = w.as_str();
        if let Some(s) = Shape::from_word(w) {
            objects.push(ObjSpec {
                shape: s,
                colour: colour.take(),
                size: size.take(),
            });
        } else if let Some(c) = Colour::from_word(w) {
            if ws.get(i + 1).is_some_and(|n| n == "background") {
                background = Some(c);
            } else if colour.replace(c).is_some() {
                return Err(ParseError::Dangling(w.to_string()));
            }
        } else if let Some(s) = Size::from_word(w) {
            size = Some(s);
        } else {
            match w {
                "top" => vertical = Some(true),
                "bottom" => vertical = Some(false),
                "left" => horizontal = Some(true),
                "right" => horizontal = Some(false),
                "center" => center = true,
                _ => {}
            }
        }
    }
    if objects.is_empty() {
        return Err(ParseError::NoShape);
    }
    // Attributes after the last shape ("star, large, yellow") describe it.
    let last = objects.last_mut().expect("non-empty");
    if let Some(c) = colour {
        if last.colour.is_some() {
            return Err(ParseError::Dangling(c.word().to_string()));
        }
        last.colour = Some(c);
    }
    if let Some(sz) = size {
        last.size.get_or_insert(sz);
    }
    if objects.len() > 2 {
        return Err(ParseError::TooManyObjects(objects.len()));
    }
    let position = match (vertical, horizontal, center) {
        (Some(true), Some(true), _) => Some(Position::TopLeft),
        (Some(true), Some(false), _) => Some(Position::TopRight),
        (Some(false), Some(true), _) => Some(Position::BottomLeft),
        (Some(false), Some(false), _) => Some(Position::BottomRight),
        (None, None, true) => Some(Position::Center),
        _ => None,
    };
    Ok(PromptSpec {
        objects,
        background,
        position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::sample_scene;

    #[test]
    fn every_caption_parses_back_to_its_scene() {
        let orange = Scene {
            objects: vec![crate::scene::Obj {
                shape: Shape::Star,
                colour: Colour::Purple,
                size: Size::Large,
            }],
            position: Position::TopRight,
            background: Colour::Orange,
        };
        assert_eq!(
            caption(&orange),
            "a large purple star on an orange background, top right"
        );
        for seed in 0..3000 {
            let s = sample_scene(seed, None);
            let c = caption(&s);
            let p = parse(&c).unwrap_or_else(|e| panic!("{c}: {e}"));
            assert!(p.matches(&s), "{c} → {p:?}");
            assert_eq!(p.objects.len(), s.objects.len());
            assert!(
                p.objects
                    .iter()
                    .all(|o| o.colour.is_some() && o.size.is_some())
            );
            assert!(p.background.is_some());
            if s.objects.len() == 1 {
                assert_eq!(p.position, Some(s.position), "{c}");
            }
        }
    }

    #[test]
    fn partial_captions_stay_true_of_their_scene() {
        for seed in 0..500 {
            let s = sample_scene(seed, None);
            let n = s.objects.len();
            let c = caption_with(&s, &vec![false; n], false);
            assert!(!c.contains("small") && !c.contains("large"), "{c}");
            let p = parse(&c).unwrap_or_else(|e| panic!("{c}: {e}"));
            assert!(p.matches(&s), "{c}");
            assert!(p.objects.iter().all(|o| o.size.is_none()) && p.position.is_none());
        }
    }

    #[test]
    fn completion_states_everything_and_keeps_what_the_prompt_says() {
        let mut seen: Vec<BTreeSet<String>> = vec![BTreeSet::new(); 4];
        for seed in 0..200 {
            for (k, prompt) in [
                "a red circle on a blue background",
                "a star",
                "a large ring, top left",
                "a green cross and a hexagon on a white background",
            ]
            .into_iter()
            .enumerate()
            {
                let full = complete_prompt(prompt, seed).unwrap();
                let asked = parse(prompt).unwrap();
                let got = parse(&full).unwrap();
                // Everything stated, in the exact caption form.
                assert!(got.background.is_some(), "{full}");
                assert!(
                    got.objects
                        .iter()
                        .all(|o| o.colour.is_some() && o.size.is_some()),
                    "{full}"
                );
                let scene = Scene {
                    objects: got
                        .objects
                        .iter()
                        .map(|o| Obj {
                            shape: o.shape,
                            colour: o.colour.unwrap(),
                            size: o.size.unwrap(),
                        })
                        .collect(),
                    position: got.position.unwrap_or(Position::Center),
                    background: got.background.unwrap(),
                };
                assert_eq!(caption(&scene), full);
                assert!(asked.matches(&scene), "{prompt} -> {full}");
                assert!(
                    scene.objects.iter().all(|o| o.colour != scene.background),
                    "{full}"
                );
                if scene.objects.len() == 2 {
                    assert!(scene.objects.iter().all(|o| o.size == Size::Small));
                }
                assert_eq!(complete_prompt(prompt, seed), Some(full.clone()));
                seen[k].insert(full);
            }
        }
        // The seed reaches every completion: 2 sizes × 5 positions for the first prompt; the
        // two-object one only varies the hexagon's colour (any but the white background).
        assert_eq!(seen[0].len(), 10, "{:?}", seen[0]);
        assert_eq!(seen[3].len(), 7, "{:?}", seen[3]);
        assert!(seen[1].len() > 100, "{}", seen[1].len());
        let full = "a large red circle on a blue background, in the center";
        assert_eq!(complete_prompt(full, 1), None);
        assert_eq!(complete_prompt("a red dog", 1), None);
    }

    #[test]
    fn open_attributes_and_free_phrasing() {
        let p = parse("A red circle on a blue background").unwrap();
        assert_eq!(p.objects[0].shape, Shape::Circle);
        assert_eq!(p.objects[0].colour, Some(Colour::Red));
        assert_eq!((p.objects[0].size, p.position), (None, None));
        assert_eq!(p.background, Some(Colour::Blue));
        let p = parse("star, large, yellow, top right").unwrap();
        assert_eq!(p.objects[0].size, Some(Size::Large));
        assert_eq!(p.position, Some(Position::TopRight));
        assert_eq!(
            parse("a ring in the centre").unwrap().position,
            Some(Position::Center)
        );
    }

    #[test]
    fn words_outside_the_world_are_listed_with_the_vocabulary() {
        let e = parse("a photo of a red cat on the beach").unwrap_err();
        let msg = e.to_string();
        assert_eq!(
            e,
            ParseError::UnknownWords {
                unknown: vec!["beach".into(), "cat".into(), "of".into(), "photo".into()]
            }
        );
        assert!(msg.contains("only knows its own world") && msg.contains("hexagon"));
        assert_eq!(
            parse("a red on a blue background"),
            Err(ParseError::NoShape)
        );
        assert!(matches!(
            parse("a circle and a star and a ring"),
            Err(ParseError::TooManyObjects(3))
        ));
        assert!(matches!(
            parse("a blue circle red"),
            Err(ParseError::Dangling(_))
        ));
        assert_eq!(
            parse("a circle red").unwrap().objects[0].colour,
            Some(Colour::Red)
        );
    }
}
