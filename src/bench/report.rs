//! Bench results: one row per threshold, the recommended threshold for a target precision, and
//! the files a person opens (`report.json`, `report.csv`, `report.svg`) plus a printed table.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

/// Raw counts at one threshold.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    pub queries: u64,
    pub hits: u64,
    pub correct_hits: u64,
    /// Queries that had a right answer available (denominator of recall).
    pub positives: u64,
    /// Lookups whose candidate the lexical verifier had to judge (between the bars).
    pub verifier_calls: u64,
    /// Lookups that would have gone to the LLM judge (uncertain; a miss here).
    pub judge_calls: u64,
    /// Lookups whose candidate the verifier model scored.
    pub model_calls: u64,
}

impl Tally {
    /// Counts the verifier's and the judge's work in one decision.
    pub fn count(&mut self, decision: &crate::cache::verify::Decision) {
        use crate::cache::verify::{Decision, MissReason, Verified};
        match decision {
            Decision::Hit {
                verified: Verified::Lexical | Verified::Model | Verified::Judge,
                ..
            }
            | Decision::Miss(MissReason::Unverified) => self.verifier_calls += 1,
            Decision::Uncertain { .. } => {
                self.verifier_calls += 1;
                self.judge_calls += 1;
            }
            _ => {}
        }
    }

