//! `quality.judge_model` (issue 17, section 3): the model a shadow check asks whether the fresh
//! answer and the served one agree, instead of deciding by the cosine of their embeddings. Its
//! validation lives here and is called with one line from `validate`; the asking is
//! [`crate::quality::shadow_judge`].

use super::{ConfigIssue, RouteConfig};

/// The judge model, checked against the routes already validated: it is sent through the
/// provider router like a client request, so some `[[routes]]` entry must match it. `None`
/// (absent) leaves shadow checks to the answers' cosine.
pub fn validate_shadow_judge(
    model: Option<&str>,
    routes: &[RouteConfig],
    issues: &mut Vec<ConfigIssue>,
) -> Option<String> {
    let model = model?.trim();
    let path = "quality.judge_model".to_string();
    if model.is_empty() {
        issues.push(ConfigIssue {
            path,
            message: "must not be empty (leave it out to compare answers by cosine)".into(),
        });
        return None;
    }
    if !routes.iter().any(|r| r.model_glob.matches(model)) {
        issues.push(ConfigIssue {
            path,
            message: format!(
                "no [[routes]] entry matches '{model}': shadow checks send it through the \
                 routes like a client request"
            ),
        });
        return None;
    }
    Some(model.to_string())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn with(quality: &str) -> Result<Config, crate::config::ConfigError> {
        let text = format!(
            "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\n\
             [[routes]]\nmodel = \"gpt-*\"\nproviders = [\"p\"]\n[quality]\n{quality}\n"
        );
        Config::from_toml_str(&text, Vec::<(String, String)>::new(), Path::new("/"))
    }

    #[test]
    fn a_routed_judge_model_is_kept_and_absent_means_cosine() {
        let c = with("judge_model = \"gpt-4o-mini\"").unwrap();
        assert_eq!(c.cache.quality.judge_model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(with("").unwrap().cache.quality.judge_model, None);
    }

    #[test]
    fn an_unrouted_or_empty_judge_model_names_the_key() {
        let err = with("judge_model = \"claude-3-haiku\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("quality.judge_model"), "{err}");
        assert!(err.contains("no [[routes]] entry"), "{err}");
        let err = with("judge_model = \" \"").unwrap_err().to_string();
        assert!(
            err.contains("quality.judge_model") && err.contains("empty"),
            "{err}"
        );
    }
}
