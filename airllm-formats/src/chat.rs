//! Chat templates: the Jinja templates models ship (tokenizer_config.json,
//! chat_template.jinja, GGUF metadata), rendered with `minijinja` the way
//! transformers' `apply_chat_template` renders them.

use std::collections::BTreeMap;

use minijinja::value::Kwargs;
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

use crate::{FormatError, Result};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A model's chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    variables: BTreeMap<String, serde_json::Value>,
}

const TEMPLATE_NAME: &str = "chat";

/// Most template instructions one rendering may run: far above what a
/// conversation needs, it turns a runaway template into an error.
const RENDER_FUEL: u64 = 5_000_000;

/// JSON as Python's `json.dumps` spells it by default (`", "` and `": "`
/// between items), which transformers' `tojson` filter uses.
struct PythonSeparators;

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.begin_array_value(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// transformers' `tojson(indent=None)`: `json.dumps` without ASCII escaping,
/// keys in the order the value holds them.
fn tojson(
    value: minijinja::Value,
    kwargs: Kwargs,
) -> std::result::Result<minijinja::Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json: serde_json::Value = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            serde::Serialize::serialize(
                &json,
                &mut serde_json::Serializer::with_formatter(&mut out, formatter),
            )
        }
        None => serde::Serialize::serialize(
            &json,
            &mut serde_json::Serializer::with_formatter(&mut out, PythonSeparators),
        ),
    };
    written.map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(minijinja::Value::from_safe_string(
        String::from_utf8(out).expect("serde_json writes UTF-8"),
    ))
}

/// `raise_exception(message)`, which transformers' templates call on bad input.
fn raise_exception(message: String) -> std::result::Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the strings the
    /// template sees under those names.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(RENDER_FUEL));
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| FormatError::Template(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
            variables: BTreeMap::new(),
        })
    }

    /// The same template, rendered with `variables` set too (such as
    /// `enable_thinking`, which transformers passes through from
    /// `apply_chat_template`'s keyword arguments).
    pub fn with_variables(
        mut self,
        variables: impl IntoIterator<Item = (String, serde_json::Value)>,
    ) -> Self {
        self.variables.extend(variables);
        self
    }

    /// The prompt text for `messages` ([`Message`]s, or any messages that
    /// serialize as transformers' dicts do, `tool_calls` and all); with
    /// `add_generation_prompt`, ending where the assistant's answer begins.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .expect("added at construction");
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                ..minijinja::Value::from_serialize(&self.variables)
            })
            .map_err(|e| FormatError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_messages_and_the_generation_prompt() {
        let template = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}".into(),
            "<s>".into(),
            "</s>".into(),
        )
        .unwrap();
        let text = template
            .render(&[Message::new("user", " hi ")], true)
            .unwrap();
        assert_eq!(text, "<s><user>hi\n<assistant>");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let template = ChatTemplate::new(
            "{{ raise_exception('no system role') }}".into(),
            String::new(),
            String::new(),
        )
        .unwrap();
        let err = template
            .render::<Message>(&[], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no system role"), "{err}");
    }

    #[test]
    fn a_runaway_template_is_an_error() {
        let source =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let template = ChatTemplate::new(source.into(), String::new(), String::new()).unwrap();
        let err = template
            .render::<Message>(&[], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fuel"), "{err}");
    }
}
