//! Hugging Face chat templates, run with minijinja as transformers runs them (see
//! [`crate::data::formats`] for how conversations are rendered).

use std::path::Path;

use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Environment, ErrorKind, context};
use serde_json::{Map, Value};

use super::formats::{json_error, type_name};
use super::{DataError, one_line};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A Hugging Face chat template, compiled once.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    env: Environment<'static>,
}

const TEMPLATE_NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles a template source with the given special tokens.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate, DataError> {
        let source = source.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| DataError::Template(one_line(&e.to_string())))?;
        Ok(ChatTemplate {
            source,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            env,
        })
    }

    /// Reads the chat template of a model from its `tokenizer_config.json` (`path` is that file
    /// or the model folder holding it).
    ///
    /// `chat_template` may be a string or a list of `{"name", "template"}` (the one named
    /// `"default"` is taken, else the first). When the config has no `chat_template`, a
    /// `chat_template.jinja` (or `chat_template.json`) file next to it is used, as newer
    /// transformers versions save it there. `bos_token`/`eos_token` are read as strings or
    /// `{"content": …}` objects (missing = empty). A missing config file or no template at all
    /// gives `Ok(None)`.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<ChatTemplate>, DataError> {
        let file = if path.is_dir() {
            path.join("tokenizer_config.json")
        } else {
            path.to_path_buf()
        };
        let name = file.display().to_string();
        let Some(text) = read_if_present(&file)? else {
            return Ok(None);
        };
        let config: Value = serde_json::from_str(&text).map_err(|e| json_error(&name, &e))?;
        let Value::Object(config) = config else {
            return Err(DataError::File {
                file: name,
                msg: format!("expected a JSON object, got {}", type_name(&config)),
            });
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        let source = match config.get("chat_template") {
            None | Some(Value::Null) => template_beside(dir)?,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => Some(named_template(list, &name)?),
            Some(other) => {
                return Err(DataError::File {
                    file: name,
                    msg: format!(
                        "field \"chat_template\": expected a string or a list of \
                         {{name, template}}, got {}",
                        type_name(other)
                    ),
                });
            }
        };
        let Some(source) = source else {
            return Ok(None);
        };
        let bos = special_token(&config, "bos_token", &name)?;
        let eos = special_token(&config, "eos_token", &name)?;
        ChatTemplate::new(source, bos, eos)
            .map(Some)
            .map_err(|e| DataError::File {
                file: name,
                msg: e.to_string(),
            })
    }

    /// Renders `messages` with the template (globals: `messages`, `bos_token`, `eos_token`,
    /// `add_generation_prompt`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| DataError::Template(one_line(&e.to_string())))?;
        let mut out = Limited {
            buf: Vec::new(),
            limit: MAX_RENDERED_BYTES,
            overflowed: false,
        };
        template
            .render_captured_to(
                context! {
                    messages => messages,
                    bos_token => &self.bos_token,
                    eos_token => &self.eos_token,
                    add_generation_prompt => add_generation_prompt,
                },
                &mut out,
            )
            .map_err(|e| {
                DataError::Template(if out.overflowed {
                    format!(
                        "the rendered text is longer than {} MiB",
                        MAX_RENDERED_BYTES >> 20
                    )
                } else {
                    one_line(&e.to_string())
                })
            })?;
        String::from_utf8(out.buf)
            .map_err(|_| DataError::Template("the rendered text is not UTF-8".to_string()))
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The BOS token passed to the template (empty when the config has none).
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The EOS token passed to the template (empty when the config has none).
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
}

/// The longest text a chat template may render (a prompt and its response; real ones are a few
/// KB): a template looping over a huge repeated string fails instead of filling memory.
const MAX_RENDERED_BYTES: usize = 16 << 20;

/// A writer that refuses to grow past `limit` bytes (and remembers it did).
struct Limited {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl std::io::Write for Limited {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered text too long"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn raise_exception(msg: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// The largest `tojson(indent=…)` a template may ask for (each nesting level repeats it).
const MAX_TOJSON_INDENT: usize = 64;

/// Python `json.dumps`-style `tojson` (separators `", "`/`": "`, optional `indent=`), as
/// transformers' template environment provides it.
fn tojson(value: JinjaValue, kwargs: Kwargs) -> Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    if let Some(n) = indent
        && n > MAX_TOJSON_INDENT
    {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent {n} is larger than {MAX_TOJSON_INDENT}"),
        ));
    }
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(out)
}

