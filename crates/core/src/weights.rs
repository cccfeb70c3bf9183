//! Safetensors weights I/O: memory-mapped single files and sharded `*.index.json` sets,
//! F32/F16/BF16 (and F64) decoded to the compute dtype, pickle checkpoints refused without
//! being read as pickle, and a tracking loader that makes missing keys, unused keys and shape
//! mismatches errors naming the key and both shapes.
//!
//! Format conversions (e.g. BFL FLUX keys → diffusers names) are expressed as a [`KeyMap`]
//! from the model's parameter names to slices of file tensors, so nothing is copied twice.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::module::{Param, ParamId};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, tensor::TensorInfo};

use crate::export::FileKey;
use crate::init::Initializer;
use crate::{Error, Result};

/// A tensor decoded to f32 on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// Rows `start..start+len` along dim 0.
    pub fn rows(&self, start: usize, len: usize) -> HostTensor {
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = len;
        HostTensor::new(shape, self.data[start * row..(start + len) * row].to_vec())
    }

    /// Swaps the two halves along dim 0 (BFL final-layer `shift, scale` → diffusers `scale, shift`).
    pub fn swap_halves(&self) -> HostTensor {
        let half = self.shape[0] / 2;
        let row: usize = self.shape[1..].iter().product();
        let mut data = self.data[half * row..].to_vec();
        data.extend_from_slice(&self.data[..half * row]);
        HostTensor::new(self.shape.clone(), data)
    }

    /// Transposes a 2-D tensor (PyTorch Linear `[out, in]` → Burn `[in, out]`).
    pub fn transpose2(&self) -> HostTensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        HostTensor::new(vec![c, r], out)
    }

    pub fn to_device<const D: usize>(self, device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(self.data, self.shape), device)
    }
}

const PICKLE_EXTENSIONS: &[&str] = &["ckpt", "pt", "pth", "bin", "pkl", "pickle"];

/// Refuses pickle checkpoints by extension (`.ckpt`, `.pt`, `.pth`, `.bin`, ...), unread.
pub fn refuse_pickle_by_name(path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    if ext.is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.as_str())) {
        return Err(Error::Pickle {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Refuses a file that is not safetensors but looks like a torch save (zip) or a raw pickle
/// (protocol header), without ever unpickling. Only consulted after safetensors parsing failed,
/// since a safetensors header length can begin with the same bytes.
pub fn refuse_pickle_by_content(path: &Path, head: &[u8]) -> Result<()> {
    let zip = head.starts_with(b"PK\x03\x04");
    let pickle = head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]);
    if zip || pickle {
        return Err(Error::Pickle {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// One memory-mapped, validated safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
    metadata: HashMap<String, String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Opens and validates a file: the header must parse and the offsets must cover the file
    /// exactly (a truncated or lying header is an error here, not a crash later).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        #[allow(unsafe_code)]
        // SAFETY: the map is read-only; a file truncated underneath us by another process is
        // the one case mmap cannot guard against, as in every mmap-based loader.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        refuse_pickle_by_name(&path)?;
        let (n, meta) = match safetensors::SafeTensors::read_metadata(&mmap) {
            Ok(v) => v,
            Err(e) => {
                // Not safetensors: say "pickle" when that is what it looks like.
                refuse_pickle_by_content(&path, &mmap[..mmap.len().min(8)])?;
                return Err(Error::Safetensors {
                    path: path.clone(),
                    reason: describe_st_error(&e, mmap.len()),
                });
            }
        };
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(Self {
            path,
            mmap,
            data_start: 8 + n,
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.tensors.get(key)
    }

    /// The `__metadata__` string map of the header.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[self.data_start + info.data_offsets.0..self.data_start + info.data_offsets.1]
    }

    fn info_or_err(&self, key: &str) -> Result<&TensorInfo> {
        self.tensors.get(key).ok_or_else(|| Error::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
            hint: None,
        })
    }

    /// Decodes a floating-point tensor to f32.
    pub fn read_f32(&self, key: &str) -> Result<HostTensor> {
        let info = self.info_or_err(key)?;
        let b = self.bytes(info);
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => {
                return Err(Error::UnsupportedDtype {
                    path: self.path.clone(),
                    key: key.into(),
                    dtype: format!("{other:?} (expected F32, F16 or BF16)"),
                });
            }
        };
        Ok(HostTensor::new(info.shape.clone(), data))
    }

    /// Decodes an integer tensor (I64/I32/U8...) to i64, e.g. token ids in fixtures.
    pub fn read_i64(&self, key: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let info = self.info_or_err(key)?;
        let b = self.bytes(info);
        let data: Vec<i64> = match info.dtype {
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            Dtype::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
            Dtype::U8 => b.iter().map(|&v| v as i64).collect(),
            Dtype::BOOL => b.iter().map(|&v| (v != 0) as i64).collect(),
            other => {
                return Err(Error::UnsupportedDtype {
                    path: self.path.clone(),
                    key: key.into(),
                    dtype: format!("{other:?} (expected an integer dtype)"),
                });
            }
        };
        Ok((info.shape.clone(), data))
    }
}

fn describe_st_error(e: &safetensors::SafeTensorError, len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("file is {len} bytes, too short for a header (truncated?)"),
        E::InvalidHeaderLength => {
            "header length points past the end of the file (truncated?)".into()
        }
        E::MetadataIncompleteBuffer => {
            "tensor data does not match the file size (truncated, or the header lies)".into()
        }
        E::InvalidOffset(k) => format!("tensor `{k}` has offsets outside the data section"),
        other => format!("{other}"),
    }
}

/// A set of safetensors files read as one (a single file, or the shards of an index).
#[derive(Debug)]
pub struct WeightSet {
    origin: PathBuf,
    files: Vec<SafetensorsFile>,
    key_file: HashMap<String, usize>,
}

/// File names a diffusers / transformers component folder may hold, most specific first.
const WEIGHT_FILE_NAMES: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
    // Hub repos' half-precision variants, when the full-precision file was not downloaded.
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors.index.fp16.json",
    "model.safetensors.index.fp16.json",
];