    pub fn row(&self, threshold: f32) -> Row {
        let q = self.queries.max(1) as f64;
        let false_hits = self.hits - self.correct_hits;
        let precision = if self.hits == 0 {
            1.0
        } else {
            self.correct_hits as f64 / self.hits as f64
        };
        let recall = if self.positives == 0 {
            0.0
        } else {
            self.correct_hits as f64 / self.positives as f64
        };
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Row {
            threshold: (threshold as f64 * 1000.0).round() / 1000.0,
            hit_rate: self.hits as f64 / q,
            precision,
            recall,
            f1,
            false_hits_per_1k: false_hits as f64 * 1000.0 / q,
            hits: self.hits,
            false_hits,
            queries: self.queries,
            verifier_calls_per_1k: self.verifier_calls as f64 * 1000.0 / q,
            judge_calls_per_1k: self.judge_calls as f64 * 1000.0 / q,
            model_calls_per_1k: self.model_calls as f64 * 1000.0 / q,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub threshold: f64,
    pub hit_rate: f64,
    /// Share of served hits that were right (1.0 when nothing was served).
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub false_hits_per_1k: f64,
    pub hits: u64,
    pub false_hits: u64,
    pub queries: u64,
    pub verifier_calls_per_1k: f64,
    pub judge_calls_per_1k: f64,
    pub model_calls_per_1k: f64,
}

/// A hit the configured rule served wrongly (by the dataset's labels), for auditing: written
/// to `false-hits.jsonl`, most similar first.
#[derive(Debug, Clone, Serialize)]
pub struct FalseHit {
    pub query: String,
    pub served: String,
    pub similarity: f32,
}

impl FalseHit {
    pub fn new(query: &str, served: &str, similarity: f32) -> FalseHit {
        FalseHit {
            query: query.to_string(),
            served: served.to_string(),
            similarity: (similarity * 10_000.0).round() / 10_000.0,
        }
    }
}

/// Writes false hits as JSON Lines, most similar first.
pub fn write_false_hits(dir: &Path, mut hits: Vec<FalseHit>) -> anyhow::Result<()> {
    hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    let mut out = String::new();
    for h in &hits {
        out.push_str(&serde_json::to_string(h)?);
        out.push('\n');
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("false-hits.jsonl"), out)?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommended {
    pub threshold: f64,
    pub precision: f64,
    pub hit_rate: f64,
}

/// The decision rule the config ships, scored on this dataset: exactly what the server would
/// serve (threshold for the `--model`, guards as configured).
#[derive(Debug, Clone, Serialize)]
pub struct Configured {
    pub threshold: f64,
    pub verified_threshold: f64,
    pub guards: bool,
    /// Lookups per 1,000 whose candidate the lexical verifier judged.
    pub verifier_calls_per_1k: f64,
    /// Lookups per 1,000 that a configured LLM judge would be asked about (counted as misses).
    pub judge_calls_per_1k: f64,
    /// Lookups per 1,000 whose candidate the verifier model scored (0 without a model).
    pub model_calls_per_1k: f64,
    pub hit_rate: f64,
    pub precision: f64,
    pub hits: u64,
    pub false_hits: u64,
    pub queries: u64,
}

impl Configured {
    pub fn new(rule: super::Rule, row: Row) -> Configured {
        Configured {
            threshold: (rule.threshold as f64 * 1000.0).round() / 1000.0,
            verified_threshold: (rule.verified_threshold as f64 * 1000.0).round() / 1000.0,
            guards: rule.guards,
            verifier_calls_per_1k: row.verifier_calls_per_1k,
            judge_calls_per_1k: row.judge_calls_per_1k,
            model_calls_per_1k: row.model_calls_per_1k,
            hit_rate: row.hit_rate,
            precision: row.precision,
            hits: row.hits,
            false_hits: row.false_hits,
            queries: row.queries,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dataset: String,
    pub protocol: String,
    pub model: String,
    pub guards: bool,
    pub target_precision: f64,
    pub rows: Vec<Row>,
    /// The lexical verifier's sweep: `verified_threshold` (in `threshold`) with the configured
    /// `threshold`.
    pub verified_rows: Vec<Row>,
    /// The lowest threshold from which every stricter threshold also reaches the target
    /// precision (precision is not monotonic in the threshold; this never recommends a
    /// threshold that sits in a dip). `null` when no threshold reaches it.
    pub recommended: Option<Recommended>,
    /// The shipped decision rule's figures (`deja bench --config FILE`).
    pub configured: Option<Configured>,
    /// Replay only: share of prompts whose class had been seen before (the best possible hit rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<f64>,
    pub rows_in_dataset: usize,
    /// Time the guards and the lexical verifier add to a semantic lookup (µs, p50 / p99).
    pub verifier_us_p50: f64,
    pub verifier_us_p99: f64,
    /// Time the verifier model adds to a lookup it scores (µs, p50 / p99); absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_us_p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_us_p99: Option<f64>,
    pub wall_seconds: f64,
    pub embed_seconds: f64,
}

pub fn recommend(rows: &[Row], target: f64) -> Option<Recommended> {
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by(|a, b| b.threshold.total_cmp(&a.threshold));
    let mut best = None;
    for r in sorted {
        if r.precision < target {
            break;
        }
        if r.hits > 0 {
            best = Some(Recommended {
                threshold: r.threshold,
                precision: r.precision,
                hit_rate: r.hit_rate,
            });
        }
    }
    best
}

impl Report {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "dataset {} · protocol {} · model {} · guards {}",
            self.dataset,
            self.protocol,
            self.model,
            if self.guards { "on" } else { "off" }
        );
        let _ = writeln!(
            s,
            "threshold  hit_rate  precision  recall     f1  false_hits/1k     hits"
        );
        let line = |s: &mut String, r: &Row| {
            let _ = writeln!(
                s,
                "{:>9.3}  {:>8.4}  {:>9.4}  {:>6.4}  {:>5.3}  {:>13.2}  {:>7}",
                r.threshold, r.hit_rate, r.precision, r.recall, r.f1, r.false_hits_per_1k, r.hits
            );
        };
        for r in &self.rows {
            line(&mut s, r);
        }
        if !self.verified_rows.is_empty() {
            let _ = writeln!(
                s,
                "lexical verifier sweep (verified_threshold, with the configured threshold):"
            );
            for r in &self.verified_rows {
                line(&mut s, r);
            }
        }
        if let Some(c) = self.ceiling {
            let _ = writeln!(s, "ceiling (prompts whose class was seen before): {c:.4}");
        }
        let _ = writeln!(
            s,
            "guards + lexical verifier per candidate: {:.1} µs p50, {:.1} µs p99",
            self.verifier_us_p50, self.verifier_us_p99
        );
        if let (Some(p50), Some(p99)) = (self.model_us_p50, self.model_us_p99) {
            let _ = writeln!(
                s,
                "verifier model per scored candidate: {p50:.1} µs p50, {p99:.1} µs p99"
            );
        }
        if let Some(c) = &self.configured {
            let _ = writeln!(
                s,
                "configured rule (threshold {:.3}, verified_threshold {:.3}, guards {}): hit rate {:.4}, precision {:.4}, {} hits, {} false; verifier calls {:.1}/1k lookups, model calls {:.1}/1k, judge calls {:.1}/1k",
                c.threshold,
                c.verified_threshold,
                if c.guards { "on" } else { "off" },
                c.hit_rate,
                c.precision,
                c.hits,
                c.false_hits,
                c.verifier_calls_per_1k,
                c.model_calls_per_1k,
                c.judge_calls_per_1k
            );
        }
        match &self.recommended {
            Some(r) => {
                let _ = writeln!(
                    s,
                    "recommended threshold for precision ≥ {}: {:.3} (precision {:.4}, hit rate {:.4})",
                    self.target_precision, r.threshold, r.precision, r.hit_rate
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "no threshold reaches precision ≥ {}",
                    self.target_precision
                );
            }
        }
        let _ = writeln!(
            s,
            "wall time {:.1}s (embedding {:.1}s)",
            self.wall_seconds, self.embed_seconds
        );
        s
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        let mut csv = String::from(
            "threshold,hit_rate,precision,recall,f1,false_hits_per_1k,hits,false_hits,queries\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                csv,
                "{},{:.6},{:.6},{:.6},{:.6},{:.4},{},{},{}",
                r.threshold,
                r.hit_rate,
                r.precision,
                r.recall,
                r.f1,
                r.false_hits_per_1k,
                r.hits,
                r.false_hits,
                r.queries
            );
        }
        std::fs::write(dir.join("report.csv"), csv)?;
        std::fs::write(dir.join("report.svg"), self.svg())?;
        Ok(())
    }

    /// Hit rate, precision and false-hit rate against the threshold, as a standalone SVG.
    pub fn svg(&self) -> String {
        let (w, h, left, right, top, bottom) = (760.0, 440.0, 70.0, 170.0, 40.0, 60.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let (tmin, tmax) = self.rows.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| {
            (lo.min(r.threshold), hi.max(r.threshold))
        });
        let span = if tmax > tmin { tmax - tmin } else { 1.0 };
        let x = |t: f64| left + (t - tmin) / span * pw;
        let y = |v: f64| top + (1.0 - v.clamp(0.0, 1.0)) * ph;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{} · {} · {} · guards {}</text>"#,
            left + pw / 2.0,
            xml(&self.dataset),
            xml(&self.protocol),
            xml(&self.model),
            if self.guards { "on" } else { "off" }
        );
        for i in 0..=10 {
            let v = i as f64 / 10.0;
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#ddd"/>"##,
                left + pw,
                y(v),
                y(v)
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{v:.1}</text>"#,
                left - 6.0,
                y(v) + 4.0
            );
        }
        for r in self.rows.iter().step_by((self.rows.len() / 10).max(1)) {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{:.2}</text>"#,
                x(r.threshold),
                top + ph + 18.0,
                r.threshold
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">threshold (cosine similarity; higher = stricter)</text>"#,
            left + pw / 2.0,
            h - 15.0
        );
        type Series = (&'static str, &'static str, fn(&Row) -> f64);
        let series: [Series; 3] = [
            ("hit rate", "#1f77b4", |r| r.hit_rate),
            ("precision", "#2ca02c", |r| r.precision),
            ("false-hit rate", "#d62728", |r| {
                r.false_hits_per_1k / 1000.0
            }),
        ];
        for (i, (name, color, f)) in series.iter().enumerate() {
            let pts: Vec<String> = self
                .rows
                .iter()
                .map(|r| format!("{:.1},{:.1}", x(r.threshold), y(f(r))))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
            let ly = top + 20.0 + i as f64 * 20.0;
            let _ = writeln!(
                s,
                r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/>"#,
                left + pw + 15.0,
                left + pw + 40.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}">{name}</text>"#,
                left + pw + 46.0,
                ly + 4.0
            );
        }
        if let Some(rec) = &self.recommended {
            let _ = writeln!(
                s,
                r##"<line x1="{0}" x2="{0}" y1="{top}" y2="{1}" stroke="#555" stroke-dasharray="4 3"/>"##,
                x(rec.threshold),
                top + ph
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}">recommended {:.3}</text>"#,
                left + pw + 15.0,
                top + 100.0,
                rec.threshold
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: f64, precision: f64, hits: u64) -> Row {
        Row {
            threshold: t,
            hit_rate: hits as f64 / 100.0,
            precision,
            recall: 0.0,
            f1: 0.0,
            false_hits_per_1k: 0.0,
            hits,
            false_hits: 0,
            queries: 100,
            verifier_calls_per_1k: 0.0,
            judge_calls_per_1k: 0.0,
            model_calls_per_1k: 0.0,
        }
    }