fn write_py_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn named_template(list: &[Value], file: &str) -> Result<String, DataError> {
    let mut first = None;
    for (i, entry) in list.iter().enumerate() {
        let name = entry.get("name").and_then(Value::as_str);
        let Some(template) = entry.get("template").and_then(Value::as_str) else {
            return Err(DataError::File {
                file: file.to_string(),
                msg: format!("field \"chat_template[{i}].template\": expected a string"),
            });
        };
        if name == Some("default") {
            return Ok(template.to_string());
        }
        first.get_or_insert(template);
    }
    first.map(str::to_string).ok_or_else(|| DataError::File {
        file: file.to_string(),
        msg: "field \"chat_template\": the list of templates is empty".to_string(),
    })
}

/// The text of `path`, or `None` when there is no such file.
fn read_if_present(path: &Path) -> Result<Option<String>, DataError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DataError::Io {
            path: path.display().to_string(),
            reason: source,
        }),
    }
}

fn template_beside(dir: &Path) -> Result<Option<String>, DataError> {
    if let Some(text) = read_if_present(&dir.join("chat_template.jinja"))? {
        return Ok(Some(text));
    }
    let json = dir.join("chat_template.json");
    let name = json.display().to_string();
    let Some(text) = read_if_present(&json)? else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| json_error(&name, &e))?;
    Ok(v.get("chat_template")
        .and_then(Value::as_str)
        .map(str::to_string))
}

fn special_token(config: &Map<String, Value>, key: &str, file: &str) -> Result<String, DataError> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(DataError::File {
                file: file.to_string(),
                msg: format!("field \"{key}.content\": expected a string"),
            }),
        },
        Some(other) => Err(DataError::File {
            file: file.to_string(),
            msg: format!(
                "field \"{key}\": expected a string or {{\"content\": …}}, got {}",
                type_name(other)
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{CHATML, write};

    #[test]
    fn chat_template_globals_and_helpers() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ m['content'].strip() | upper }}{{ eos_token }}{% endfor %}|{{ {'a': [1, 2], 'b': 'x'} | tojson }}";
        let chat = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        assert_eq!(
            chat.render(&[Message::new("user", "  hi ")], false)
                .unwrap(),
            "<s>HI</s>|{\"a\": [1, 2], \"b\": \"x\"}"
        );
        let err = chat
            .render(&[Message::new("system", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("chat template:") && err.contains("no system"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        let bad = ChatTemplate::new("{% for %}", "", "")
            .unwrap_err()
            .to_string();
        assert!(
            bad.starts_with("chat template:") && !bad.contains('\n'),
            "{bad}"
        );
    }

    #[test]
    fn tojson_indent_matches_python() {
        let chat = ChatTemplate::new("{{ x | tojson(indent=2) }}", "", "").unwrap();
        let t = chat.env.get_template(TEMPLATE_NAME).unwrap();
        let out = t
            .render(context! { x => serde_json::json!({"a": [1, {"b": null}], "c": {}}) })
            .unwrap();
        assert_eq!(
            out,
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": null\n    }\n  ],\n  \"c\": {}\n}"
        );
    }

    #[test]
    fn reads_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            ChatTemplate::from_tokenizer_config(dir.path())
                .unwrap()
                .is_none()
        );
        let config = serde_json::json!({
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "</s>",
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": CHATML}
            ]
        });
        let path = write(&dir, "tokenizer_config.json", config.to_string().as_bytes());
        let chat = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
        assert_eq!(chat.source(), CHATML);
        assert_eq!(chat.bos_token(), "<s>");
        assert_eq!(chat.eos_token(), "</s>");
        assert_eq!(
            chat.render(&[Message::new("user", "Hi")], true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        // the folder works too
        let again = ChatTemplate::from_tokenizer_config(dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(again.source(), CHATML);

        // no chat_template → None, unless chat_template.jinja sits beside it
        std::fs::write(&path, r#"{"eos_token": "</s>"}"#).unwrap();
        assert!(
            ChatTemplate::from_tokenizer_config(&path)
                .unwrap()
                .is_none()
        );
        write(&dir, "chat_template.jinja", b"{{ eos_token }}");
        let chat = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
        assert_eq!(chat.render(&[], false).unwrap(), "</s>");

        std::fs::write(&path, r#"{"chat_template": 5}"#).unwrap();
        let err = ChatTemplate::from_tokenizer_config(&path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("\"chat_template\""),
            "{err}"
        );
        std::fs::write(&path, "{\n\"chat_template\": }").unwrap();
        let err = ChatTemplate::from_tokenizer_config(&path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json:2: invalid JSON"),
            "{err}"
        );
    }
}
