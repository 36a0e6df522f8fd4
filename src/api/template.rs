//! Prompt templates on `/v1/chat/completions` (issue 16, `[[templates]]`): a request whose
//! `model` is `template:NAME` carries its variables in `deja_variables` (the official SDKs
//! send it with `extra_body`) and is rendered into a plain chat request before anything else
//! sees it: the template's model, its messages with the variables filled in (then the
//! request's own `messages`, if any), and its default parameters where the request sets none.
//! Caching then works as for any request: the template's fixed text (system messages, earlier
//! turns) is part of the scope, and the rendered last user message is compared semantically.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::api::ApiKind;
use crate::config::templates::{Piece, Template};
use crate::config::Config;

pub const PREFIX: &str = "template:";
const PARAM: &str = "deja_variables";

/// The body with its template rendered; unchanged (and not parsed) when it names none.
pub fn apply(config: &Config, api: ApiKind, body: Bytes) -> Result<Bytes, ApiError> {
    if !contains(&body, b"\"template:") {
        return Ok(body);
    }
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(&body) else {
        // Not an object: the API's own parser reports it.
        return Ok(body);
    };
    let Some(name) = map
        .get("model")
        .and_then(Value::as_str)
        .and_then(|m| m.strip_prefix(PREFIX))
        .map(str::to_string)
    else {
        return Ok(body);
    };
    if api != ApiKind::Chat {
        return Err(ApiError::invalid_request(
            "Prompt templates (`model = \"template:NAME\"`) are served on /v1/chat/completions.",
            Some("model".into()),
        ));
    }
    let template = config
        .templates
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| {
            ApiError::invalid_request(
                format!(
                    "The template `{}` does not exist (GET /v1/templates lists them).",
                    shown(&name)
                ),
                Some("model".into()),
            )
        })?;
    let vars = match map.remove(PARAM) {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::invalid_request(
                "`deja_variables` must be an object of variable names to strings.",
                Some(PARAM.into()),
            ))
        }
    };
    let rendered = render(template, &vars, config.server.max_body_bytes)?;
    let mut messages = rendered;
    if let Some(Value::Array(own)) = map.remove("messages") {
        messages.extend(own);
    }
    map.insert("model".into(), Value::String(template.model.clone()));
    map.insert("messages".into(), Value::Array(messages));
    for (k, v) in &template.params {
        map.entry(k.clone()).or_insert_with(|| v.clone());
    }
    serde_json::to_vec(&map)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("serializing a rendered template failed: {e}")))
}

/// The template's messages with `vars` filled in. Every variable must be given, as a string,
/// and none may be unknown (400 naming them); the rendered text is at most `max_bytes`.
pub fn render(
    t: &Template,
    vars: &Map<String, Value>,
    max_bytes: usize,
) -> Result<Vec<Value>, ApiError> {
    let missing: Vec<&str> = t
        .variables
        .iter()
        .filter(|v| !vars.contains_key(v.as_str()))
        .map(String::as_str)
        .collect();
    let mut unknown: Vec<String> = vars
        .keys()
        .filter(|k| !t.variables.iter().any(|v| v == *k))
        .map(|k| shown(k))
        .collect();
    unknown.sort();
    let not_strings: Vec<&str> = t
        .variables
        .iter()
        .filter(|v| vars.get(v.as_str()).is_some_and(|x| !x.is_string()))
        .map(String::as_str)
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing variables: {}", missing.join(", ")));
    }
    if !unknown.is_empty() {
        problems.push(format!("unknown variables: {}", unknown.join(", ")));
    }
    if !not_strings.is_empty() {
        problems.push(format!("not strings: {}", not_strings.join(", ")));
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid_request(
            format!(
                "The template `{}` takes {}; {}.",
                t.name,
                if t.variables.is_empty() {
                    "no variables".to_string()
                } else {
                    t.variables.join(", ")
                },
                problems.join("; ")
            ),
            Some(PARAM.into()),
        ));
    }
    let mut total = 0usize;
    let mut out = Vec::with_capacity(t.messages.len());
    for m in &t.messages {
        let mut text = String::new();
        for p in &m.pieces {
            let s = match p {
                Piece::Text(s) => s.as_str(),
                Piece::Var(v) => vars.get(v).and_then(Value::as_str).unwrap_or_default(),
            };
            total += s.len();
            if total > max_bytes {
                return Err(ApiError::invalid_request(
                    format!(
                        "The rendered template `{}` is over {max_bytes} bytes (server.max_body_bytes).",
                        t.name
                    ),
                    Some(PARAM.into()),
                ));
            }
            text.push_str(s);
        }
        out.push(serde_json::json!({"role": m.role, "content": text}));
    }
    Ok(out)
}

