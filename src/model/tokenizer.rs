//! The model's `tokenizer.json` (tokenizers crate, offline) and the EOS id ldviz appends.

use std::path::Path;

use anyhow::{Result, anyhow};
use serde_json::Value;

/// A Hugging Face tokenizer plus the id of the end-of-sequence token.
#[derive(Clone)]
pub struct Tok {
    inner: tokenizers::Tokenizer,
    pub eos_id: u32,
}

impl Tok {
    /// Loads `tokenizer.json` from a model folder. The EOS id comes from config.json's
    /// `eos_token_id` (an integer or a list: the first), else tokenizer_config.json's
    /// `eos_token`, else a token named `<|endoftext|>`, `</s>` or `<eos>`.
    pub fn load(dir: &Path, config: &Value) -> Result<Tok> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(anyhow!(
                "{}: no tokenizer.json (a model folder needs config.json, *.safetensors and tokenizer.json)",
                dir.display()
            ));
        }
        let inner = read_tokenizer(&path)?;
        let id = |x: u64| {
            u32::try_from(x).map_err(|_| {
                anyhow!(
                    "{}: field \"eos_token_id\": {x} is not a token id (at most {})",
                    dir.join("config.json").display(),
                    u32::MAX
                )
            })
        };
        let from_config = match config.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(id).transpose()?,
            Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(id).transpose()?,
            _ => None,
        };
        let from_tok_config = || -> Option<u32> {
            let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
            let v: Value = serde_json::from_str(&text).ok()?;
            let eos = v.get("eos_token")?;
            let s = eos.as_str().map(str::to_string).or_else(|| {
                eos.get("content")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })?;
            inner.token_to_id(&s)
        };
        let eos_id = from_config
            .or_else(from_tok_config)
            .or_else(|| {
                ["<|endoftext|>", "</s>", "<eos>", "<|im_end|>"]
                    .iter()
                    .find_map(|t| inner.token_to_id(t))
            })
            .ok_or_else(|| {
                anyhow!(
                    "{}: cannot tell the EOS token: config.json has no eos_token_id and the tokenizer has no <|endoftext|>, </s> or <eos>",
                    dir.display()
                )
            })?;
        Ok(Tok { inner, eos_id })
    }

    pub fn from_tokenizer(inner: tokenizers::Tokenizer, eos_id: u32) -> Tok {
        Tok { inner, eos_id }
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Number of ids the tokenizer can produce (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, without special tokens (ldviz tokenizes prompt and response
    /// separately and appends EOS itself).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizer failed on {:?}: {e}", truncate(text, 40)))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Readable text of one token (decoded, so byte-level "Ġ" shows as a space).
    pub fn token_text(&self, id: u32) -> String {
        match self.inner.decode(&[id], false) {
            Ok(s) if !s.is_empty() => s,
            _ => self
                .inner
                .id_to_token(id)
                .unwrap_or_else(|| format!("<{id}>")),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow!("tokenizer cannot decode: {e}"))
    }
}

/// Reads a tokenizer.json: checked as JSON first (errors with line and column), then built by
/// the tokenizers library, whose panics on some malformed files (`expect`s in its
/// deserializers) become errors naming the file.
fn read_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("{}: cannot read tokenizer: {e}", path.display()))?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))?;
    let built = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>());
    match built {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(anyhow!(
            "{}: cannot load tokenizer: {}",
            path.display(),
            crate::data::one_line(&e.to_string())
        )),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(anyhow!(
                "{}: cannot load tokenizer: the tokenizers library failed on it ({})",
                path.display(),
                crate::data::one_line(&msg)
            ))
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
