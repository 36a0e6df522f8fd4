//! Tokens and money: what each upstream answer cost and what each hit saved, by model and
//! tenant, priced from the `[[prices]]` table. When a streamed answer carries no usage, tokens
//! are estimated with OpenAI's o200k_base tokenizer (an estimate for other vendors' models; the
//! loader runs once, off the async runtime). Tenants appear only as short hashes.

use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::api::canonical::ApiKind;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Usage;

/// A low-cardinality tenant label: the namespace, or the first 8 hex digits of the key hash.
pub fn tenant_label(tenant: &str) -> String {
    if let Some(ns) = tenant.strip_prefix("ns:") {
        return format!("ns:{}", truncate(ns, 32));
    }
    if let Some(hash) = tenant.strip_prefix("key:") {
        return format!("key:{}", truncate(hash, 8));
    }
    truncate(tenant, 32).to_string()
}

/// Model names are client-chosen text: bound them so a label cannot grow without limit.
pub fn model_label(model: &str) -> &str {
    truncate(model, 64)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Records what an upstream answer cost.
pub fn record_upstream(m: &Metrics, config: &Config, model: &str, tenant: &str, usage: &Usage) {
    let (model, tenant) = (model_label(model), tenant_label(tenant));
    m.tokens_upstream
        .with_label_values(&[model, &tenant, "prompt"])
        .inc_by(usage.prompt_tokens as u64);
    m.tokens_upstream
        .with_label_values(&[model, &tenant, "completion"])
        .inc_by(usage.completion_tokens as u64);
    if let Some(price) = config.price_for(model) {
        m.cost_upstream
            .with_label_values(&[model, &tenant])
            .inc_by(price.cost(usage));
    }
}

/// Records what a hit saved.
pub fn record_saved(m: &Metrics, config: &Config, model: &str, tenant: &str, usage: &Usage) {
    let (model, tenant) = (model_label(model), tenant_label(tenant));
    m.tokens_saved
        .with_label_values(&[model, &tenant, "prompt"])
        .inc_by(usage.prompt_tokens as u64);
    m.tokens_saved
        .with_label_values(&[model, &tenant, "completion"])
        .inc_by(usage.completion_tokens as u64);
    if let Some(price) = config.price_for(model) {
        m.cost_saved
            .with_label_values(&[model, &tenant])
            .inc_by(price.cost(usage));
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
                prompt += 3 + count_tokens(&text_of(m.get("content").unwrap_or(&Value::Null)));
            }
            prompt += 3;
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
        assert_eq!(tenant_label("key:0123456789abcdef"), "key:01234567");
        assert_eq!(tenant_label("ns:team-a"), "ns:team-a");
        assert_eq!(model_label(&"m".repeat(100)).len(), 64);
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