impl WeightSet {
    /// Opens a `.safetensors` file, a `*.safetensors.index.json`, or a component folder that
    /// holds one of those (pickle-only folders are refused with a hint).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            return Self::open_dir(path);
        }
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".index.json") || name.ends_with(".index.fp16.json") {
            return Self::open_index(path);
        }
        let file = SafetensorsFile::open(path)?;
        Ok(Self::from_files(path.to_path_buf(), vec![file]))
    }

    fn open_dir(dir: &Path) -> Result<Self> {
        for name in WEIGHT_FILE_NAMES {
            let p = dir.join(name);
            if p.exists() {
                return Self::open(p);
            }
        }
        let mut st = Vec::new();
        let mut pickles = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let p = entry.map_err(|e| Error::io(dir, e))?.path();
            match p.extension().and_then(|e| e.to_str()) {
                Some("safetensors") => st.push(p),
                Some(e) if PICKLE_EXTENSIONS.contains(&e) => pickles.push(p),
                _ => {}
            }
        }
        st.sort();
        match (st.len(), pickles.first()) {
            (1, _) => Self::open(&st[0]),
            (0, Some(p)) => Err(Error::Pickle { path: p.clone() }),
            (0, None) => Err(Error::format(
                dir,
                "no safetensors weights found in this folder",
            )),
            _ => Err(Error::format(
                dir,
                format!(
                    "{} safetensors files and no index.json; pass the file to use",
                    st.len()
                ),
            )),
        }
    }

    fn open_index(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(path, "no `weight_map` object"))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<String> = map
            .values()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::format(path, "weight_map values must be file names"))
            })
            .collect::<Result<BTreeSet<_>>>()?
            .into_iter()
            .collect();
        shard_names.sort();
        let mut files = Vec::new();
        for name in &shard_names {
            if name.contains("..") || Path::new(name).is_absolute() {
                return Err(Error::format(
                    path,
                    format!("shard name `{name}` escapes the folder"),
                ));
            }
            files.push(SafetensorsFile::open(dir.join(name))?);
        }
        let set = Self::from_files(path.to_path_buf(), files);
        for (key, shard) in map {
            let shard = shard.as_str().unwrap_or_default();
            match set.key_file.get(key) {
                Some(&i)
                    if set.files[i].path.file_name().and_then(|n| n.to_str()) == Some(shard) => {}
                _ => {
                    return Err(Error::MissingKey {
                        path: dir.join(shard),
                        key: key.clone(),
                        hint: Some(format!("listed in {}", path.display())),
                    });
                }
            }
        }
        Ok(set)
    }

    /// A set with no tensors, for [`WeightLoader::initializing`]; `origin` names it in messages.
    pub fn empty(origin: impl Into<PathBuf>) -> Self {
        Self::from_files(origin.into(), Vec::new())
    }

    fn from_files(origin: PathBuf, files: Vec<SafetensorsFile>) -> Self {
        let mut key_file = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for k in f.keys() {
                key_file.insert(k.to_string(), i);
            }
        }
        Self {
            origin,
            files,
            key_file,
        }
    }

    /// The path the set was opened from (file, index or folder entry).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    pub fn contains(&self, key: &str) -> bool {
        self.key_file.contains_key(key)
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.key_file.keys().map(String::as_str).collect();
        k.sort();
        k
    }

    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.file_of(key)
            .and_then(|f| f.info(key))
            .map(|i| i.shape.as_slice())
    }

    pub fn dtype(&self, key: &str) -> Option<Dtype> {
        self.file_of(key).and_then(|f| f.info(key)).map(|i| i.dtype)
    }

    fn file_of(&self, key: &str) -> Option<&SafetensorsFile> {
        self.key_file.get(key).map(|&i| &self.files[i])
    }

    pub fn read_f32(&self, key: &str) -> Result<HostTensor> {
        match self.file_of(key) {
            Some(f) => f.read_f32(key),
            None => Err(Error::MissingKey {
                path: self.origin.clone(),
                key: key.into(),
                hint: None,
            }),
        }
    }

    pub fn read_i64(&self, key: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        match self.file_of(key) {
            Some(f) => f.read_i64(key),
            None => Err(Error::MissingKey {
                path: self.origin.clone(),
                key: key.into(),
                hint: None,
            }),
        }
    }

    /// Metadata of the first file (adapters keep theirs in a single file).
    pub fn metadata(&self) -> HashMap<String, String> {
        self.files
            .first()
            .map(|f| f.metadata.clone())
            .unwrap_or_default()
    }
}

