//! Who may see what, and what clients can make deja export (issue 12): a namespace is shared
//! only between the keys the operator granted it, metric labels never take a value a client
//! sent, and `Cache-Control: no-cache` is never answered from an identical miss in flight.

mod common;

use std::time::Duration;

use common::harness::{client, hash_model, Deja, Reply};
use common::mock_upstream::MockUpstream;
use deja::config::KeyHash;
use futures::StreamExt;
use serde_json::{json, Value};

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// `[[cache.namespaces]]` granting `name` to `keys`, for the harness's `[cache]` section.
fn grant(name: &str, keys: &[&str]) -> String {
    let hashes: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{}\"", KeyHash::of(k)))
        .collect();
    format!(
        "[[cache.namespaces]]\nname = \"{name}\"\nkeys = [{}]\n",
        hashes.join(", ")
    )
}

async fn ask(d: &Deja, key: Option<&str>, namespace: Option<&str>, body: &Value) -> Reply {
    let mut req = client().post(d.url("/v1/chat/completions")).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(ns) = namespace {
        req = req.header("x-deja-namespace", ns);
    }
    Reply::read(req.send().await.unwrap()).await
}

async fn metrics_text(d: &Deja) -> String {
    client()
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn issue12_namespace_answers_need_a_grant() {
    let mock = MockUpstream::start().await;
    let d = Deja::start_with(
        &mock.base_url(),
        hash_model(),
        &grant("team-a", &["key-a"]),
        "",
    )
    .await;
    let q = chat("gpt-4o-mini", "what is team a's plan");
    let a = ask(&d, Some("key-a"), Some("team-a"), &q).await;
    assert_eq!((a.status, a.header("x-deja-cache")), (200, "miss"));
    d.wait_entries(1).await;
    assert_eq!(
        ask(&d, Some("key-a"), Some("team-a"), &q)
            .await
            .header("x-deja-cache"),
        "exact-hit"
    );

    // Another key, and no key at all, are refused the namespace: 403, OpenAI-shaped.
    for key in [Some("key-b"), None] {
        let r = ask(&d, key, Some("team-a"), &q).await;
        assert_eq!(r.status, 403, "{key:?}: {}", r.text);
        assert_eq!(
            r.body["error"]["type"], "invalid_request_error",
            "{}",
            r.text
        );
        assert_eq!(
            r.body["error"]["code"], "namespace_not_granted",
            "{}",
            r.text
        );
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("team-a"),
            "{}",
            r.text
        );
        assert!(!r.text.contains("Answer #"), "{}", r.text);
    }
    // Without the header, key B has its own scope: a miss, not team-a's answer.
    let b = ask(&d, Some("key-b"), None, &q).await;
    assert_eq!(b.header("x-deja-cache"), "miss");
    assert_ne!(b.content(), a.content());
    assert_eq!(mock.calls(), 2);

    // Namespaces are never metric labels.
    let text = metrics_text(&d).await;
    assert!(!text.contains("team-a"), "{text}");
    d.stop().await;

    // With a grant for both keys, they share.
    let mock = MockUpstream::start().await;
    let extra = grant("team-a", &["key-a", "key-b"]);
    let d = Deja::start_with(&mock.base_url(), hash_model(), &extra, "").await;
    let a = ask(&d, Some("key-a"), Some("team-a"), &q).await;
    assert_eq!(a.header("x-deja-cache"), "miss");
    d.wait_entries(1).await;
    let b = ask(&d, Some("key-b"), Some("team-a"), &q).await;
    assert_eq!(b.header("x-deja-cache"), "exact-hit");
    assert_eq!(b.content(), a.content());
    assert_eq!(mock.calls(), 1);
    assert!(!metrics_text(&d).await.contains("team-a"));
}

/// Checks every line of a Prometheus text exposition: `# HELP`/`# TYPE` comments, or
/// `name{label="value",...} number` with only `\\`, `\"` and `\n` escaped in values.
fn assert_well_formed(text: &str) {
    assert!(
        !text.contains('\r'),
        "a raw carriage return in the exposition"
    );
    for line in text.lines() {
        let ok =
            line.starts_with("# HELP ") || line.starts_with("# TYPE ") || sample(line).is_some();
        assert!(ok, "malformed exposition line: {line:?}");
    }
}

/// `Some` for a well-formed sample line.
fn sample(line: &str) -> Option<()> {
    let name_end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))?;
    if name_end == 0 || line.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    let mut rest = &line[name_end..];
    if let Some(labels) = rest.strip_prefix('{') {
        let mut chars = labels.char_indices().peekable();
        let end = loop {
            let mut name = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if !(c.is_ascii_alphanumeric() || c == '_') {
                    break;
                }
                name.push(c);
                chars.next();
            }
            if name.is_empty() || chars.next()?.1 != '=' || chars.next()?.1 != '"' {
                return None;
            }
            loop {
                match chars.next()?.1 {
                    // Only `\\`, `\"` and `\n` may follow a backslash.
                    '\\' if !matches!(chars.next()?.1, '\\' | '"' | 'n') => return None,
                    '"' => break,
                    '\n' => return None,
                    _ => {}
                }
            }
            match chars.next()? {
                (_, ',') if chars.peek().map(|&(_, c)| c) == Some('}') => break chars.next()?.0,
                (_, ',') => continue,
                (i, '}') => break i,
                _ => return None,
            }
        };
        rest = &labels[end + 1..];
    }
    let value = rest.strip_prefix(' ')?.split(' ').next()?;
    (value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value)).then_some(())
}

fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#')).count()
}

#[tokio::test]
async fn issue12_metric_labels_take_no_client_values() {
    let mock = MockUpstream::start().await;
    let prices =
        "\n[[prices]]\nmodel = \"gpt-4o-mini*\"\ninput_per_mtok = 0.15\noutput_per_mtok = 0.60\n";
    let d = Deja::start_with(&mock.base_url(), hash_model(), "", prices).await;

    // Every kind of outcome once: misses and hits (priced and not), a refused namespace.
    for model in ["gpt-4o-mini", "llama3"] {
        ask(&d, Some("k"), None, &chat(model, "warm up")).await;
    }
    d.wait_entries(2).await;
    for model in ["gpt-4o-mini", "llama3"] {
        let hit = ask(&d, Some("k"), None, &chat(model, "warm up")).await;
        assert_eq!(hit.header("x-deja-cache"), "exact-hit");
    }
    let refused = ask(&d, Some("k"), Some("nobody"), &chat("x", "q")).await;
    assert_eq!(refused.status, 403);
    d.settle().await;
    let before = metrics_text(&d).await;
    assert_well_formed(&before);

    // Then thousands of distinct, hostile model names and namespaces.
    let hostile = [
        "\r",
        "\n",
        "\r\n# TYPE evil counter\r\n",
        "\"",
        "\\",
        "\\\"}",
        "\u{0}",
        "\u{7f}",
        "é",
        "\u{202e}",
        "{a=\"b\"}",
        " 1e9",
    ];
    let d = &d;
    let models: Vec<String> = (0..1_500)
        .map(|i| format!("gpt-4o-mini{}{i}", hostile[i % hostile.len()]))
        .chain((0..500).map(|i| format!("m{}{i}", hostile[i % hostile.len()])))
        .collect();
    let statuses: Vec<u16> = futures::stream::iter(models.iter().enumerate())
        .map(|(i, model)| async move {
            let ns = (i % 4 == 0).then(|| format!("team-{i}"));
            ask(d, Some("k"), ns.as_deref(), &chat(model, "same question"))
                .await
                .status
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "{statuses:?}"
    );
    assert!(statuses.iter().filter(|s| **s == 200).count() > 1_000);
    // Hits on some of them too.
    for model in models.iter().skip(1).step_by(97) {
        ask(d, Some("k"), None, &chat(model, "same question")).await;
    }
    d.settle().await;
    let after = metrics_text(d).await;
    assert_well_formed(&after);
    let names = |t: &str| -> std::collections::BTreeSet<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_string())
            .collect()
    };
    let grown: Vec<String> = names(&after).difference(&names(&before)).cloned().collect();
    assert!(
        grown.is_empty() && series(&after) == series(&before),
        "the series grew with client-chosen values: {grown:#?}"
    );
    assert!(after.len() < 64 * 1024, "/metrics is {} bytes", after.len());
    for leaked in ["team-", "gpt-4o-mini1", "m1", "evil"] {
        assert!(
            !after.contains(leaked),
            "{leaked} reached /metrics:\n{after}"
        );
    }
    // The figures still add up under the labels the config names.
    assert!(
        after.contains("deja_tokens_upstream_total{kind=\"prompt\",model=\"gpt-4o-mini*\"}"),
        "{after}"
    );
    assert!(
        after.contains("deja_tokens_upstream_total{kind=\"prompt\",model=\"*\"}"),
        "{after}"
    );
}

#[tokio::test]
async fn issue12_no_cache_is_not_answered_by_an_identical_miss_in_flight() {
    let mock = MockUpstream::builder()
        .with_latency(Duration::from_millis(400))
        .start()
        .await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let q = chat("gpt-4o-mini", "fresh please");
    let leader = {
        let url = d.url("/v1/chat/completions");
        let q = q.clone();
        tokio::spawn(async move {
            let r = client().post(url).bearer_auth("k").json(&q).send().await;
            Reply::read(r.unwrap()).await
        })
    };
    // Until the leader's flight is registered (it is waiting on the slow upstream).
    let started = std::time::Instant::now();
    while d.state.0.singleflight.in_flight() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "leader never in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fresh = client()
        .post(d.url("/v1/chat/completions"))
        .bearer_auth("k")
        .header("cache-control", "no-cache")
        .json(&q)
        .send()
        .await
        .unwrap();
    let fresh = Reply::read(fresh).await;
    let leader = leader.await.unwrap();
    assert_eq!(leader.header("x-deja-cache"), "miss");
    assert_eq!(
        fresh.header("x-deja-cache"),
        "miss",
        "no-cache was answered from the leader: {}",
        fresh.text
    );
    assert_eq!(mock.calls(), 2);
    assert_ne!(fresh.content(), leader.content());
    // A plain follower still waits for the leader and reads its entry.
    d.settle().await;
    let again = ask(&d, Some("k"), None, &q).await;
    assert_eq!(again.header("x-deja-cache"), "exact-hit");
    assert_eq!(mock.calls(), 2);
}
