//! TRL's conversational format: prompt, chosen and rejected as message lists, rendered with a
//! chat template or the plain template.

use serde_json::{Map, Value};

use super::{Cx, required, type_name};
use crate::data::{ChatTemplate, DataError, Message};

/// Messages of a conversational field: a list of `{role, content}`, or a plain string taken as
/// one message with `string_role`.
fn parse_messages(
    v: &Value,
    field: &str,
    string_role: &str,
    cx: &Cx,
) -> Result<Vec<Message>, DataError> {
    let items = match v {
        Value::String(s) => return Ok(vec![Message::new(string_role, s.clone())]),
        Value::Array(items) => items,
        other => {
            return Err(cx.field(
                field,
                format!(
                    "expected a string or a list of messages, got {}",
                    type_name(other)
                ),
            ));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(cx.field(
                &format!("{field}[{i}]"),
                format!(
                    "expected a message {{\"role\", \"content\"}}, got {}",
                    type_name(item)
                ),
            ));
        };
        let role = match m.get("role") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(cx.field(
                    &format!("{field}[{i}].role"),
                    format!("expected a string, got {}", type_name(other)),
                ));
            }
            None => return Err(cx.field(&format!("{field}[{i}].role"), "missing")),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) => String::new(),
            Some(Value::Array(parts)) => {
                content_parts(parts, &format!("{field}[{i}].content"), cx)?
            }
            Some(other) => {
                return Err(cx.field(
                    &format!("{field}[{i}].content"),
                    format!(
                        "expected a string or a list of text parts, got {}",
                        type_name(other)
                    ),
                ));
            }
            None => return Err(cx.field(&format!("{field}[{i}].content"), "missing")),
        };
        out.push(Message { role, content });
    }
    Ok(out)
}

/// `[{"type": "text", "text": …}, …]` (or plain strings) joined into one text.
fn content_parts(parts: &[Value], field: &str, cx: &Cx) -> Result<String, DataError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        match part {
            Value::String(s) => text.push_str(s),
            Value::Object(p) => match p.get("text") {
                Some(Value::String(s)) => text.push_str(s),
                _ => {
                    let kind = p.get("type").and_then(Value::as_str).unwrap_or("untyped");
                    return Err(cx.field(
                        &format!("{field}[{j}]"),
                        format!("only text parts are supported, got a \"{kind}\" part"),
                    ));
                }
            },
            other => {
                return Err(cx.field(
                    &format!("{field}[{j}]"),
                    format!("expected a text part, got {}", type_name(other)),
                ));
            }
        }
    }
    Ok(text)
}

pub(super) fn parse_conversational(
    obj: &Map<String, Value>,
    cx: &Cx,
    chat: Option<&ChatTemplate>,
) -> Result<(String, String, String), DataError> {
    let mut chosen = parse_messages(required(obj, "chosen", cx)?, "chosen", "assistant", cx)?;
    let mut rejected = parse_messages(required(obj, "rejected", cx)?, "rejected", "assistant", cx)?;
    let prompt = match obj.get("prompt") {
        Some(v) => {
            let prompt = parse_messages(v, "prompt", "user", cx)?;
            if prompt.is_empty() {
                return Err(cx.field("prompt", "the list of prompt messages is empty"));
            }
            for responses in [&mut chosen, &mut rejected] {
                if responses.len() > prompt.len() && responses.starts_with(&prompt) {
                    responses.drain(..prompt.len());
                }
            }
            prompt
        }
        None => {
            let shared = chosen
                .iter()
                .zip(&rejected)
                .take_while(|(c, r)| c == r)
                .count();
            if shared == 0 {
                return Err(cx.field(
                    "chosen",
                    "without \"prompt\", chosen and rejected must start with the same \
                     prompt messages, but their first messages differ",
                ));
            }
            rejected.drain(..shared);
            chosen.drain(..shared).collect()
        }
    };
    if chosen.is_empty() {
        return Err(cx.field("chosen", "no response messages after the prompt"));
    }
    if rejected.is_empty() {
        return Err(cx.field("rejected", "no response messages after the prompt"));
    }
    let render = |responses: &[Message], prompt_text: &str| -> Result<String, DataError> {
        response_text(&prompt, responses, prompt_text, chat).map_err(|e| cx.err(e.to_string()))
    };
    let prompt_text = format_prompt(&prompt, chat).map_err(|e| cx.err(e.to_string()))?;
    let chosen_text = render(&chosen, &prompt_text)?;
    let rejected_text = render(&rejected, &prompt_text)?;
    Ok((prompt_text, chosen_text, rejected_text))
}