/// Where a model parameter comes from in a file: a whole tensor, a row slice of one (fused
/// qkv splits), optionally with its two halves swapped (BFL final-layer modulation) or, for a
/// 2-D tensor stored as `x @ W` instead of `nn.Linear`'s `[out, in]` (OpenCLIP's
/// `text_projection`), transposed. Row slicing happens first, then the swap, then the transpose.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySource {
    pub key: String,
    pub rows: Option<(usize, usize)>,
    pub swap_halves: bool,
    pub transpose: bool,
}

impl KeySource {
    pub fn whole(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            ..Self::default()
        }
    }

    /// Rows `start .. start + len` of `key` (dim 0).
    pub fn rows(key: impl Into<String>, start: usize, len: usize) -> Self {
        Self {
            key: key.into(),
            rows: Some((start, len)),
            ..Self::default()
        }
    }

    /// `key` transposed (2-D only).
    pub fn transposed(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            transpose: true,
            ..Self::default()
        }
    }
}

/// Model parameter name → file source. Names absent from the map are read under their own name.
pub type KeyMap = HashMap<String, KeySource>;

/// Reads model parameters from a [`WeightSet`], tracking which file keys were consumed.
pub struct WeightLoader<'a> {
    set: &'a WeightSet,
    map: KeyMap,
    prefix: String,
    device: Device,
    used: RefCell<BTreeSet<String>>,
    ignored: Vec<fn(&str) -> bool>,
    init: Option<Initializer>,
    records: RefCell<Vec<(ParamId, FileKey)>>,
    names: RefCell<Vec<(ParamId, FileKey)>>,
}

impl<'a> WeightLoader<'a> {
    pub fn new(set: &'a WeightSet, device: &Device) -> Self {
        Self {
            set,
            map: KeyMap::new(),
            prefix: String::new(),
            device: device.clone(),
            used: RefCell::new(BTreeSet::new()),
            ignored: Vec::new(),
            init: None,
            records: RefCell::new(Vec::new()),
            names: RefCell::new(Vec::new()),
        }
    }

