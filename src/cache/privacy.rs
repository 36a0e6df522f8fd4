//! Stage 0 of the cached request path: personal data (`[pii]`, issue 16), before the request
//! is planned. [`screen`] reads a validated body's texts and, by the mode configured for its
//! model, lets it through ([`Screened::Clean`]), sends it past the cache
//! ([`Screened::SkipCache`]), replaces the values by placeholders ([`Screened::Redacted`], the
//! body is rewritten before the cache or the upstream sees it) or refuses it (a 400 naming the
//! kinds). Its twin [`answer_has_pii`] keeps answers with personal data out of the cache and
//! stops a stored one from being served. Values never leave this stage: metrics and errors
//! carry kinds only.

use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::config::PiiMode;
use crate::metrics::pii::{PiiMetrics, Source};
use crate::pii::{self, Redaction};

/// What the privacy stage made of a request.
#[derive(Debug)]
pub enum Screened {
    /// No personal data, or `mode = "off"`.
    Clean,
    /// Personal data in `skip-cache` mode: forward it, neither read nor write the cache.
    SkipCache,
    /// The body was redacted; the answer gets the values back.
    Redacted(Box<Redaction>),
}

impl Screened {
    pub fn skips_cache(&self) -> bool {
        matches!(self, Screened::SkipCache)
    }

    pub fn redaction(&self) -> Option<&Redaction> {
        match self {
            Screened::Redacted(r) => Some(&**r),
            _ => None,
        }
    }
}

/// Screens a validated request body under `mode`, rewriting it in `redact` mode.
pub fn screen(
    mode: PiiMode,
    body: &mut Map<String, Value>,
    metrics: &PiiMetrics,
) -> Result<Screened, ApiError> {
    match mode {
        PiiMode::Off => Ok(Screened::Clean),
        PiiMode::Redact => {
            let r = Redaction::redact_body(body);
            if r.is_empty() {
                return Ok(Screened::Clean);
            }
            metrics.found(&r.kinds(), Source::Prompt);
            metrics.action("redacted");
            Ok(Screened::Redacted(Box::new(r)))
        }
        PiiMode::SkipCache | PiiMode::Block => {
            let kinds = pii::kinds_in(pii::request_texts(body));
            if kinds.is_empty() {
                return Ok(Screened::Clean);
            }
            metrics.found(&kinds, Source::Prompt);
            if mode == PiiMode::Block {
                metrics.action("blocked");
                return Err(ApiError::PersonalData {
                    kinds: pii::describe(&kinds),
                });
            }
            metrics.action("skipped");
            Ok(Screened::SkipCache)
        }
    }
}

/// Whether an answer's text has personal data under `mode` (never under `off`); counted as
/// found in `source`. Placeholders of a redacted request are not personal data.
pub fn answer_has_pii(mode: PiiMode, text: &str, metrics: &PiiMetrics, source: Source) -> bool {
    if mode == PiiMode::Off {
        return false;
    }
    let kinds = pii::kinds_in([text]);
    if kinds.is_empty() {
        return false;
    }
    metrics.found(&kinds, source);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metrics() -> PiiMetrics {
        PiiMetrics::new(&prometheus::Registry::new()).unwrap()
    }

    fn body(text: &str) -> Map<String, Value> {
        json!({"model": "m", "messages": [{"role": "user", "content": text}]})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn each_mode_does_what_it_says() {
        let m = metrics();
        let pii = "my card is 4111 1111 1111 1111";
        assert!(matches!(
            screen(PiiMode::Off, &mut body(pii), &m),
            Ok(Screened::Clean)
        ));
        assert!(screen(PiiMode::SkipCache, &mut body(pii), &m)
            .unwrap()
            .skips_cache());
        let err = screen(PiiMode::Block, &mut body(pii), &m).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains("card"), "{err}");
        assert!(!err.to_string().contains("4111"), "{err}");
        let mut b = body(pii);
        let s = screen(PiiMode::Redact, &mut b, &m).unwrap();
        assert_eq!(b["messages"][0]["content"], "my card is [CARD_1]");
        assert_eq!(
            s.redaction().unwrap().restore("[CARD_1] ok"),
            "4111 1111 1111 1111 ok"
        );
        for mode in [PiiMode::SkipCache, PiiMode::Block, PiiMode::Redact] {
            assert!(matches!(
                screen(mode, &mut body("What is 15% of 80?"), &m),
                Ok(Screened::Clean)
            ));
        }
        let card = m.detections.with_label_values(&["card", "prompt"]).get();
        assert_eq!(card, 3);
        assert_eq!(m.actions.with_label_values(&["blocked"]).get(), 1);
    }

    #[test]
    fn answers_with_pii_are_flagged_except_when_off() {
        let m = metrics();
        let a = "Write to help@example.com";
        assert!(answer_has_pii(PiiMode::SkipCache, a, &m, Source::Answer));
        assert!(!answer_has_pii(PiiMode::Off, a, &m, Source::Answer));
        assert!(!answer_has_pii(
            PiiMode::Redact,
            "Hi [EMAIL_1]",
            &m,
            Source::Answer
        ));
        assert_eq!(
            m.detections.with_label_values(&["email", "answer"]).get(),
            1
        );
    }

    /// What the stage adds to a request (issue 16's overhead figure): `cargo test --lib
    /// cache::privacy -- --ignored --nocapture` (run it with `--release` for release numbers).
    #[test]
    #[ignore]
    fn overhead_per_request() {
        let m = metrics();
        let clean = body("How do I reset my password on the mobile app? It keeps failing.");
        for (name, mode, b) in [
            (
                "skip-cache, clean prompt",
                PiiMode::SkipCache,
                clean.clone(),
            ),
            ("redact, clean prompt", PiiMode::Redact, clean.clone()),
            ("off", PiiMode::Off, clean),
            (
                "redact, prompt with an e-mail",
                PiiMode::Redact,
                body("Write a welcome note to ann@example.com about the new plan"),
            ),
        ] {
            let n = 20_000;
            let started = std::time::Instant::now();
            for _ in 0..n {
                let mut b = b.clone();
                let s = screen(mode, &mut b, &m).unwrap();
                std::hint::black_box(s);
            }
            let us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
            println!("{name}: {us:.2} us per request (body clone included)");
        }
    }
}
