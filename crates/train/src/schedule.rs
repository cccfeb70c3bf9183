//! Learning-rate schedules as pure functions of the step: constant, linear decay and cosine
//! decay to `min_lr_ratio · lr`, each after an optional linear warm-up from 0 (the shapes of
//! diffusers' `get_scheduler("constant_with_warmup" | "linear" | "cosine")`, with a floor),
//! and optionally a stable phase at the peak rate before the decay (warmup-stable-decay, "WSD",
//! Hu et al. 2024, MiniCPM §4: the decay is confined to the last steps of the run).

use serde::{Deserialize, Serialize};

/// The decay shape after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

/// A schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    /// Steps of linear warm-up from 0 to the base rate.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Steps held at the base rate after warm-up before the decay starts (0 = the decay spans
    /// everything after warm-up).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stable_steps: u64,
    pub total_steps: u64,
    /// The rate decays to `min_lr_ratio · lr` (0 = to zero).
    #[serde(default)]
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    pub fn constant() -> Self {
        Self {
            kind: ScheduleKind::Constant,
            warmup_steps: 0,
            stable_steps: 0,
            total_steps: 0,
            min_lr_ratio: 0.0,
        }
    }

    /// The multiplier of the base rate for the update made at `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_start = self.warmup_steps + self.stable_steps;
        let decay_steps = self.total_steps.saturating_sub(decay_start);
        if step < decay_start || decay_steps == 0 || self.kind == ScheduleKind::Constant {
            return 1.0;
        }
        let t = ((step - decay_start) as f64 / decay_steps as f64).min(1.0);
        let shape = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => 1.0 - t,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
        };
        self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape
    }

    /// The learning rate at `step` for base rate `lr`.
    pub fn lr(&self, lr: f64, step: u64) -> f64 {
        lr * self.factor(step)
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_shapes() {
        let s = LrSchedule {
            kind: ScheduleKind::Cosine,
            warmup_steps: 10,
            stable_steps: 0,
            total_steps: 110,
            min_lr_ratio: 0.1,
        };
        assert!((s.factor(0) - 0.1).abs() < 1e-12);
        assert!((s.factor(9) - 1.0).abs() < 1e-12);
        assert!((s.factor(10) - 1.0).abs() < 1e-12);
        assert!(
            (s.factor(60) - 0.55).abs() < 1e-12,
            "half-way: floor + half the range"
        );
        assert!((s.factor(110) - 0.1).abs() < 1e-12);
        assert!(
            (s.factor(500) - 0.1).abs() < 1e-12,
            "stays at the floor past the end"
        );
        let lin = LrSchedule {
            kind: ScheduleKind::Linear,
            warmup_steps: 0,
            stable_steps: 0,
            total_steps: 100,
            min_lr_ratio: 0.0,
        };
        assert!((lin.lr(1e-3, 25) - 0.75e-3).abs() < 1e-15);
        assert_eq!(LrSchedule::constant().factor(12345), 1.0);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"cosine\""));
        assert!(
            !json.contains("stable_steps"),
            "no stable phase: the config reads as before"
        );
        assert_eq!(serde_json::from_str::<LrSchedule>(&json).unwrap(), s);
    }

    #[test]
    fn warmup_stable_decay() {
        let s = LrSchedule {
            kind: ScheduleKind::Linear,
            warmup_steps: 10,
            stable_steps: 70,
            total_steps: 100,
            min_lr_ratio: 0.0,
        };
        assert!((s.factor(4) - 0.5).abs() < 1e-12, "warm-up unchanged");
        for step in 10..80 {
            assert_eq!(s.factor(step), 1.0, "stable at step {step}");
        }
        assert!(
            (s.factor(90) - 0.5).abs() < 1e-12,
            "half-way through the decay"
        );
        assert_eq!(s.factor(100), 0.0);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<LrSchedule>(&json).unwrap(), s);
    }
}
