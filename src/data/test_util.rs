//! Helpers shared by the dataset and chat-template unit tests.

use std::path::PathBuf;

use super::{DataError, Dataset, load_dataset};

/// ChatML, the template of Qwen and many others, without a default system prompt.
pub(super) const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Writes `content` to `name` in `dir` and returns its path.
pub(super) fn write(dir: &tempfile::TempDir, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// Loads `content` as a dataset file called `name` (format detected, plain template).
pub(super) fn load_str(name: &str, content: &str) -> Result<Dataset, DataError> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, name, content.as_bytes());
    load_dataset(&path, None, None)
}

/// The error message of [`load_str`].
pub(super) fn err_str(name: &str, content: &str) -> String {
    load_str(name, content).unwrap_err().to_string()
}
