//! `cache_tool_calls` on a `[[routes]]` entry: whether answers that call tools are stored and
//! served for the models the route matches (issue 15). Off by default: a replayed tool call
//! makes the client run the tool again, which is right for a lookup and wrong for a payment.
//! The request's tools and `tool_choice` are part of the scope, so a stored call is only ever
//! served to a request that offered the same tools. The gate itself is applied in
//! `cache::miss` when an answer is settled; the collectors collect tool calls either way.

use super::raw::RawRoute;
use super::Config;

/// The validated flag of one route (a boolean; TOML rejects any other type with the key named).
pub(crate) fn cache_tool_calls(route: &RawRoute) -> bool {
    route.cache_tool_calls.unwrap_or(false)
}

impl Config {
    /// Whether answers with tool calls for `model` may be cached: the first route whose glob
    /// matches decides (as for thresholds); no matching route means no.
    pub fn cache_tool_calls_for(&self, model: &str) -> bool {
        self.routes
            .iter()
            .find(|r| r.model_glob.matches(model))
            .is_some_and(|r| r.cache_tool_calls)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(routes: &str) -> Result<Config, String> {
        let text = format!(
            r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1/"
{routes}
"#
        );
        Config::from_toml_str(&text, Vec::<(String, String)>::new(), Path::new("/base"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn cache_tool_calls_is_per_route_and_off_by_default() {
        let c = parse(
            r#"
[[routes]]
model = "agent-*"
providers = ["openai"]
cache_tool_calls = true
[[routes]]
model = "*"
providers = ["openai"]
"#,
        )
        .unwrap();
        assert!(c.cache_tool_calls_for("agent-7"));
        assert!(!c.cache_tool_calls_for("gpt-4o"));
        let c = parse("").unwrap();
        assert!(!c.cache_tool_calls_for("gpt-4o"), "no route: off");
    }

    #[test]
    fn a_cache_tool_calls_that_is_not_a_boolean_is_refused() {
        let err = parse(
            r#"
[[routes]]
model = "*"
providers = ["openai"]
cache_tool_calls = "yes"
"#,
        )
        .unwrap_err();
        assert!(err.contains("cache_tool_calls"), "{err}");
    }
}