    #[test]
    fn tally_rates() {
        let r = Tally {
            queries: 1000,
            hits: 100,
            correct_hits: 90,
            positives: 300,
            verifier_calls: 250,
            judge_calls: 0,
            model_calls: 0,
        }
        .row(0.9);
        assert!((r.verifier_calls_per_1k - 250.0).abs() < 1e-9);
        assert!((r.precision - 0.9).abs() < 1e-9);
        assert!((r.recall - 0.3).abs() < 1e-9);
        assert!((r.false_hits_per_1k - 10.0).abs() < 1e-9);
        assert!((r.hit_rate - 0.1).abs() < 1e-9);
    }

    #[test]
    fn recommendation_never_sits_in_a_dip() {
        let rows = vec![
            row(0.8, 0.95, 50),
            row(0.85, 0.995, 40),
            row(0.9, 0.98, 30),
            row(0.95, 0.999, 10),
            row(0.99, 1.0, 2),
        ];
        let rec = recommend(&rows, 0.99).unwrap();
        assert_eq!(
            rec.threshold, 0.95,
            "0.85 passes but 0.90 above it does not"
        );
        assert!(recommend(&[row(0.9, 0.5, 10)], 0.99).is_none());
    }

    #[test]
    fn files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let rep = Report {
            dataset: "d".into(),
            protocol: "pairwise".into(),
            model: "m".into(),
            guards: true,
            target_precision: 0.99,
            rows: vec![row(0.9, 1.0, 3), row(0.95, 1.0, 1)],
            recommended: None,
            verified_rows: vec![row(0.9, 1.0, 2)],
            configured: Some(Configured::new(
                crate::bench::Rule {
                    threshold: 0.95,
                    verified_threshold: 0.9,
                    guards: true,
                    judge_floor: None,
                    model: None,
                },
                row(0.95, 1.0, 1),
            )),
            ceiling: None,
            rows_in_dataset: 10,
            verifier_us_p50: 1.0,
            verifier_us_p99: 2.0,
            model_us_p50: None,
            model_us_p99: None,
            wall_seconds: 1.0,
            embed_seconds: 0.5,
        };
        rep.write(dir.path()).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["rows"][0]["threshold"], 0.9);
        assert_eq!(json["configured"]["threshold"], 0.95);
        assert_eq!(json["configured"]["hits"], 1);
        assert!(rep
            .table()
            .contains("configured rule (threshold 0.950, verified_threshold 0.900, guards on)"));
        assert_eq!(json["configured"]["verified_threshold"], 0.9);
        assert_eq!(json["verified_rows"][0]["threshold"], 0.9);
        assert!(std::fs::read_to_string(dir.path().join("report.svg"))
            .unwrap()
            .contains("<polyline"));
        assert!(
            std::fs::read_to_string(dir.path().join("report.csv"))
                .unwrap()
                .lines()
                .count()
                == 3
        );
    }
}