/// `GET /v1/templates`: each template's name, model and variables.
pub fn list(config: &Config) -> Value {
    let data: Vec<Value> = config
        .templates
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": format!("{PREFIX}{}", t.name),
                "object": "template",
                "name": t.name,
                "model": t.model,
                "variables": t.variables,
                "params": t.params,
            })
        })
        .collect();
    serde_json::json!({"object": "list", "data": data})
}

/// A client-sent name as it may be echoed: at most 64 characters, no control characters.
fn shown(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn config() -> Config {
        Config::from_toml_str(
            r#"
[[templates]]
name = "support"
model = "gpt-4o-mini"
messages = [
  { role = "system", content = "You support {{product}}." },
  { role = "user", content = "{{question}}" },
]
params = { temperature = 0.2 }
"#,
            Vec::<(String, String)>::new(),
            Path::new("/"),
        )
        .unwrap()
    }

    fn run(body: Value) -> Result<Value, ApiError> {
        let out = apply(&config(), ApiKind::Chat, Bytes::from(body.to_string()))?;
        Ok(serde_json::from_slice(&out).unwrap())
    }

    #[test]
    fn renders_messages_model_and_defaults() {
        let v = run(json!({"model": "template:support", "messages": [],
                           "temperature": 0.9,
                           "deja_variables": {"product": "Deja", "question": "Is it fast?"}}))
        .unwrap();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(
            v["messages"],
            json!([{"role": "system", "content": "You support Deja."},
                   {"role": "user", "content": "Is it fast?"}])
        );
        assert_eq!(v["temperature"], 0.9, "the request's own value wins");
        assert!(v.get("deja_variables").is_none());
        // A body without a template is returned untouched, byte for byte.
        let plain = Bytes::from_static(br#"{"model":"gpt-4o","messages":[]}"#);
        let out = apply(&config(), ApiKind::Chat, plain.clone()).unwrap();
        assert_eq!(out, plain);
    }

    #[test]
    fn missing_unknown_and_bad_variables_are_400s_naming_them() {
        let e = run(json!({"model": "template:support",
                           "deja_variables": {"question": "q", "colour": "red", "size": 1}}))
        .unwrap_err();
        assert_eq!(e.status().as_u16(), 400);
        let m = e.to_string();
        assert!(
            m.contains("missing variables: product")
                && m.contains("unknown variables: colour, size"),
            "{m}"
        );
        let e = run(json!({"model": "template:support",
                           "deja_variables": {"question": 1, "product": "p"}}))
        .unwrap_err();
        assert!(e.to_string().contains("not strings: question"), "{e}");
        let e = run(json!({"model": "template:nope"})).unwrap_err();
        assert!(e.to_string().contains("`nope` does not exist"), "{e}");
        let e = apply(
            &config(),
            ApiKind::Messages,
            Bytes::from(json!({"model": "template:support"}).to_string()),
        )
        .unwrap_err();
        assert_eq!(e.status().as_u16(), 400);
    }

    #[test]
    fn rendering_is_bounded() {
        let c = config();
        let vars = json!({"product": "x".repeat(100), "question": "q"});
        let e = render(&c.templates[0], vars.as_object().unwrap(), 64).unwrap_err();
        assert!(e.to_string().contains("over 64 bytes"), "{e}");
        assert!(render(&c.templates[0], vars.as_object().unwrap(), 1000).is_ok());
    }

    /// What templates add to a request: `cargo test --lib api::template -- --ignored
    /// --nocapture` (a body without a template is only scanned; one with is parsed, rendered
    /// and serialized again).
    #[test]
    #[ignore]
    fn overhead_per_request() {
        let c = config();
        let plain = Bytes::from(
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x".repeat(64)}]})
                .to_string(),
        );
        let templated =
            Bytes::from(template_call_body("Deja", "How do I reset my password?").to_string());
        for (what, body) in [("no template", plain), ("template", templated)] {
            let n = 100_000;
            let started = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(apply(&c, ApiKind::Chat, body.clone()).is_ok());
            }
            let us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
            println!("{what}: {us:.2} us per request");
        }
    }

    fn template_call_body(product: &str, question: &str) -> Value {
        json!({"model": "template:support", "messages": [],
               "deja_variables": {"product": product, "question": question}})
    }

    #[test]
    fn the_list_names_each_template_and_its_variables() {
        let v = list(&config());
        assert_eq!(v["data"][0]["id"], "template:support");
        assert_eq!(v["data"][0]["variables"], json!(["product", "question"]));
    }
}
