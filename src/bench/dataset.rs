//! Labeled datasets for the quality bench (formats in `../shared/datasets/README.md`):
//! **pairs** rows `{"a","b","same"}` and **stream** rows `{"text","class"}`. Texts are
//! normalized exactly as the server normalizes prompts.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use crate::api::canonical::normalize;

#[derive(Debug, Clone, Deserialize)]
pub struct PairRow {
    pub a: String,
    pub b: String,
    pub same: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamRow {
    pub text: String,
    pub class: Option<String>,
}

pub enum Dataset {
    Pairs(Vec<PairRow>),
    Stream(Vec<StreamRow>),
}

impl Dataset {
    pub fn len(&self) -> usize {
        match self {
            Dataset::Pairs(r) => r.len(),
            Dataset::Stream(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Dataset::Pairs(_) => "pairs",
            Dataset::Stream(_) => "stream",
        }
    }

    /// Adds every text of the dataset to `texts`, in file order (`a` before `b`).
    pub fn add_texts(&self, texts: &mut Texts) {
        match self {
            Dataset::Pairs(rows) => {
                for r in rows {
                    texts.add(&r.a);
                    texts.add(&r.b);
                }
            }
            Dataset::Stream(rows) => {
                for r in rows {
                    texts.add(&r.text);
                }
            }
        }
    }
}

/// Reads a JSONL file, detecting the format from the first row. `limit` keeps the first rows.
pub fn load(path: &Path, limit: Option<usize>) -> anyhow::Result<Dataset> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open dataset {}: {e}", path.display()))?;
    let reader = std::io::BufReader::new(file);
    let mut pairs = Vec::new();
    let mut stream = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        if limit.is_some_and(|l| pairs.len() + stream.len() >= l) {
            break;
        }
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: not JSON: {e}", path.display(), i + 1))?;
        if value.get("a").is_some() {
            let mut row: PairRow = serde_json::from_value(value).map_err(|e| {
                anyhow::anyhow!("{}:{}: not a pairs row: {e}", path.display(), i + 1)
            })?;
            row.a = normalize(&row.a);
            row.b = normalize(&row.b);
            pairs.push(row);
        } else {
            let mut row: StreamRow = serde_json::from_value(value).map_err(|e| {
                anyhow::anyhow!("{}:{}: not a stream row: {e}", path.display(), i + 1)
            })?;
            row.text = normalize(&row.text);
            stream.push(row);
        }
    }
    match (pairs.is_empty(), stream.is_empty()) {
        (false, true) => Ok(Dataset::Pairs(pairs)),
        (true, false) => Ok(Dataset::Stream(stream)),
        (true, true) => anyhow::bail!("dataset {} has no rows", path.display()),
        (false, false) => anyhow::bail!("dataset {} mixes pairs and stream rows", path.display()),
    }
}

/// Distinct texts in first-seen order, with an index for each.
#[derive(Default)]
pub struct Texts {
    pub list: Vec<String>,
    pub ids: HashMap<String, usize>,
}

impl Texts {
    pub fn add(&mut self, t: &str) -> usize {
        if let Some(&i) = self.ids.get(t) {
            return i;
        }
        self.list.push(t.to_string());
        self.ids.insert(t.to_string(), self.list.len() - 1);
        self.list.len() - 1
    }

    pub fn id(&self, t: &str) -> Option<usize> {
        self.ids.get(t).copied()
    }
}

/// Union-find over texts known to mean the same (transitive closure of `same=true` pairs).
pub struct SameClasses {
    parent: Vec<usize>,
}

impl SameClasses {
    pub fn new(n: usize) -> SameClasses {
        SameClasses {
            parent: (0..n).collect(),
        }
    }

    pub fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    pub fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[ra] = rb;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_and_normalizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        std::fs::write(&p, "{\"a\":\" x  y\",\"b\":\"z\",\"same\":true}\n\n{\"a\":\"q\",\"b\":\"r\",\"same\":false}\n").unwrap();
        match load(&p, None).unwrap() {
            Dataset::Pairs(r) => {
                assert_eq!(r.len(), 2);
                assert_eq!(r[0].a, "x y");
            }
            Dataset::Stream(_) => panic!("pairs expected"),
        }
        let s = dir.path().join("s.jsonl");
        std::fs::write(
            &s,
            "{\"text\":\"hi\",\"class\":null}\n{\"text\":\"yo\",\"class\":\"greet\"}\n",
        )
        .unwrap();
        assert!(matches!(load(&s, Some(1)).unwrap(), Dataset::Stream(r) if r.len() == 1));
        std::fs::write(&s, "{\"text\":1}\n").unwrap();
        assert!(load(&s, None).is_err());
    }

    #[test]
    fn same_classes_are_transitive() {
        let mut c = SameClasses::new(4);
        c.union(0, 1);
        c.union(1, 2);
        assert_eq!(c.find(0), c.find(2));
        assert_ne!(c.find(0), c.find(3));
    }
}
