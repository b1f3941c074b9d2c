//! Preference datasets and probe sets: everything between a dataset file on disk and the
//! [`ProbeSet`] whose response families the trainer scores.
//!
//! - [`families`]: the authors' response families ([`Family`]: chosen, rejected, paraphrases,
//!   unrelated and non-human responses, and the computed greedy response y*), grouped for plots.
//! - [`record`]: [`PreferenceRecord`], one (prompt, chosen, rejected) triple plus any extra
//!   families a probe file gives, with its position in the file for error messages.
//! - [`formats`]: reading JSON Lines / JSON array files (optionally gzipped) and parquet files,
//!   detecting and parsing
//!   the supported formats (the authors' probe schema, TRL standard, implicit-prompt and
//!   conversational, Anthropic HH-RLHF; one private module each) and rendering conversations with
//!   a Hugging Face chat template or a documented plain template.
//! - [`chat_template`]: [`ChatTemplate`], a Hugging Face `chat_template` compiled with minijinja
//!   (read from a model's `tokenizer_config.json`), and the [`Message`]s it renders.
//! - [`probes`]: the train/test split and [`build_probe_set`], which picks the probe prompts and
//!   derives the families a dataset does not give (irr_train, irr_test, random_permute,
//!   random_nonhum); y* ([`Family::Argmax`]) is always listed last and computed by the model.
//!
//! Every error is a [`DataError`] whose message is one line naming the file, the 1-based line and
//! the field where they apply, e.g.
//! `data/x.jsonl:3: field "chosen": expected a string or a list of messages, got number`.

pub mod chat_template;
pub mod families;
pub mod formats;
pub mod probes;
pub mod record;
#[cfg(test)]
mod test_util;

pub use chat_template::{ChatTemplate, Message};
pub use families::{Family, FamilyGroup};
pub use formats::*;
pub use probes::*;
pub use record::PreferenceRecord;

use sha2::{Digest, Sha256};

/// Errors from reading datasets, rendering chat templates and building probe sets.
///
/// Every message is a single line; file, line and field are named where they apply.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    /// (The reason is in the message, not a `source`: an error chain printed with `{:#}` would
    /// repeat it.)
    #[error("{path}: {reason}")]
    Io {
        path: String,
        reason: std::io::Error,
    },
    /// A problem with the file as a whole (not gzip, no records, ...).
    #[error("{file}: {msg}")]
    File { file: String, msg: String },
    /// A problem with one line (or JSON array element) of the file.
    #[error("{file}:{line}: {msg}")]
    Line {
        file: String,
        line: usize,
        msg: String,
    },
    /// A missing or mistyped field of one record.
    #[error("{file}:{line}: field \"{field}\": {msg}")]
    Field {
        file: String,
        line: usize,
        field: String,
        msg: String,
    },
    /// A chat template that does not compile or fails to render.
    #[error("chat template: {0}")]
    Template(String),
    /// An invalid argument (probe count, test fraction, family name, ...).
    #[error("{0}")]
    Invalid(String),
}

/// SHA-256 of `bytes`, as 64 lowercase hex digits (the dataset fingerprint in run headers).
pub fn fingerprint_bytes(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest.iter() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Collapses a message onto one line (library messages sometimes carry newlines).
pub(crate) fn one_line(msg: &str) -> String {
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256_hex() {
        assert_eq!(
            fingerprint_bytes(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            fingerprint_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn error_messages_are_one_line() {
        let e = DataError::Field {
            file: "data/x.jsonl".into(),
            line: 3,
            field: "chosen".into(),
            msg: "expected a string or a list of messages, got number".into(),
        };
        assert_eq!(
            e.to_string(),
            "data/x.jsonl:3: field \"chosen\": expected a string or a list of messages, got number"
        );
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
