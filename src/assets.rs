//! The embedded default model and demo dataset shipped in assets/.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// The folder of the shipped assets (next to Cargo.toml).
pub fn assets_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets")
}

/// Hyperparameters that suit the embedded model (used when `--model default` and the option
/// is not given).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DemoRecipe {
    /// SFT learning rate (AdamW).
    pub sft_lr: f64,
    /// Preference-loss learning rate (AdamW).
    pub lr: f64,
    pub sft_epochs: f64,
    /// Epochs of the preference phase.
    pub epochs: f64,
}

pub const DEMO: DemoRecipe = DemoRecipe {
    sft_lr: 5e-4,
    lr: 1e-4,
    sft_epochs: 2.0,
    epochs: 4.0,
};

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

/// The fraction of the demo dataset held out as test records (its last 64), from
/// assets/demo_meta.json.
pub fn demo_test_fraction() -> Result<f64> {
    let p = assets_dir().join("demo_meta.json");
    let text = std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    v.get("test_fraction")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| anyhow::anyhow!("{}: missing number \"test_fraction\"", p.display()))
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
