//! Tokens and money: what each upstream answer cost and what each hit saved, by model, priced
//! from the `[[prices]]` table. When a streamed answer carries no usage, tokens are estimated
//! with OpenAI's o200k_base tokenizer (an estimate for other vendors' models; the loader runs
//! once, off the async runtime). The model label is a glob from the config, never the model
//! name a client sent; there is no per-tenant label (per-tenant figures belong in an admin API).

use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::api::ApiKind;
use crate::config::{Config, PriceConfig};
use crate::metrics::Metrics;
use crate::store::Usage;

/// Label for values that do not come from the config.
pub const OTHER: &str = "other";

/// The `model` label of a request's model: the `[[prices]]` glob it matches, else the first
/// `[[routes]]` glob that matches it (the one that routed it), else `other`. Model names are
/// client-chosen text: a label built from them would let clients mint series without bound.
pub fn model_label<'c>(config: &'c Config, model: &str) -> &'c str {
    let glob = match price_of(config, model) {
        Some(p) => Some(p.model_glob.as_str()),
        None => config
            .routes
            .iter()
            .find(|r| r.model_glob.matches(model))
            .map(|r| r.model_glob.as_str()),
    };
    glob.map(config_label).unwrap_or(OTHER)
}

/// A label value taken from the config, `other` if it holds a control character (a CR or LF
/// would break the exposition's lines).
pub fn config_label(s: &str) -> &str {
    if s.is_empty() || s.chars().any(char::is_control) {
        OTHER
    } else {
        s
    }
}

fn price_of<'c>(config: &'c Config, model: &str) -> Option<&'c PriceConfig> {
    config.prices.iter().find(|p| p.model_glob.matches(model))
}

/// Records what an upstream answer cost.
pub fn record_upstream(m: &Metrics, config: &Config, model: &str, usage: &Usage) {
    let label = model_label(config, model);
    m.tokens_upstream
        .with_label_values(&[label, "prompt"])
        .inc_by(usage.prompt_tokens as u64);
    m.tokens_upstream
        .with_label_values(&[label, "completion"])
        .inc_by(usage.completion_tokens as u64);
    if let Some(p) = price_of(config, model) {
        m.cost_upstream
            .with_label_values(&[label])
            .inc_by(p.price.cost(usage));
    }
}

/// Records what a hit saved.
pub fn record_saved(m: &Metrics, config: &Config, model: &str, usage: &Usage) {
    let label = model_label(config, model);
    m.tokens_saved
        .with_label_values(&[label, "prompt"])
        .inc_by(usage.prompt_tokens as u64);
    m.tokens_saved
        .with_label_values(&[label, "completion"])
        .inc_by(usage.completion_tokens as u64);
    if let Some(p) = price_of(config, model) {
        m.cost_saved
            .with_label_values(&[label])
            .inc_by(p.price.cost(usage));
    }
}

fn bpe() -> Option<&'static tiktoken_rs::CoreBPE> {
    static BPE: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// Token count of a text (o200k_base). Blocking on first use: call off the runtime.
pub fn count_tokens(text: &str) -> u32 {
    match bpe() {
        Some(b) => b.encode_ordinary(text).len() as u32,
        // Tokenizer unavailable: ~4 characters per token is the usual rule of thumb.
        None => (text.chars().count() as u32).div_ceil(4),
    }
}

/// Estimated usage for an answer that came without it: the prompt side counts every message's
/// text plus OpenAI's per-message overhead (3 tokens, and 3 to prime the reply).
/// Tokens an answer's text and tool calls take, as the model wrote them (for
/// [`estimate_usage`]'s `completion`).
pub fn completion_text(content: &str, calls: &[crate::store::ToolCall]) -> String {
    let mut out = content.to_string();
    for c in calls {
        out.push(' ');
        out.push_str(&c.name);
        out.push(' ');
        out.push_str(&c.arguments);
    }
    out
}

