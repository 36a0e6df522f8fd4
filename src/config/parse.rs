//! TOML value → [`RawConfig`], reporting every unknown key and type error instead of the first.
//! serde stops at the first problem, so each problem found is recorded with its field path, the
//! offending value is taken out of the document, and deserialization runs again, until it
//! succeeds. Array elements taken out shift the indices of their later siblings; paths are
//! reported with the indices of the file as written.

use serde_path_to_error::Segment;

use super::raw::RawConfig;
use super::ConfigIssue;

/// More repairs than any hand-written file needs; a bound so a pathological document ends.
const MAX_REPAIRS: usize = 1_000;

#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The array elements taken out of the document, to report later paths in the file's numbering.
#[derive(Debug, Default)]
pub(super) struct Repairs {
    /// (array path, index) in the file's own numbering, for each element taken out.
    removed: Vec<(Vec<Seg>, usize)>,
}

impl Repairs {
    /// A dotted path (`providers[1].kind`) of the repaired document, in the file's numbering.
    pub(super) fn original_path(&self, path: &str) -> String {
        if self.removed.is_empty() {
            return path.to_string();
        }
        let mut segs = Vec::new();
        for part in path.split('.') {
            let mut rest = part;
            if let Some(open) = rest.find('[') {
                segs.push(Seg::Key(rest[..open].to_string()));
                rest = &rest[open..];
                while let Some(inner) = rest.strip_prefix('[') {
                    let Some((n, after)) = inner.split_once(']') else {
                        return path.to_string();
                    };
                    let Ok(i) = n.parse() else {
                        return path.to_string();
                    };
                    segs.push(Seg::Index(i));
                    rest = after;
                }
            } else {
                segs.push(Seg::Key(rest.to_string()));
            }
        }
        display(&to_original(&segs, &self.removed))
    }
}

/// Deserializes `value`, pushing one issue per unknown key or mistyped value onto `issues`.
/// `None` only when a problem could not be taken out (then the issues say what was found).
pub(super) fn raw_config(
    mut value: toml::Value,
    issues: &mut Vec<ConfigIssue>,
) -> Option<(RawConfig, Repairs)> {
    let mut removed: Vec<(Vec<Seg>, usize)> = Vec::new();
    for _ in 0..MAX_REPAIRS {
        let err = match serde_path_to_error::deserialize::<_, RawConfig>(value.clone()) {
            Ok(raw) => return Some((raw, Repairs { removed })),
            Err(e) => e,
        };
        let mut at: Vec<Seg> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                Segment::Map { key } => Some(Seg::Key(key.clone())),
                Segment::Seq { index } => Some(Seg::Index(*index)),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect();
        let message = err.into_inner().message().trim().to_string();
        // The path of an unknown key ends with it; a missing key is reported at its table.
        if let Some(key) = backticked(&message, "unknown field `") {
            if at.last() != Some(&Seg::Key(key.clone())) {
                at.push(Seg::Key(key));
            }
        }
        let original = to_original(&at, &removed);
        let shown = match backticked(&message, "missing field `") {
            Some(field) => {
                let mut p = original.clone();
                p.push(Seg::Key(field));
                p
            }
            None => original.clone(),
        };
        // A required value taken out for its type then shows up as missing: say it once.
        let path = display(&shown);
        if !issues.iter().any(|i| i.path == path) {
            issues.push(ConfigIssue { path, message });
        }
        // A table missing a required field is taken out whole: there is nothing to put in.
        if !take_out(&mut value, &at) {
            return None;
        }
        if let Some((Seg::Index(i), parent)) = original.split_last() {
            removed.push((parent.to_vec(), *i));
        }
    }
    None
}

/// The name between backticks after `prefix` in a serde message.
fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next().map(str::to_string)
}

/// Maps a path in the repaired document back to the file's indices.
fn to_original(at: &[Seg], removed: &[(Vec<Seg>, usize)]) -> Vec<Seg> {
    let mut out: Vec<Seg> = Vec::with_capacity(at.len());
    for seg in at {
        match seg {
            Seg::Key(k) => out.push(Seg::Key(k.clone())),
            Seg::Index(i) => {
                let mut gone: Vec<usize> = removed
                    .iter()
                    .filter(|(parent, _)| *parent == out)
                    .map(|(_, j)| *j)
                    .collect();
                gone.sort_unstable();
                let mut index = *i;
                for j in gone {
                    if j <= index {
                        index += 1;
                    }
                }
                out.push(Seg::Index(index));
            }
        }
    }
    out
}

/// Removes the value at `at`; false when there is nothing there to remove (the whole file).
fn take_out(value: &mut toml::Value, at: &[Seg]) -> bool {
    let Some((last, parent)) = at.split_last() else {
        return false;
    };
    let mut cursor = value;
    for seg in parent {
        let next = match (seg, cursor) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(k),
            (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => cursor = v,
            None => return false,
        }
    }
    match (last, cursor) {
        (Seg::Key(k), toml::Value::Table(t)) => t.remove(k).is_some(),
        (Seg::Index(i), toml::Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

fn display(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    if s.is_empty() {
        "<root>".to_string()
    } else {
        s
    }
}
