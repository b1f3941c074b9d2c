//! The embedded default: the model, its tokenizer, the demo dataset and the sample runs are
//! compiled into the binary (`include_bytes!` of assets/ and sample_runs/ at build time), so a
//! copied or installed binary runs the demo from any folder. The loaders read folders and files,
//! so the first use writes the embedded bytes once into a folder named after their content hash
//! (under the user's cache folder, else the temporary folder); later uses find it there.
//! `ldviz pretrain` and tools/record_sample_runs.sh write assets/ and sample_runs/ for the next
//! build.

use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};

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

/// One embedded file: its path relative to the embedded folder, and its bytes.
pub struct Embedded {
    pub name: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! embed {
    ($name:literal, $src:literal) => {
        Embedded {
            name: $name,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $src)),
        }
    };
}

/// The default model folder (made by `ldviz pretrain`).
pub const MODEL_FILES: &[Embedded] = &[
    embed!("model/config.json", "assets/model/config.json"),
    embed!("model/model.safetensors", "assets/model/model.safetensors"),
    embed!("model/tokenizer.json", "assets/model/tokenizer.json"),
    embed!("model/pretrain.json", "assets/model/pretrain.json"),
];

/// The demo dataset (made by tools/make_demo_data.py).
pub const DEMO_DATA: Embedded = embed!("demo.jsonl", "assets/demo.jsonl");

/// Facts about the demo dataset (its held-out share).
pub const DEMO_META: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/demo_meta.json"
));

/// The recorded sample runs, gzipped (made by tools/record_sample_runs.sh).
pub const SAMPLE_RUNS: &[Embedded] = &[
    embed!("sample_runs/sft.jsonl.gz", "sample_runs/sft.jsonl.gz"),
    embed!(
        "sample_runs/dpo_offpolicy.jsonl.gz",
        "sample_runs/dpo_offpolicy.jsonl.gz"
    ),
    embed!(
        "sample_runs/extended_then_dpo.jsonl.gz",
        "sample_runs/extended_then_dpo.jsonl.gz"
    ),
    embed!(
        "sample_runs/dpo_onpolicy.jsonl.gz",
        "sample_runs/dpo_onpolicy.jsonl.gz"
    ),
];

fn all_files() -> impl Iterator<Item = &'static Embedded> {
    MODEL_FILES
        .iter()
        .chain(std::iter::once(&DEMO_DATA))
        .chain(SAMPLE_RUNS.iter())
}

/// A hash of every embedded file's name and bytes (names the folder they are written to).
pub fn content_hash() -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for f in all_files() {
        h.write(f.name.as_bytes());
        h.write_u64(f.bytes.len() as u64);
        h.write(f.bytes);
    }
    h.finish()
}

/// Where the embedded files are written: `$LDVIZ_CACHE` if set, else the user's cache folder
/// (`$XDG_CACHE_HOME`, `~/.cache`, `%LOCALAPPDATA%`), else the temporary folder.
fn cache_roots() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("LDVIZ_CACHE") {
        v.push(PathBuf::from(p));
        return v;
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        v.push(PathBuf::from(p).join("ldviz"));
    } else if let Some(p) = std::env::var_os("HOME") {
        v.push(PathBuf::from(p).join(".cache").join("ldviz"));
    }
    if let Some(p) = std::env::var_os("LOCALAPPDATA") {
        v.push(PathBuf::from(p).join("ldviz"));
    }
    v.push(std::env::temp_dir().join("ldviz"));
    v
}

/// Writes `bytes` to `path` unless a file of the same content is there; atomic (a temporary
/// file renamed into place), so concurrent processes never see a half-written file.
fn write_once(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Ok(have) = std::fs::read(path)
        && have == bytes
    {
        return Ok(());
    }
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{}: no parent folder", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: cannot write", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow!("{}: cannot write: {}", path.display(), e.error))?;
    Ok(())
}

fn unpack_into(root: &Path) -> Result<PathBuf> {
    let dir = root.join(format!(
        "embedded-{}-{:016x}",
        env!("CARGO_PKG_VERSION"),
        content_hash()
    ));
    for f in all_files() {
        write_once(&dir.join(f.name), f.bytes)?;
    }
    Ok(dir)
}

/// The folder holding the embedded files (written on first use in this process).
pub fn embedded_dir() -> Result<PathBuf> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut errors = Vec::new();
        for root in cache_roots() {
            match unpack_into(&root) {
                Ok(d) => return Ok(d),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        Err(format!(
            "cannot write the embedded default model and data to a folder ({}); set LDVIZ_CACHE \
             to a writable folder, or pass --model DIR and --data FILE",
            errors.join("; ")
        ))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The embedded default model folder.
pub fn default_model_dir() -> Result<PathBuf> {
    Ok(embedded_dir()?.join("model"))
}

/// The fraction of the demo dataset held out as test records (its last 64), from
/// assets/demo_meta.json.
pub fn demo_test_fraction() -> Result<f64> {
    let v: serde_json::Value =
        serde_json::from_str(DEMO_META).context("assets/demo_meta.json (embedded)")?;
    v.get("test_fraction")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| {
            anyhow!("assets/demo_meta.json (embedded): missing number \"test_fraction\"")
        })
}

/// The embedded demo dataset.
pub fn default_data_file() -> Result<PathBuf> {
    Ok(embedded_dir()?.join(DEMO_DATA.name))
}

/// The embedded sample runs (gzipped run files), in their listed order.
pub fn sample_runs() -> Result<Vec<PathBuf>> {
    let d = embedded_dir()?;
    Ok(SAMPLE_RUNS.iter().map(|f| d.join(f.name)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_files_match_the_source_tree() {
        // The build embeds what assets/ and sample_runs/ hold.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for f in all_files() {
            let src = if let Some(rest) = f.name.strip_prefix("model/") {
                root.join("assets/model").join(rest)
            } else if f.name.starts_with("sample_runs/") {
                root.join(f.name)
            } else {
                root.join("assets").join(f.name)
            };
            assert_eq!(std::fs::read(&src).unwrap(), f.bytes, "{}", f.name);
        }
    }

    #[test]
    fn unpacking_rewrites_a_damaged_file() {
        let tmp = tempfile::tempdir().unwrap();
        let d = unpack_into(tmp.path()).unwrap();
        let cfg = d.join("model/config.json");
        assert_eq!(std::fs::read(&cfg).unwrap(), MODEL_FILES[0].bytes);
        std::fs::write(&cfg, b"{").unwrap();
        let d2 = unpack_into(tmp.path()).unwrap();
        assert_eq!(d, d2);
        assert_eq!(std::fs::read(&cfg).unwrap(), MODEL_FILES[0].bytes);
    }
}