    /// A loader that reads nothing: every parameter is drawn fresh by `init` under the key it
    /// would have in a checkpoint (training from scratch). `set` is typically
    /// [`WeightSet::empty`] and only names the origin in messages.
    pub fn initializing(set: &'a WeightSet, init: Initializer, device: &Device) -> Self {
        let mut w = Self::new(set, device);
        w.init = Some(init);
        w
    }

    /// Every parameter built so far with its file key, for [`crate::export::ParamKeys`].
    pub fn records(&self) -> Vec<(ParamId, FileKey)> {
        self.records.borrow().clone()
    }

    /// Every parameter built so far with the name the model asked for (the family's canonical
    /// checkpoint name, e.g. diffusers', whatever layout the file had) — what adapters match
    /// their target modules against.
    pub fn names(&self) -> Vec<(ParamId, String)> {
        self.names
            .borrow()
            .iter()
            .map(|(id, k)| (*id, k.key.clone()))
            .collect()
    }

    /// [`Self::names`] with each parameter's storage orientation (a linear weight is stored
    /// `[out, in]`): export keys in the canonical layout, whatever the file's layout was.
    pub fn canonical_keys(&self) -> Vec<(ParamId, FileKey)> {
        self.names.borrow().clone()
    }

    /// Names a parameter the model built itself from [`Self::host`] data (e.g. a 1×1
    /// convolution kept as a linear map), so adapters can match it; not an export record (the
    /// file layout differs).
    pub fn name_param(&self, id: ParamId, name: &str) {
        self.names.borrow_mut().push((
            id,
            FileKey {
                key: name.to_string(),
                transposed: true,
            },
        ));
    }

    fn record(&self, id: ParamId, name: &str, transposed: bool) {
        self.names.borrow_mut().push((
            id,
            FileKey {
                key: name.to_string(),
                transposed,
            },
        ));
        let src = self.source(name);
        if src.rows.is_none() && !src.swap_halves {
            self.records.borrow_mut().push((
                id,
                FileKey {
                    key: src.key,
                    transposed: transposed != src.transpose,
                },
            ));
        }
    }

    /// File keys (full names, prefix included) for which `pred` is true are known non-weight
    /// tensors (noise-schedule tables, `position_ids` buffers, EMA copies): never reported unused.
    pub fn with_ignored(mut self, pred: fn(&str) -> bool) -> Self {
        self.ignored.push(pred);
        self
    }

    /// Parameter names are looked up through this map first.
    pub fn with_key_map(mut self, map: KeyMap) -> Self {
        self.map = map;
        self
    }

