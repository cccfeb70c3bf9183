//! The per-step pass: sets every T-LoRA branch's rank mask for the step about to run. It is
//! the explicit per-step context of ARCHITECTURE.md — the sampler (each step) or the trainer
//! (each batch, one timestep per batch as in the reference) calls it before the forward; plain
//! LoRA branches are left as they are.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};

use crate::rank::RankSchedule;

struct SetMasks<'a> {
    path: Vec<String>,
    schedules: &'a [Option<RankSchedule>],
    progress: f64,
}

impl ModuleMapper for SetMasks<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // …/adapters/branches/<i>/mask
        let n = self.path.len();
        if D != 1 || n < 4 || self.path[n - 1] != "mask" || self.path[n - 4] != "adapters" {
            return param;
        }
        let Some(Some(schedule)) = self.path[n - 2]
            .parse::<usize>()
            .ok()
            .and_then(|i| self.schedules.get(i))
        else {
            return param;
        };
        let (schedule, progress) = (*schedule, self.progress);
        param.map(|t| {
            let r = t.dims()[0];
            let m = schedule.mask_at(r, progress);
            let dtype: burn::tensor::FloatDType = t.dtype().into();
            Tensor::<D>::from_data(TensorData::new(m, t.shape()), &t.device()).cast(dtype)
        })
    }
}

/// Sets the masks of branch `i` of every adapted weight from `schedules[i]` (`None`: a plain
/// LoRA, left alone) at `progress = (T − t)/T` (see [`crate::rank`]).
pub fn at_step<M: Module>(model: M, schedules: &[Option<RankSchedule>], progress: f64) -> M {
    if schedules.iter().all(Option::is_none) {
        return model;
    }
    model.map(&mut SetMasks {
        path: Vec::new(),
        schedules,
        progress,
    })
}
