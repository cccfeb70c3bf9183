//! Content fingerprints of models and adapters, independent of where the files are mounted:
//! boxes that see the same model under different paths must give its images the same names and
//! shards, and a file replaced under the same path must not pass for the old one.
//!
//! A file up to [`FULL_HASH_LIMIT`] is hashed whole (configs, tokenizers, adapters); a larger
//! one by its size, its first MiB (a safetensors header with every name, dtype, shape and
//! offset) and [`SAMPLES`] blocks spread over the rest — a fine-tune of the same architecture
//! differs in every block, and hashing a 24 GB FLUX checkpoint whole would cost each worker a
//! minute before its first image. A folder is the sorted list of its files (relative names,
//! hidden entries skipped, three levels deep) with their fingerprints.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use dreamforge_core::Error;

/// Files up to this size are hashed whole.
pub const FULL_HASH_LIMIT: u64 = 16 << 20;
/// Blocks sampled from a larger file.
pub const SAMPLES: u64 = 32;
const BLOCK: u64 = 64 << 10;
const HEAD: u64 = 1 << 20;

/// The fingerprint (SHA-256, hex) of a file or folder.
pub fn fingerprint(path: &Path) -> Result<String, Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    if meta.is_dir() {
        h.update(b"dir\0");
        let mut files = Vec::new();
        walk(path, Path::new(""), 0, &mut files)?;
        files.sort();
        for rel in files {
            h.update(rel.as_bytes());
            h.update(b"\0");
            h.update(file_digest(&path.join(&rel))?);
        }
    } else {
        h.update(b"file\0");
        h.update(file_digest(path)?);
    }
    Ok(hex(&h.finalize()))
}

fn walk(root: &Path, rel: &Path, depth: usize, out: &mut Vec<String>) -> Result<(), Error> {
    let dir = root.join(rel);
    let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    for e in rd {
        let e = e.map_err(|e| Error::io(&dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let r = rel.join(&name);
        let p = root.join(&r);
        if p.is_dir() {
            if depth < 3 {
                walk(root, &r, depth + 1, out)?;
            }
        } else {
            out.push(r.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// SHA-256 of one file: whole, or size + head + sampled blocks.
fn file_digest(path: &Path) -> Result<[u8; 32], Error> {
    let io = |e| Error::io(path, e);
    let mut f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    if len <= FULL_HASH_LIMIT {
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf).map_err(io)?;
        h.update(&buf);
    } else {
        let mut buf = vec![0u8; HEAD as usize];
        f.read_exact(&mut buf).map_err(io)?;
        h.update(&buf);
        buf.truncate(BLOCK as usize);
        let span = len - HEAD - BLOCK;
        for i in 0..SAMPLES {
            let off = HEAD + span * i / (SAMPLES - 1).max(1);
            f.seek(SeekFrom::Start(off)).map_err(io)?;
            f.read_exact(&mut buf).map_err(io)?;
            h.update(&buf);
        }
    }
    Ok(h.finalize().into())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_independent_and_content_sensitive() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir_all(d.join("m/vae")).unwrap();
            std::fs::write(d.join("m/model_index.json"), b"{}").unwrap();
            std::fs::write(d.join("m/vae/w.safetensors"), vec![7u8; 1000]).unwrap();
            std::fs::write(d.join("m/.cache"), b"ignored").unwrap();
        }
        let fa = fingerprint(&a.path().join("m")).unwrap();
        assert_eq!(fa, fingerprint(&b.path().join("m")).unwrap());
        std::fs::write(b.path().join("m/vae/w.safetensors"), vec![8u8; 1000]).unwrap();
        assert_ne!(fa, fingerprint(&b.path().join("m")).unwrap());
        assert!(fingerprint(&a.path().join("missing")).is_err());
    }

    #[test]
    fn large_files_sampled_but_sensitive() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.safetensors");
        let mut data = vec![1u8; (FULL_HASH_LIMIT + 5 * BLOCK) as usize];
        std::fs::write(&p, &data).unwrap();
        let f0 = fingerprint(&p).unwrap();
        // A change inside a sampled block (the last block) is seen.
        let n = data.len();
        data[n - 10] = 9;
        std::fs::write(&p, &data).unwrap();
        assert_ne!(f0, fingerprint(&p).unwrap());
        // A change of length is seen.
        data.push(0);
        std::fs::write(&p, &data).unwrap();
        assert_ne!(f0, fingerprint(&p).unwrap());
    }
}
