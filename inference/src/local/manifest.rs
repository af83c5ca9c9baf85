//! Model manifests: every file of a local model is pinned by SHA-256, and a model whose files do
//! not match is refused. Updates are an operator's decision (re-run the setup step, which writes a
//! new manifest), never automatic.

use std::{
    collections::BTreeMap,
    fs::File,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The command that installs the local models and the ONNX Runtime library.
pub const SETUP_COMMAND: &str = "scripts/setup-models";

/// `manifest.json` in a model's directory.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    /// Model name (also the directory name).
    pub name: String,
    /// `chat` or `embedding`.
    pub kind: String,
    /// Where the files came from (package and version).
    #[serde(default)]
    pub source: String,
    /// File name (relative to the model directory) → SHA-256, lowercase hex.
    pub files: BTreeMap<String, String>,
    /// Model-specific settings (dimensions, layers, chat template, ...).
    #[serde(default)]
    pub config: serde_json::Value,
}

/// A model directory whose files match its manifest.
#[derive(Clone, Debug)]
pub struct VerifiedModel {
    /// Directory.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
}

impl VerifiedModel {
    /// Path of one of the model's files.
    pub fn file(&self, name: &str) -> Result<PathBuf> {
        if !self.manifest.files.contains_key(name) {
            return Err(Error::ModelFiles(format!(
                "model {}: manifest does not list {name}",
                self.manifest.name
            )));
        }
        Ok(self.dir.join(name))
    }

    /// `file=sha256:...` for every file, for `model.loaded`.
    pub fn hashes(&self) -> Vec<String> {
        self.manifest
            .files
            .iter()
            .map(|(f, h)| format!("{f}=sha256:{h}"))
            .collect()
    }
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Reads `dir/manifest.json` without checking the files.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::ModelFiles(format!(
            "{}: {e}; run `{SETUP_COMMAND}` to install the local models",
            path.display()
        ))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::ModelFiles(format!("{}: not a model manifest: {e}", path.display())))
}

/// One file's check.
#[derive(Clone, Debug)]
pub struct FileCheck {
    /// File name.
    pub file: String,
    /// Pinned hash.
    pub expected: String,
    /// Hash found on disk (`None` when the file is missing or unreadable).
    pub actual: Option<String>,
}

impl FileCheck {
    /// Whether the file matches its pin.
    pub fn ok(&self) -> bool {
        self.actual.as_deref() == Some(self.expected.as_str())
    }
}

/// Hashes every file the manifest lists.
pub fn check_files(dir: &Path, manifest: &Manifest) -> Vec<FileCheck> {
    manifest
        .files
        .iter()
        .map(|(file, expected)| FileCheck {
            file: file.clone(),
            expected: expected.to_ascii_lowercase(),
            actual: sha256_file(&dir.join(file)).ok(),
        })
        .collect()
}

/// Loads the manifest and checks every file against it; the first mismatch is an error naming
/// the file.
pub fn verify(dir: &Path) -> Result<VerifiedModel> {
    let manifest = read_manifest(dir)?;
    if manifest.files.is_empty() {
        return Err(Error::ModelFiles(format!(
            "{}: manifest lists no files",
            dir.display()
        )));
    }
    for c in check_files(dir, &manifest) {
        if c.ok() {
            continue;
        }
        let path = dir.join(&c.file);
        return Err(Error::ModelFiles(match c.actual {
            None => format!(
                "model {}: {} is missing; run `{SETUP_COMMAND}`",
                manifest.name,
                path.display()
            ),
            Some(actual) => format!(
                "model {}: {} does not match its manifest (sha256 {actual}, pinned {}); \
                 refusing to load a modified model file",
                manifest.name,
                path.display(),
                c.expected
            ),
        }));
    }
    Ok(VerifiedModel {
        dir: dir.to_owned(),
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"weights").unwrap();
        let h = sha256_file(&dir.path().join("model.onnx")).unwrap();
        std::fs::write(
            dir.path().join("manifest.json"),
            format!(r#"{{"name":"m","kind":"chat","files":{{"model.onnx":"{h}"}}}}"#),
        )
        .unwrap();
        let ok = verify(dir.path()).unwrap();
        assert_eq!(ok.hashes(), [format!("model.onnx=sha256:{h}")]);
        std::fs::write(dir.path().join("model.onnx"), b"weightz").unwrap();
        let e = verify(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("model.onnx") && e.contains("does not match"),
            "{e}"
        );
        std::fs::remove_file(dir.path().join("model.onnx")).unwrap();
        let e = verify(dir.path()).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        let e = verify(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains(SETUP_COMMAND), "{e}");
    }
}
