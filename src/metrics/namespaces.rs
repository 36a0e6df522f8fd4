//! Lookups by namespace (the request's tenant) and by requested model, for the hit rates of
//! `GET /admin/stats` (issue 17). Both are values a client chooses, so they are **not**
//! Prometheus labels (see the module docs of `metrics`): they live here, in memory, each in a
//! map of at most [`MAX_LABELS`] keys, the first seen; later ones are summed under
//! [`OTHER`]. Recording is one short lock per lookup with no `.await` under it.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;
use serde::Serialize;

/// Namespaces (and, apart, models) counted one by one; the rest go under [`OTHER`].
pub const MAX_LABELS: usize = 100;
/// The key everything past [`MAX_LABELS`] is summed under.
pub const OTHER: &str = "(other)";
/// Longest key kept, in bytes: a model name is whatever a client sent under a `*` route, so
/// longer ones are cut (at a character boundary) and the maps stay small in bytes too.
pub const MAX_LABEL_BYTES: usize = 128;

/// `s` cut to at most [`MAX_LABEL_BYTES`] bytes, at a character boundary.
fn cut(s: &str) -> &str {
    if s.len() <= MAX_LABEL_BYTES {
        return s;
    }
    let mut end = MAX_LABEL_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Lookups by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Lookups {
    pub exact_hit: u64,
    pub semantic_hit: u64,
    pub miss: u64,
    pub bypass: u64,
}

impl Lookups {
    /// The share of lookups (bypasses excluded) served exactly and semantically.
    pub fn hit_rates(&self) -> (f64, f64) {
        let n = self.exact_hit + self.semantic_hit + self.miss;
        if n == 0 {
            return (0.0, 0.0);
        }
        (
            self.exact_hit as f64 / n as f64,
            self.semantic_hit as f64 / n as f64,
        )
    }

    fn add(&mut self, outcome: &str) {
        match outcome {
            "exact_hit" => self.exact_hit += 1,
            "semantic_hit" => self.semantic_hit += 1,
            "miss" => self.miss += 1,
            _ => self.bypass += 1,
        }
    }
}

/// The key `key` counts under in a map bounded to `max` keys: itself while it is known or
/// there is room, else [`OTHER`]. The map holds at most `max + 1` keys.
pub fn bounded_key<'a, V>(map: &HashMap<String, V>, key: &'a str, max: usize) -> &'a str {
    if map.contains_key(key) || map.len() < max {
        key
    } else {
        OTHER
    }
}

#[derive(Default)]
struct Maps {
    by_namespace: HashMap<String, Lookups>,
    by_model: HashMap<String, Lookups>,
}

/// See the module docs.
#[derive(Default)]
pub struct NamespaceLookups {
    maps: Mutex<Maps>,
}

impl NamespaceLookups {
    /// Counts one lookup of `namespace` for `model` with `outcome` (`exact_hit`,
    /// `semantic_hit`, `miss`; anything else is a bypass).
    pub fn count(&self, namespace: &str, model: &str, outcome: &str) {
        let mut m = self.maps.lock();
        let ns = bounded_key(&m.by_namespace, cut(namespace), MAX_LABELS).to_string();
        m.by_namespace.entry(ns).or_default().add(outcome);
        let model = bounded_key(&m.by_model, cut(model), MAX_LABELS).to_string();
        m.by_model.entry(model).or_default().add(outcome);
    }

    /// The counts so far: by namespace, by model.
    pub fn snapshot(&self) -> (BTreeMap<String, Lookups>, BTreeMap<String, Lookups>) {
        let m = self.maps.lock();
        let copy = |h: &HashMap<String, Lookups>| h.iter().map(|(k, v)| (k.clone(), *v)).collect();
        (copy(&m.by_namespace), copy(&m.by_model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_namespace_and_model_and_stays_bounded() {
        let l = NamespaceLookups::default();
        l.count("ns:a", "m1", "exact_hit");
        l.count("ns:a", "m1", "miss");
        l.count("ns:a", "m2", "semantic_hit");
        l.count("ns:b", "m1", "bypass");
        let (ns, models) = l.snapshot();
        assert_eq!(
            ns["ns:a"],
            Lookups {
                exact_hit: 1,
                semantic_hit: 1,
                miss: 1,
                bypass: 0
            }
        );
        assert_eq!(ns["ns:b"].bypass, 1);
        assert_eq!(models["m1"].exact_hit + models["m1"].miss, 2);
        let (exact, semantic) = ns["ns:a"].hit_rates();
        assert!((exact - 1.0 / 3.0).abs() < 1e-12 && (semantic - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(ns["ns:b"].hit_rates(), (0.0, 0.0));

        // A client naming a new namespace and model on every request grows nothing past the
        // bound; what is already known keeps counting under its own name.
        for i in 0..3 * MAX_LABELS {
            l.count(&format!("key:{i}"), &format!("model-{i}"), "miss");
        }
        l.count("ns:a", "m1", "miss");
        let (ns, models) = l.snapshot();
        assert_eq!(ns.len(), MAX_LABELS + 1);
        assert_eq!(models.len(), MAX_LABELS + 1);
        assert_eq!(ns["ns:a"].miss, 2);
        // 2 namespaces were known, so 98 of the 300 new ones got their own key.
        assert_eq!(ns[OTHER].miss, (3 * MAX_LABELS - (MAX_LABELS - 2)) as u64);
        let total: u64 = ns
            .values()
            .map(|c| c.miss + c.exact_hit + c.semantic_hit + c.bypass)
            .sum();
        assert_eq!(total, 4 + 3 * MAX_LABELS as u64 + 1);
        // A long name is cut, so a few keys never hold much either.
        // (an `é` straddles the cut: it goes whole)
        let long = format!("{}é{}", "m".repeat(MAX_LABEL_BYTES - 1), "m".repeat(300));
        let l = NamespaceLookups::default();
        l.count("ns:a", &long, "miss");
        let (_, models) = l.snapshot();
        let key = models.keys().next().unwrap();
        assert!(
            key.len() <= MAX_LABEL_BYTES && long.starts_with(key.as_str()),
            "{key}"
        );
    }
}
