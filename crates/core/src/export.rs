//! Writing a model back in its checkpoint layout: the [`WeightLoader`] records which file key
//! (and whether transposed) each parameter it built came from; [`ParamKeys`] turns those
//! records into module paths, which survive training and Burn record round trips, and exports
//! any model of the same structure as safetensors under the original keys — so a model trained
//! here loads in diffusers / transformers, and through the same loader here.
//!
//! [`WeightLoader`]: crate::WeightLoader

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

use crate::{Error, HostTensor, Result, to_host};

/// A parameter's file key and whether the file stores it transposed (PyTorch `nn.Linear`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKey {
    pub key: String,
    pub transposed: bool,
}

/// Module path (`blocks.0.attn.to_q.weight`) → file key.
#[derive(Debug, Clone, Default)]
pub struct ParamKeys {
    by_path: BTreeMap<String, FileKey>,
}

struct Paths<'a> {
    stack: Vec<String>,
    ids: Option<&'a HashMap<ParamId, FileKey>>,
    out: Vec<(String, Option<FileKey>, Option<HostTensor>)>,
    read_values: bool,
}

impl ModuleVisitor for Paths<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.stack.join(".");
        let key = self.ids.and_then(|m| m.get(&param.id).cloned());
        let value = self.read_values.then(|| to_host(param.val()));
        self.out.push((path, key, value));
    }
}

impl ParamKeys {
    /// The keys of `model`, built just now through a loader whose [`records`] are `records`
    /// (parameter ids are matched once, here; afterwards only paths are used).
    ///
    /// [`records`]: crate::WeightLoader::records
    pub fn of<M: Module>(model: &M, records: &[(ParamId, FileKey)]) -> Self {
        let ids: HashMap<ParamId, FileKey> = records.iter().cloned().collect();
        let mut v = Paths {
            stack: Vec::new(),
            ids: Some(&ids),
            out: Vec::new(),
            read_values: false,
        };
        model.visit(&mut v);
        Self {
            by_path: v
                .out
                .into_iter()
                .filter_map(|(p, k, _)| k.map(|k| (p, k)))
                .collect(),
        }
    }

    /// Module path → the name the model asked its loader for (see
    /// [`crate::WeightLoader::names`]): canonical names for every parameter, also those read
    /// from fused or renamed file tensors. Keys built this way are for matching, not export.
    pub fn of_names<M: Module>(model: &M, names: &[(ParamId, String)]) -> Self {
        let records: Vec<(ParamId, FileKey)> = names
            .iter()
            .map(|(id, n)| {
                (
                    *id,
                    FileKey {
                        key: n.clone(),
                        transposed: false,
                    },
                )
            })
            .collect();
        Self::of(model, &records)
    }

    /// The key of the parameter at module path `path`.
    /// Every file key, in module-path order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.by_path.values().map(|k| k.key.as_str())
    }

    pub fn key_of(&self, path: &str) -> Option<String> {
        self.by_path.get(path).map(|k| k.key.clone())
    }

    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// `model`'s parameters under their file keys in file layout, sorted by key. A parameter
    /// without a known key (built outside the loader) is an error naming its path.
    pub fn export<M: Module>(&self, model: &M) -> Result<Vec<(String, HostTensor)>> {
        let values = module_tensors(model);
        let mut out = Vec::with_capacity(values.len());
        for (path, value) in values {
            let fk = self.by_path.get(&path).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "parameter `{path}` has no checkpoint key (the model differs from the one the keys were taken from)"
                ))
            })?;
            let t = if fk.transposed {
                value.transpose2()
            } else {
                value
            };
            out.push((fk.key.clone(), t));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Serializes f32 tensors (and string metadata) as safetensors bytes.
pub fn safetensors_bytes(
    tensors: &[(String, HostTensor)],
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.shape.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidInput(format!("cannot serialize tensors: {e}")))?;
    let meta = (!metadata.is_empty()).then(|| metadata.clone());
    safetensors::serialize(views, meta)
        .map_err(|e| Error::InvalidInput(format!("cannot serialize tensors: {e}")))
}

/// Writes tensors as a safetensors file atomically (temp file + rename).
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, HostTensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    crate::image_io::write_atomic(path, &safetensors_bytes(tensors, metadata)?)
}

/// Every float parameter of a Burn-native `model` (one not built through a loader) under its
/// module path (`convs.0.weight`), in Burn's layout, sorted by path.
pub fn module_tensors<M: Module>(model: &M) -> Vec<(String, HostTensor)> {
    let mut v = Paths {
        stack: Vec::new(),
        ids: None,
        out: Vec::new(),
        read_values: true,
    };
    model.visit(&mut v);
    let mut out: Vec<(String, HostTensor)> = v
        .out
        .into_iter()
        .map(|(p, _, t)| (p, t.expect("values were read")))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

struct Loader<'a> {
    stack: Vec<String>,
    set: &'a crate::WeightSet,
    used: usize,
    error: Option<Error>,
}

impl burn::module::ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let path = self.stack.join(".");
        let want = param.shape().dims::<D>().to_vec();
        let got = match self.set.read_f32(&path) {
            Ok(t) => t,
            Err(e) => {
                self.error = Some(e);
                return param;
            }
        };
        if got.shape != want {
            self.error = Some(Error::ShapeMismatch {
                path: self.set.origin().to_path_buf(),
                key: path,
                expected: want,
                found: got.shape,
            });
            return param;
        }
        self.used += 1;
        param.map(|t| {
            let device = t.device();
            got.to_device::<D>(&device)
        })
    }
}

/// Loads tensors written from [`module_tensors`] into `model` (same architecture): a missing
/// key, a wrong shape or a key the model does not have is an error naming it.
pub fn load_module_tensors<M: Module>(model: M, set: &crate::WeightSet) -> Result<M> {
    let mut l = Loader {
        stack: Vec::new(),
        set,
        used: 0,
        error: None,
    };
    let model = model.map(&mut l);
    if let Some(e) = l.error {
        return Err(e);
    }
    if l.used != set.keys().len() {
        return Err(Error::UnusedKeys {
            path: set.origin().to_path_buf(),
            count: set.keys().len() - l.used,
            examples: Vec::new(),
        });
    }
    Ok(model)
}
