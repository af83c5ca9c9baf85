//! `isnad models list | verify`: what the models directory holds and whether every file still
//! matches its manifest. Offline; needs no server.

use std::path::{Path, PathBuf};

use isnad_inference::local::manifest::{self, Manifest, SETUP_COMMAND};
use serde_json::json;

/// Exit code when a file does not match its manifest (as `journal verify` uses for tampering).
pub const EXIT_MISMATCH: i32 = 3;

fn model_dirs(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Manifest)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        anyhow::anyhow!(
            "models directory {}: {e}; run `{SETUP_COMMAND}`",
            dir.display()
        )
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.join("manifest.json").is_file() {
            out.push((path.clone(), manifest::read_manifest(&path)?));
        }
    }
    out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    Ok(out)
}

/// `isnad models list`.
pub fn list(dir: &Path, json_out: bool) -> anyhow::Result<i32> {
    let models = model_dirs(dir)?;
    if json_out {
        let v: Vec<_> = models
            .iter()
            .map(|(p, m)| {
                json!({
                    "name": m.name, "kind": m.kind, "source": m.source,
                    "dir": p.display().to_string(), "files": m.files,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("{:<24} {:<10} {:>10}  source", "model", "kind", "size");
    for (p, m) in &models {
        let size: u64 = m
            .files
            .keys()
            .filter_map(|f| std::fs::metadata(p.join(f)).ok())
            .map(|md| md.len())
            .sum();
        println!(
            "{:<24} {:<10} {:>7.1} MB  {}",
            m.name,
            m.kind,
            size as f64 / 1e6,
            m.source
        );
    }
    Ok(0)
}

/// `isnad models verify [NAME...]`: hashes every file; exit 3 if any differs from its pin.
pub fn verify(dir: &Path, names: &[String], json_out: bool) -> anyhow::Result<i32> {
    let models = model_dirs(dir)?;
    for n in names {
        if !models.iter().any(|(_, m)| &m.name == n) {
            anyhow::bail!("no model {n} in {}", dir.display());
        }
    }
    let mut bad = 0usize;
    let mut report = Vec::new();
    for (p, m) in models
        .iter()
        .filter(|(_, m)| names.is_empty() || names.contains(&m.name))
    {
        for c in manifest::check_files(p, m) {
            let status = match &c.actual {
                _ if c.ok() => "ok",
                None => "missing",
                Some(_) => "MODIFIED",
            };
            if !c.ok() {
                bad += 1;
            }
            if !json_out {
                println!("{status:<8} {}/{}", m.name, c.file);
            }
            report.push(json!({
                "model": m.name, "file": c.file, "status": status,
                "expected": c.expected, "actual": c.actual,
            }));
        }
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"ok": bad == 0, "files": report}))?
        );
    } else if bad == 0 {
        println!("OK: every model file matches its manifest");
    } else {
        println!(
            "FAILED: {bad} file(s) do not match their manifest; isnad will refuse to load them"
        );
    }
    Ok(if bad == 0 { 0 } else { EXIT_MISMATCH })
}