/// Formats prompt messages as the text the model continues: the chat template with
/// `add_generation_prompt = true`, or the plain template (see the module documentation).
pub fn format_prompt(prompt: &[Message], chat: Option<&ChatTemplate>) -> Result<String, DataError> {
    match chat {
        Some(t) => t.render(prompt, true),
        None => {
            let mut text = String::new();
            for m in prompt {
                text.push_str(&capitalize(&m.role));
                text.push_str(": ");
                text.push_str(&m.content);
                text.push_str("\n\n");
            }
            text.push_str("Assistant:");
            Ok(text)
        }
    }
}

/// The response text following `prompt_text` (= `format_prompt(prompt, chat)`).
fn response_text(
    prompt: &[Message],
    responses: &[Message],
    prompt_text: &str,
    chat: Option<&ChatTemplate>,
) -> Result<String, DataError> {
    match chat {
        Some(t) => {
            let all: Vec<Message> = prompt.iter().chain(responses).cloned().collect();
            let full = t.render(&all, false)?;
            Ok(match full.strip_prefix(prompt_text) {
                Some(rest) => rest.to_string(),
                None => responses
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n\n"),
            })
        }
        None => {
            let parts: Vec<String> = responses
                .iter()
                .map(|m| {
                    if m.role == "assistant" {
                        m.content.clone()
                    } else {
                        format!("{}: {}", capitalize(&m.role), m.content)
                    }
                })
                .collect();
            Ok(format!(" {}", parts.join("\n\n")))
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{CHATML, err_str, load_str, write};
    use crate::data::{DataFormat, load_dataset};

    #[test]
    fn parses_conversational_with_plain_template() {
        let ds = load_str(
            "conv.jsonl",
            concat!(
                r#"{"prompt":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"chosen":[{"role":"assistant","content":"Hello"}],"rejected":[{"role":"assistant","content":"Go away"}]}"#,
                "\n",
                r#"{"prompt":"Hi","chosen":[{"role":"user","content":"Hi"},{"role":"assistant","content":[{"type":"text","text":"Hel"},{"type":"text","text":"lo"}]}],"rejected":[{"role":"user","content":"Hi"},{"role":"assistant","content":"No"}]}"#,
            ),
        )
        .unwrap();
        assert_eq!(ds.format, DataFormat::Conversational);
        let r = &ds.records[0];
        assert_eq!(r.prompt, "System: Be brief.\n\nUser: Hi\n\nAssistant:");
        assert_eq!(r.chosen, " Hello");
        assert_eq!(r.rejected, " Go away");
        // string prompt = one user message; repeated prompt at the start of chosen dropped
        let r = &ds.records[1];
        assert_eq!(r.prompt, "User: Hi\n\nAssistant:");
        assert_eq!(r.chosen, " Hello");
        assert_eq!(r.rejected, " No");
    }

    #[test]
    fn parses_conversational_implicit_prompt() {
        let line = r#"{"chosen":[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"},{"role":"user","content":"3+3?"},{"role":"assistant","content":"6"}],"rejected":[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"},{"role":"user","content":"3+3?"},{"role":"assistant","content":"7"}]}"#;
        let ds = load_str("conv.jsonl", line).unwrap();
        assert_eq!(ds.format, DataFormat::Conversational);
        let r = &ds.records[0];
        assert_eq!(
            r.prompt,
            "User: 2+2?\n\nAssistant: 4\n\nUser: 3+3?\n\nAssistant:"
        );
        assert_eq!(r.chosen, " 6");
        assert_eq!(r.rejected, " 7");
    }

    #[test]
    fn conversational_with_chatml_template() {
        let chat = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "conv.json",
            br#"[{"prompt":[{"role":"user","content":"Hi"}],"chosen":[{"role":"assistant","content":"Hello"}],"rejected":[{"role":"assistant","content":"Bye"}]}]"#,
        );
        let ds = load_dataset(&path, None, Some(&chat)).unwrap();
        let r = &ds.records[0];
        assert_eq!(
            r.prompt,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(r.chosen, "Hello<|im_end|>\n");
        assert_eq!(r.rejected, "Bye<|im_end|>\n");
        assert_eq!(r.line, 1);
    }

    #[test]
    fn template_fallback_when_prompt_is_not_a_prefix() {
        // a template that renders the generation prompt differently from the full text
        let chat = ChatTemplate::new(
            "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}>>{% endif %}",
            "",
            "",
        )
        .unwrap();
        let prompt = [Message::new("user", "Hi")];
        let responses = [
            Message::new("assistant", "A"),
            Message::new("assistant", "B"),
        ];
        let prompt_text = format_prompt(&prompt, Some(&chat)).unwrap();
        assert_eq!(prompt_text, "[user] Hi\n>>");
        let text = response_text(&prompt, &responses, &prompt_text, Some(&chat)).unwrap();
        assert_eq!(text, "A\n\nB");
    }

    #[test]
    fn real_hf_templates_render() {
        // Qwen2.5's template, tool branches elided (whitespace control, loop.first, undefined
        // attributes, a default system prompt).
        let qwen = concat!(
            "{%- if tools %}\n    {{- raise_exception('tools') }}\n{%- else %}\n",
            "    {%- if messages[0]['role'] == 'system' %}\n",
            "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n",
            "    {%- else %}\n",
            "        {{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}\n",
            "    {%- endif %}\n{%- endif %}\n",
            "{%- for message in messages %}\n",
            "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n",
            "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n",
            "    {%- endif %}\n{%- endfor %}\n",
            "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n",
        );
        let chat = ChatTemplate::new(qwen, "", "<|im_end|>").unwrap();
        let prompt = [Message::new("user", "Hi")];
        let p = format_prompt(&prompt, Some(&chat)).unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let r =
            response_text(&prompt, &[Message::new("assistant", "Yo")], &p, Some(&chat)).unwrap();
        assert_eq!(r, "Yo<|im_end|>\n");

        // Llama 3's template (bos_token, `| trim`, loop.index0, set)
        let llama = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
        let chat = ChatTemplate::new(llama, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let p = format_prompt(&[Message::new("user", " Hi ")], Some(&chat)).unwrap();
        assert_eq!(
            p,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let r = response_text(
            &[Message::new("user", " Hi ")],
            &[Message::new("assistant", "Hello")],
            &p,
            Some(&chat),
        )
        .unwrap();
        assert_eq!(r, "Hello<|eot_id|>");
    }

    #[test]
    fn template_error_names_file_and_line() {
        let chat = ChatTemplate::new(
            "{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "conv.jsonl",
            br#"{"prompt":[{"role":"user","content":"Hi"}],"chosen":"A","rejected":"B"}"#,
        );
        let err = load_dataset(&path, None, Some(&chat))
            .unwrap_err()
            .to_string();
        assert!(err.contains("conv.jsonl:1: chat template:"), "{err}");
        assert!(err.contains("one message only"), "{err}");
    }

    #[test]
    fn conversational_errors() {
        let e = err_str(
            "c.jsonl",
            r#"{"chosen":[{"role":"user","content":"a"}],"rejected":[{"role":"user","content":"b"}]}"#,
        );
        assert!(
            e.contains("c.jsonl:1: field \"chosen\"") && e.contains("first messages differ"),
            "{e}"
        );
        let e = err_str(
            "c.jsonl",
            r#"{"chosen":[{"role":"user","content":"a"}],"rejected":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#,
        );
        assert!(
            e.contains("c.jsonl:1: field \"chosen\": no response messages"),
            "{e}"
        );
        let e = err_str(
            "c.jsonl",
            r#"{"prompt":[],"chosen":[{"role":"assistant","content":"a"}],"rejected":[{"role":"assistant","content":"b"}]}"#,
        );
        assert!(e.contains("c.jsonl:1: field \"prompt\""), "{e}");
        let e = err_str(
            "c.jsonl",
            r#"{"prompt":"q","chosen":[{"role":"assistant","content":[{"type":"image","url":"x"}]}],"rejected":[{"role":"assistant","content":"b"}]}"#,
        );
        assert!(
            e.contains("field \"chosen[0].content[0]\": only text parts"),
            "{e}"
        );
    }
}
