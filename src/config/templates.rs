//! `[[templates]]`: prompt templates (issue 16). A template has a name, chat messages whose
//! text may hold `{{variables}}`, the model it runs on (routed like any model) and default
//! request parameters. Clients call it as `model = "template:NAME"` with `deja_variables`
//! (see `api::template`). Raw shape and validation ([`validate_templates`], called once from
//! `validate`) live here.

use serde::Deserialize;

use super::ConfigIssue;

/// Largest text of one template's messages, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Most templates in one config.
const MAX_TEMPLATES: usize = 1000;
/// Most variables in one template.
const MAX_VARIABLES: usize = 64;

/// `[[templates]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    pub name: String,
    pub model: String,
    pub messages: Vec<RawTemplateMessage>,
    /// Default request parameters (`temperature`, `max_tokens`, ...); the request's own win.
    pub params: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplateMessage {
    pub role: String,
    pub content: String,
}

/// A piece of a template's text: literal text or a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Var(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TemplateMessage {
    pub role: String,
    pub pieces: Vec<Piece>,
}

/// One validated template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub model: String,
    pub messages: Vec<TemplateMessage>,
    /// Every variable its messages use, sorted, each once.
    pub variables: Vec<String>,
    pub params: serde_json::Map<String, serde_json::Value>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A variable name: a letter or `_`, then letters, digits or `_` (at most 64).
pub fn valid_variable(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits `text` at its `{{ name }}` placeholders.
pub fn split(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| "a `{{` is not closed by `}}`".to_string())?;
        let name = after[..close].trim();
        if !valid_variable(name) {
            return Err(format!(
                "`{{{{{name}}}}}` is not a variable name (a letter or _, then letters, digits, _)"
            ));
        }
        pieces.push(Piece::Var(name.to_string()));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Validates `[[templates]]`; problems are appended to `issues` with their paths.
pub fn validate_templates(raw: &[RawTemplate], issues: &mut Vec<ConfigIssue>) -> Vec<Template> {
    let mut out: Vec<Template> = Vec::new();
    let mut issue = |path: String, message: String| issues.push(ConfigIssue { path, message });
    if raw.len() > MAX_TEMPLATES {
        issue(
            "templates".into(),
            format!("{} templates; at most {MAX_TEMPLATES}", raw.len()),
        );
        return out;
    }
    for (i, t) in raw.iter().enumerate() {
        let at = |f: &str| format!("templates[{i}].{f}");
        let mut ok = true;
        if !valid_name(&t.name) {
            issue(at("name"), "must be 1 to 64 of A-Z a-z 0-9 _ . -".into());
            ok = false;
        } else if out.iter().any(|o| o.name == t.name) || raw[..i].iter().any(|o| o.name == t.name)
        {
            issue(at("name"), format!("'{}' is defined twice", t.name));
            ok = false;
        }
        if t.model.trim().is_empty() || t.model.starts_with("template:") {
            issue(
                at("model"),
                "must name a model (not another template)".into(),
            );
            ok = false;
        }
        if t.messages.is_empty() {
            issue(at("messages"), "needs at least one message".into());
            ok = false;
        }
        let bytes: usize = t.messages.iter().map(|m| m.content.len()).sum();
        if bytes > MAX_TEMPLATE_BYTES {
            issue(
                at("messages"),
                format!("{bytes} bytes of text; at most {MAX_TEMPLATE_BYTES}"),
            );
            ok = false;
        }
        let mut messages = Vec::new();
        let mut variables: Vec<String> = Vec::new();
        for (j, m) in t.messages.iter().enumerate() {
            if !matches!(
                m.role.as_str(),
                "system" | "developer" | "user" | "assistant"
            ) {
                issue(
                    format!("templates[{i}].messages[{j}].role"),
                    format!(
                        "'{}' is not one of system, developer, user, assistant",
                        m.role
                    ),
                );
                ok = false;
            }
            match split(&m.content) {
                Ok(pieces) => {
                    for p in &pieces {
                        if let Piece::Var(v) = p {
                            if !variables.contains(v) {
                                variables.push(v.clone());
                            }
                        }
                    }
                    messages.push(TemplateMessage {
                        role: m.role.clone(),
                        pieces,
                    });
                }
                Err(e) => {
                    issue(format!("templates[{i}].messages[{j}].content"), e);
                    ok = false;
                }
            }
        }
        if variables.len() > MAX_VARIABLES {
            issue(
                at("messages"),
                format!("{} variables; at most {MAX_VARIABLES}", variables.len()),
            );
            ok = false;
        }
        variables.sort();
        let mut params = serde_json::Map::new();
        for (k, v) in t.params.iter().flatten() {
            if matches!(
                k.as_str(),
                "model" | "messages" | "deja_variables" | "stream"
            ) {
                issue(
                    format!("templates[{i}].params.{k}"),
                    "is set by the template or the request, not a default".into(),
                );
                ok = false;
            } else {
                params.insert(k.clone(), toml_to_json(v));
            }
        }
        if ok {
            out.push(Template {
                name: t.name.clone(),
                model: t.model.clone(),
                messages,
                variables,
                params,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn load(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::from_toml_str(text, Vec::<(String, String)>::new(), Path::new("/"))
    }

    #[test]
    fn templates_parse_with_their_variables_and_defaults() {
        let c = load(
            r#"
[[templates]]
name = "support"
model = "gpt-4o-mini"
messages = [
  { role = "system", content = "You support {{ product }}. Be brief." },
  { role = "user", content = "{{question}}" },
]
params = { temperature = 0.2, max_tokens = 200 }
"#,
        )
        .unwrap();
        let t = &c.templates[0];
        assert_eq!(t.variables, ["product", "question"]);
        assert_eq!(
            t.messages[0].pieces,
            [
                Piece::Text("You support ".into()),
                Piece::Var("product".into()),
                Piece::Text(". Be brief.".into())
            ]
        );
        assert_eq!(t.params["max_tokens"], 200);
        assert!(load("").unwrap().templates.is_empty());
    }

    #[test]
    fn bad_templates_are_reported_with_their_paths() {
        let e = load(
            r#"
[[templates]]
name = "a b"
model = "template:x"
messages = [
  { role = "robot", content = "hi {{ 1x }}" },
  { role = "user", content = "open {{ q" },
]
params = { stream = true }
[[templates]]
name = "t"
model = "m"
messages = []
[[templates]]
name = "t"
model = "m"
messages = [{ role = "user", content = "x" }]
"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = e.issues().iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "templates[0].name",
                "templates[0].model",
                "templates[0].messages[0].role",
                "templates[0].messages[0].content",
                "templates[0].messages[1].content",
                "templates[0].params.stream",
                "templates[1].messages",
                "templates[2].name",
            ],
            "{e}"
        );
    }
}