pub fn estimate_usage(api: ApiKind, request: &Map<String, Value>, completion: &str) -> Usage {
    let mut prompt = 0u32;
    match api {
        ApiKind::Completions => {
            if let Some(p) = request.get("prompt") {
                prompt += count_tokens(&text_of(p));
            }
        }
        ApiKind::Chat | ApiKind::Messages => {
            if let Some(Value::String(s)) = request.get("system") {
                prompt += count_tokens(s) + 3;
            }
            for m in request
                .get("messages")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let content = m.get("content").unwrap_or(&Value::Null);
                prompt += 3 + count_tokens(&text_of(content));
                // What a model reads besides text: earlier tool calls (chat `tool_calls`,
                // Anthropic `tool_use` / `tool_result` blocks), as the JSON it is sent as.
                if let Some(calls) = m.get("tool_calls") {
                    prompt += count_tokens(&calls.to_string());
                }
                for block in content.as_array().into_iter().flatten() {
                    if let Some("tool_use" | "tool_result") = block["type"].as_str() {
                        prompt += count_tokens(&block.to_string());
                    }
                }
            }
            // Tool definitions are part of the prompt the model reads.
            for key in ["tools", "functions"] {
                if let Some(Value::Array(tools)) = request.get(key) {
                    if !tools.is_empty() {
                        prompt += count_tokens(&Value::Array(tools.clone()).to_string());
                    }
                }
            }
            prompt += 3;
        }
        ApiKind::Responses => {
            let chat = crate::api::responses::to_chat(request).unwrap_or_default();
            prompt = estimate_usage(ApiKind::Chat, &chat, "").prompt_tokens;
        }
    }
    Usage {
        prompt_tokens: prompt,
        completion_tokens: count_tokens(completion),
    }
}

fn text_of(v: &Value) -> String {
    crate::api::text::content_text_lenient(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn issue15_estimates_count_tools_calls_and_results() {
        let plain = json!({"model": "m", "messages": [{"role": "user", "content": "Weather?"}]});
        let tools = json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
        let mut with_tools = plain.clone();
        with_tools["tools"] = tools;
        let obj = |v: &Value| v.as_object().cloned().unwrap();
        let base = estimate_usage(ApiKind::Chat, &obj(&plain), "").prompt_tokens;
        let more = estimate_usage(ApiKind::Chat, &obj(&with_tools), "").prompt_tokens;
        assert!(more > base + 10, "{base} -> {more}");
        let history = json!({"model": "m", "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]});
        let h = estimate_usage(ApiKind::Chat, &obj(&history), "").prompt_tokens;
        assert!(h > base + 10, "{base} -> {h}");
        let blocks = json!({"model": "m", "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                "input": {"city": "Paris"}}]}]});
        let b = estimate_usage(ApiKind::Messages, &obj(&blocks), "").prompt_tokens;
        assert!(b > base + 5, "{base} -> {b}");
        let call = crate::store::ToolCall {
            id: "c".into(),
            name: "get_weather".into(),
            arguments: "{\"city\":\"Paris\",\"days\":3}".into(),
        };
        let text = completion_text("", std::slice::from_ref(&call));
        assert!(estimate_usage(ApiKind::Chat, &obj(&plain), &text).completion_tokens >= 8);
    }

    #[test]
    fn prices_and_labels() {
        let p = crate::config::Price {
            input_per_mtok: 0.15,
            output_per_mtok: 0.60,
        };
        let cost = p.cost(&Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 500_000,
        });
        assert!((cost - 0.45).abs() < 1e-9);
    }

    #[test]
    fn issue12_model_labels_come_from_the_config() {
        let text = r#"
[[providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[[routes]]
model = "llama*"
providers = ["p"]
[[routes]]
model = "gpt-*"
providers = ["p"]
[[prices]]
model = "gpt-4o-mini*"
input_per_mtok = 0.15
output_per_mtok = 0.60
"#;
        let c =
            Config::from_toml_str(text, Vec::<(String, String)>::new(), Path::new("/")).unwrap();
        assert_eq!(model_label(&c, "gpt-4o-mini-2024"), "gpt-4o-mini*");
        assert_eq!(model_label(&c, "gpt-4o"), "gpt-*");
        assert_eq!(model_label(&c, "llama3\r\n# HELP"), "llama*");
        assert_eq!(model_label(&c, "claude\"}"), OTHER);
        assert_eq!(config_label("bad\rglob"), OTHER);
    }

    #[test]
    fn estimates_count_real_tokens() {
        assert_eq!(count_tokens("hello world"), 2);
        let req = json!({"messages":[{"role":"user","content":"hello world"}]});
        let u = estimate_usage(ApiKind::Chat, req.as_object().unwrap(), "hi there");
        assert_eq!(u.prompt_tokens, 3 + 2 + 3);
        assert_eq!(u.completion_tokens, 2);
    }
}
