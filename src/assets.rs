//! The embedded default model and demo dataset shipped in assets/.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// The folder of the shipped assets (next to Cargo.toml).
pub fn assets_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets")
}

/// The embedded default model folder.
pub fn default_model_dir() -> Result<PathBuf> {
    let d = assets_dir().join("model");
    if !d.join("config.json").exists() {
        bail!(
            "the embedded default model is not in this build ({} is missing); pass --model DIR",
            d.display()
        );
    }
    Ok(d)
}

/// The embedded demo dataset.
pub fn default_data_file() -> Result<PathBuf> {
    let f = assets_dir().join("demo.jsonl");
    if !f.exists() {
        bail!(
            "the embedded demo dataset is not in this build ({} is missing); pass --data FILE",
            f.display()
        );
    }
    Ok(f)
}