    /// A prefix every file key carries (e.g. `text_model.`, `model.diffusion_model.`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn set(&self) -> &WeightSet {
        self.set
    }

    fn source(&self, name: &str) -> KeySource {
        match self.map.get(name) {
            Some(s) => KeySource {
                key: format!("{}{}", self.prefix, s.key),
                ..s.clone()
            },
            None => KeySource::whole(format!("{}{name}", self.prefix)),
        }
    }

    /// True when the parameter `name` exists in the file (through the map).
    pub fn has(&self, name: &str) -> bool {
        self.init.is_some() || self.set.contains(&self.source(name).key)
    }

    /// Reads parameter `name` on the host, checking its shape.
    pub fn host(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let src = self.source(name);
        if let Some(init) = &self.init {
            return Ok(init.tensor(&src.key, expected));
        }
        if !self.set.contains(&src.key) {
            return Err(Error::MissingKey {
                path: self.set.origin.clone(),
                key: src.key.clone(),
                hint: (src.key != name).then(|| format!("for parameter `{name}`")),
            });
        }
        let mut t = self.set.read_f32(&src.key)?;
        if let Some((start, len)) = src.rows {
            if t.shape.is_empty() || start + len > t.shape[0] {
                return Err(Error::ShapeMismatch {
                    path: self.set.origin.clone(),
                    key: src.key.clone(),
                    expected: expected.to_vec(),
                    found: t.shape.clone(),
                });
            }
            t = t.rows(start, len);
        }
        if src.swap_halves {
            t = t.swap_halves();
        }
        if src.transpose {
            if t.shape.len() != 2 {
                return Err(Error::ShapeMismatch {
                    path: self.set.origin.clone(),
                    key: src.key.clone(),
                    expected: expected.iter().rev().copied().collect(),
                    found: t.shape.clone(),
                });
            }
            t = t.transpose2();
        }
        if t.shape != expected {
            return Err(Error::ShapeMismatch {
                path: self.set.origin.clone(),
                key: src.key.clone(),
                expected: expected.to_vec(),
                found: t.shape.clone(),
            });
        }
        self.used.borrow_mut().insert(src.key);
        Ok(t)
    }

    /// Reads a tensor parameter onto the device.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        Ok(self.host(name, &shape)?.to_device(&self.device))
    }

    pub fn param<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Param<Tensor<D>>> {
        let p = Param::from_tensor(self.tensor(name, shape)?);
        self.record(p.id, name, false);
        Ok(p)
    }

    /// A PyTorch `nn.Linear` at `prefix` (`.weight` `[out, in]`, optional `.bias`).
    pub fn linear(&self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
        let w = self
            .host(&format!("{prefix}.weight"), &[d_out, d_in])?
            .transpose2();
        let bias = if bias {
            Some(self.param(&format!("{prefix}.bias"), [d_out])?)
        } else {
            None
        };
        let weight = Param::from_tensor(w.to_device(&self.device));
        self.record(weight.id, &format!("{prefix}.weight"), true);
        Ok(Linear { weight, bias })
    }

    /// File keys (under the prefix) that no parameter consumed.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.set
            .keys()
            .into_iter()
            .filter(|k| {
                k.starts_with(&self.prefix)
                    && !used.contains(*k)
                    && !self.ignored.iter().any(|f| f(k))
            })
            .map(str::to_string)
            .collect()
    }

    /// Fails when any file key under the prefix was not consumed.
    pub fn finish(self) -> Result<()> {
        let unused = self.unused();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(Error::UnusedKeys {
                path: self.set.origin.clone(),
                count: unused.len(),
                examples: unused.into_iter().take(5).collect(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Map;

    fn write_st(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(k, s, d)| {
                (
                    k.to_string(),
                    s.clone(),
                    d.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Map<String, safetensors::tensor::TensorView> = bytes
            .iter()
            .map(|(k, s, b)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    fn err_of(path: &Path) -> String {
        WeightSet::open(path).unwrap_err().to_string()
    }

    #[test]
    fn component_folders_prefer_the_canonical_file_then_the_fp16_variant() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_st(
            &d.join("diffusion_pytorch_model.non_ema.safetensors"),
            &[("x", vec![1], vec![1.0])],
        );
        write_st(
            &d.join("diffusion_pytorch_model.fp16.safetensors"),
            &[("y", vec![1], vec![2.0])],
        );
        let set = WeightSet::open(d).unwrap();
        assert_eq!(set.keys(), vec!["y"]);
        write_st(
            &d.join("diffusion_pytorch_model.safetensors"),
            &[("z", vec![1], vec![3.0])],
        );
        assert_eq!(WeightSet::open(d).unwrap().keys(), vec!["z"]);
    }

    #[test]
    fn truncated_and_lying_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.safetensors");
        write_st(&good, &[("a", vec![2, 3], vec![1.0; 6])]);
        let bytes = std::fs::read(&good).unwrap();

        let truncated = dir.path().join("truncated.safetensors");
        std::fs::write(&truncated, &bytes[..bytes.len() - 5]).unwrap();
        let e = err_of(&truncated);
        assert!(
            e.contains("truncated.safetensors") && e.contains("truncated"),
            "{e}"
        );

        let tiny = dir.path().join("tiny.safetensors");
        std::fs::write(&tiny, &bytes[..4]).unwrap();
        assert!(err_of(&tiny).contains("too short"), "{}", err_of(&tiny));

        // A header that claims more data than the file holds.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
        let lying_header = header.replace("[0,24]", "[0,2400]");
        assert_ne!(header, lying_header);
        let mut lying = (lying_header.len() as u64).to_le_bytes().to_vec();
        lying.extend(lying_header.as_bytes());
        lying.extend(&bytes[8 + n..]);
        let lying_path = dir.path().join("lying.safetensors");
        std::fs::write(&lying_path, lying).unwrap();
        let e = err_of(&lying_path);
        assert!(
            e.contains("lying.safetensors") && e.contains("not a valid safetensors"),
            "{e}"
        );

        let garbage = dir.path().join("garbage.safetensors");
        std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json at all").unwrap();
        assert!(err_of(&garbage).contains("garbage.safetensors"));
    }

    #[test]
    fn pickle_checkpoints_are_refused_by_name_and_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("model.ckpt");
        std::fs::write(&ckpt, b"PK\x03\x04 torch zip").unwrap();
        let e = err_of(&ckpt);
        assert!(
            e.contains("model.ckpt") && e.contains("pickle") && e.contains("safetensors"),
            "{e}"
        );
        // A pickle renamed to .safetensors is still refused, not parsed.
        let disguised = dir.path().join("disguised.safetensors");
        std::fs::write(&disguised, b"\x80\x02}q\x00.").unwrap();
        assert!(
            err_of(&disguised).contains("pickle"),
            "{}",
            err_of(&disguised)
        );
        // A folder with only a pickle explains itself.
        let only = dir.path().join("only");
        std::fs::create_dir(&only).unwrap();
        std::fs::write(only.join("pytorch_model.bin"), b"\x80\x02").unwrap();
        assert!(err_of(&only).contains("pickle"));
    }

    #[test]
    fn loader_reports_missing_unused_and_misshapen_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        write_st(
            &p,
            &[
                ("lin.weight", vec![3, 2], vec![0.5; 6]),
                ("extra", vec![1], vec![0.0]),
            ],
        );
        let set = WeightSet::open(&p).unwrap();
        let dev = burn::tensor::Device::flex();
        let w = WeightLoader::new(&set, &dev);
        let e = w.host("lin.weight", &[2, 3]).unwrap_err().to_string();
        assert!(
            e.contains("lin.weight") && e.contains("[3, 2]") && e.contains("[2, 3]"),
            "{e}"
        );
        let e = w.host("lin.bias", &[3]).unwrap_err().to_string();
        assert!(e.contains("missing weight `lin.bias`"), "{e}");
        let lin = w.linear("lin", 2, 3, false).unwrap();
        assert_eq!(lin.weight.dims(), [2, 3]);
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("1 unused") && e.contains("extra"), "{e}");
    }

    #[test]
    fn half_precision_decodes_and_sharded_index_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let vals = [1.5f32, -2.25, 0.1];
        let f16: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        fn mk<'a>(
            name: &str,
            dt: Dtype,
            b: &'a [u8],
        ) -> Map<String, safetensors::tensor::TensorView<'a>> {
            let mut m = Map::new();
            m.insert(
                name.to_string(),
                safetensors::tensor::TensorView::new(dt, vec![3], b).unwrap(),
            );
            m
        }
        safetensors::serialize_to_file(
            mk("h", Dtype::F16, &f16),
            None,
            &dir.path().join("s1.safetensors"),
        )
        .unwrap();
        safetensors::serialize_to_file(
            mk("b", Dtype::BF16, &bf16),
            None,
            &dir.path().join("s2.safetensors"),
        )
        .unwrap();
        let idx = dir.path().join("model.safetensors.index.json");
        std::fs::write(
            &idx,
            r#"{"metadata":{},"weight_map":{"h":"s1.safetensors","b":"s2.safetensors"}}"#,
        )
        .unwrap();
        let set = WeightSet::open(dir.path()).unwrap();
        assert_eq!(
            set.read_f32("h").unwrap().data,
            vec![1.5, -2.25, half::f16::from_f32(0.1).to_f32()]
        );
        assert_eq!(
            set.read_f32("b").unwrap().data,
            vec![1.5, -2.25, half::bf16::from_f32(0.1).to_f32()]
        );
        // An index naming a key its shard lacks is an error naming both.
        std::fs::write(
            &idx,
            r#"{"weight_map":{"h":"s1.safetensors","zz":"s2.safetensors"}}"#,
        )
        .unwrap();
        let e = WeightSet::open(&idx).unwrap_err().to_string();
        assert!(e.contains("zz") && e.contains("s2.safetensors"), "{e}");
    }
}
