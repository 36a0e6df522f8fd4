//! Issue 17: the admin listener. Its token, its separation from the public listener, explain
//! against what a real request then does, delete and purge under concurrent traffic, stats,
//! reload, and export → import onto a fresh store.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::harness::{client, config_text, hash_model, Deja, Reply};
use common::mock_upstream::MockUpstream;
use serde_json::{json, Value};

const TOKEN: &str = "admin-s3cret-token";

fn chat(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}

async fn ask(d: &Deja, text: &str) -> Reply {
    d.post(
        "/v1/chat/completions",
        &chat(text),
        &[("authorization", "Bearer k")],
    )
    .await
}

/// deja with `[admin]` on port 0 and the token in its environment; `admin_extra` goes into
/// the `[admin]` block, `cache_extra` into `[cache]`.
async fn start(upstream: &str, cache_extra: &str, admin_extra: &str) -> (Deja, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(&tmp.path().join("store"), upstream, cache_extra, "")
        + &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"T17\"\n{admin_extra}\n");
    let file = tmp.path().join("deja.toml");
    let env = vec![("T17".to_string(), TOKEN.to_string())];
    let d = Deja::start_config_env(&text, tmp.path(), hash_model(), Some(file), env).await;
    (d, tmp)
}

fn admin(d: &Deja, path: &str) -> String {
    format!("{}{path}", d.admin.as_deref().expect("admin listener"))
}

async fn get(d: &Deja, path: &str) -> (u16, Value) {
    let r = client()
        .get(admin(d, path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(d: &Deja, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(admin(d, path))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn explain(d: &Deja, text: &str, headers: Value) -> Value {
    let mut h = json!({"authorization": "Bearer k"});
    for (k, v) in headers.as_object().unwrap() {
        h[k] = v.clone();
    }
    let (status, v) = post(
        d,
        "/admin/explain",
        &json!({"body": chat(text), "headers": h}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn issue17_admin_needs_its_token_and_nothing_of_it_is_on_the_public_port() {
    let mock = MockUpstream::start().await;
    let (d, tmp) = start(&mock.base_url(), "", "metrics = true").await;
    ask(&d, "hello there").await;
    let c = client();
    for path in ["/admin/stats", "/admin/dashboard.json", "/metrics"] {
        let none = c.get(admin(&d, path)).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path} without a token");
        let wrong = c
            .get(admin(&d, path))
            .bearer_auth("admin-s3cret-tokeN")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let body: Value = wrong.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
        assert!(!body.to_string().contains(TOKEN));
        let ok = c
            .get(admin(&d, path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{path} with the token");
    }
    let deletes = c
        .delete(admin(&d, "/admin/entries/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(deletes.status(), 401);
    let purge = c
        .post(admin(&d, "/admin/purge"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 401);
    d.settle().await;
    assert_eq!(d.entries(), 1, "an unauthorized purge removed nothing");

    // Nothing of the admin API on the public listener; /metrics moved.
    for path in ["/admin/stats", "/admin/", "/admin/explain", "/metrics"] {
        let r = c.get(d.url(path)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 404, "public {path}");
    }
    // ...and no proxy on the admin listener.
    let r = c
        .post(admin(&d, "/v1/chat/completions"))
        .bearer_auth(TOKEN)
        .json(&chat("hello there"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let metrics = c
        .get(admin(&d, "/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("deja_requests_total"), "{metrics}");
    // The page is served (it holds no data) and asks for the token itself.
    let page = c.get(admin(&d, "/admin/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/admin/dashboard.json"));

    // Reload applies a changed file now.
    let file = tmp.path().join("deja.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("threshold = 0.95", "threshold = 0.97");
    std::fs::write(&file, text).unwrap();
    let (status, v) = post(&d, "/admin/reload", &json!({})).await;
    assert_eq!(status, 200, "{v}");
    let e = explain(&d, "hello there", json!({})).await;
    assert_eq!(
        e["plan"]["rule"]["threshold"].as_f64().unwrap() as f32,
        0.97
    );
    d.stop().await;
}

#[tokio::test]
async fn issue17_admin_without_its_token_variable_does_not_start() {
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(&tmp.path().join("store"), "http://127.0.0.1:9", "", "")
        + "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"T17_UNSET_FOR_THIS_TEST\"\n";
    let config =
        deja::config::Config::from_toml_str(&text, Vec::<(String, String)>::new(), tmp.path())
            .unwrap();
    let err = deja::server::Server::bind_env(config, None, &|_| None)
        .await
        .err()
        .expect("no token, no admin listener");
    assert!(err.to_string().contains("T17_UNSET_FOR_THIS_TEST"), "{err}");
}

/// What explain says, then what the same request does: outcome and entry agree, and explain
/// itself called nothing upstream and stored nothing.
async fn agree(d: &Deja, mock: &MockUpstream, text: &str, headers: Value) -> Value {
    let calls = mock.calls();
    let entries = d.entries();
    let e = explain(d, text, headers.clone()).await;
    assert_eq!(mock.calls(), calls, "explain called upstream: {e}");
    d.settle().await;
    assert_eq!(d.entries(), entries, "explain stored something: {e}");
    let mut merged = json!({"authorization": "Bearer k"});
    for (k, v) in headers.as_object().unwrap() {
        merged[k] = v.clone();
    }
    let mut req = client()
        .post(d.url("/v1/chat/completions"))
        .json(&chat(text));
    for (k, v) in merged.as_object().unwrap() {
        req = req.header(k, v.as_str().unwrap());
    }
    let real = Reply::read(req.send().await.unwrap()).await;
    let decision = &e["decision"];
    assert_eq!(
        decision["outcome"].as_str().unwrap(),
        real.header("x-deja-cache"),
        "explain {e} vs real {:?}",
        real.headers
    );
    if real.header("x-deja-cache").ends_with("-hit") {
        assert_eq!(
            decision["entry"].as_u64().unwrap().to_string(),
            real.header("x-deja-entry"),
            "{e}"
        );
    }
    d.settle().await;
    e
}

#[tokio::test]
async fn issue17_explain_matches_what_a_real_request_then_does() {
    let mock = MockUpstream::start().await;
    let (d, _tmp) = start(&mock.base_url(), "threshold = 0.8", "").await;
    let first = agree(&d, &mock, "remember me", json!({})).await;
    assert_eq!(first["decision"]["reason"], "no candidate in this scope");
    assert_eq!(first["scope"].as_str().unwrap().len(), 32);
    assert_eq!(first["exact_key"].as_str().unwrap().len(), 96);
    let exact = agree(&d, &mock, "remember me", json!({})).await;
    assert_eq!(exact["decision"]["outcome"], "exact-hit");
    let near = agree(&d, &mock, "remember me too", json!({})).await;
    assert_eq!(near["decision"]["outcome"], "semantic-hit", "{near}");
    let top = near["candidates"].as_array().unwrap();
    assert!(!top.is_empty() && top[0]["similarity"].as_f64().unwrap() >= 0.8);
    assert_eq!(top[0]["guard"], "pass");
    // A number guard turns a close candidate away, in explain and in the request alike.
    agree(&d, &mock, "order 3 pizzas for the office party", json!({})).await;
    let vetoed = agree(&d, &mock, "order 4 pizzas for the office party", json!({})).await;
    assert_eq!(vetoed["decision"]["outcome"], "miss", "{vetoed}");
    assert_eq!(vetoed["candidates"][0]["guard"], "numbers", "{vetoed}");
    // Another tenant is another scope: nothing to find.
    let other = agree(
        &d,
        &mock,
        "remember me",
        json!({"authorization": "Bearer other-key"}),
    )
    .await;
    assert_ne!(other["scope"], exact["scope"]);
    // A tightened threshold and no-cache are the request's own.
    let tight = agree(
        &d,
        &mock,
        "remember me too!",
        json!({"x-deja-threshold": "0.999"}),
    )
    .await;
    assert_eq!(
        tight["plan"]["rule"]["threshold"].as_f64().unwrap() as f32,
        0.999
    );
    let refresh = agree(
        &d,
        &mock,
        "remember me",
        json!({"cache-control": "no-cache"}),
    )
    .await;
    assert_eq!(refresh["plan"]["read"], false);
    // Bad input is a 400 naming the field, with no upstream call.
    let calls = mock.calls();
    let (status, v) = post(
        &d,
        "/admin/explain",
        &json!({"path": "/v1/embeddings", "body": {}}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("path")),
        "{v}"
    );
    let (status, _) = post(&d, "/admin/explain", &json!({"body": {"model": "m"}})).await;
    assert_eq!(status, 400);
    assert_eq!(mock.calls(), calls);
    d.stop().await;
}

#[tokio::test]
async fn issue17_deleted_and_purged_entries_are_never_served_again_under_traffic() {
    let mock = MockUpstream::start().await;
    let (d, _tmp) = start(&mock.base_url(), "threshold = 0.8", "").await;
    let prompts: Vec<String> = (0..12)
        .map(|i| format!("tell me about topic number {i} in detail"))
        .collect();
    for p in &prompts {
        ask(&d, p).await;
    }
    d.wait_entries(prompts.len()).await;
    let mut old = HashSet::new();
    for p in &prompts {
        let r = ask(&d, p).await;
        assert_eq!(r.header("x-deja-cache"), "exact-hit");
        old.insert(r.header("x-deja-entry").to_string());
    }
    assert_eq!(old.len(), prompts.len());

    // Stats see them, and count the hits.
    let (status, stats) = get(&d, "/admin/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["entries"], prompts.len() as u64, "{stats}");
    assert_eq!(stats["backend"], "embedded");
    assert_eq!(
        stats["since_start"]["requests"]["exact_hit"],
        prompts.len() as u64
    );
    assert_eq!(stats["stored_hits"], prompts.len() as u64, "{stats}");
    assert!(stats["oldest_ms"].as_u64().unwrap() > 0);

    // One entry deleted: gone at once.
    let victim: u64 = ask(&d, &prompts[0])
        .await
        .header("x-deja-entry")
        .parse()
        .unwrap();
    let (status, e) = get(&d, &format!("/admin/entries/{victim}")).await;
    assert_eq!(
        (status, e["prompt"].as_str()),
        (200, Some(prompts[0].as_str()))
    );
    let del = client()
        .delete(admin(&d, &format!("/admin/entries/{victim}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    let (status, _) = get(&d, &format!("/admin/entries/{victim}")).await;
    assert_eq!(status, 404);
    let again = ask(&d, &prompts[0]).await;
    assert_ne!(again.header("x-deja-entry"), victim.to_string());
    assert_eq!(again.header("x-deja-cache"), "miss");

    // Traffic on every prompt (and a paraphrase of each) while the purge runs.
    let stop = Arc::new(AtomicBool::new(false));
    let purged = Arc::new(AtomicBool::new(false));
    let base = d.base.clone();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, purged, base, prompts) =
            (stop.clone(), purged.clone(), base.clone(), prompts.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut after = Vec::new();
            let mut i = w;
            while !stop.load(Ordering::SeqCst) {
                let p = &prompts[i % prompts.len()];
                let text = if i % 2 == 0 {
                    p.clone()
                } else {
                    format!("{p} please")
                };
                let was_purged = purged.load(Ordering::SeqCst);
                let r = c
                    .post(format!("{base}/v1/chat/completions"))
                    .header("authorization", "Bearer k")
                    .json(&chat(&text))
                    .send()
                    .await
                    .unwrap();
                let entry = r
                    .headers()
                    .get("x-deja-entry")
                    .map(|v| v.to_str().unwrap().to_string());
                if was_purged {
                    after.push(entry);
                }
                i += 1;
            }
            after
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (status, v) = post(
        &d,
        "/admin/purge",
        &json!({"prompt_contains": "TOPIC NUMBER"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    purged.store(true, Ordering::SeqCst);
    assert!(
        v["removed"].as_u64().unwrap() >= prompts.len() as u64 - 1,
        "{v}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut seen_after = 0;
    for w in workers {
        for entry in w.await.unwrap() {
            seen_after += 1;
            if let Some(e) = entry {
                assert!(!old.contains(&e), "purged entry {e} served after the purge");
            }
        }
    }
    assert!(seen_after > 0, "no request ran after the purge");
    d.settle().await;

    // A purge needs a filter; a bad one is a 400.
    let (status, v) = post(&d, "/admin/purge", &json!({})).await;
    assert_eq!(status, 400, "{v}");
    let (status, _) = post(&d, "/admin/purge", &json!({"older_than": "soon"})).await;
    assert_eq!(status, 400);
    let (status, v) = post(&d, "/admin/purge", &json!({"all": true})).await;
    assert_eq!(status, 200);
    assert_eq!(
        v["removed"].as_u64().unwrap(),
        v["scanned"].as_u64().unwrap()
    );
    assert_eq!(d.entries(), 0);
    d.stop().await;
}

/// Sends `text` as key `k` in namespace `support` (granted to it), or in the key's own.
async fn ask_in(c: &reqwest::Client, base: &str, text: &str, support: bool) -> (String, String) {
    let mut r = c
        .post(format!("{base}/v1/chat/completions"))
        .header("authorization", "Bearer k")
        .json(&chat(text));
    if support {
        r = r.header("x-deja-namespace", "support");
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map_or(String::new(), |v| v.to_str().unwrap().to_string())
    };
    (h("x-deja-cache"), h("x-deja-entry"))
}

#[tokio::test]
async fn issue17_stats_per_namespace_and_purge_by_namespace_under_traffic() {
    let mock = MockUpstream::start().await;
    let grant = format!(
        "[[cache.namespaces]]\nname = \"support\"\nkeys = [\"{}\"]\n",
        deja::config::KeyHash::of("k")
    );
    let (d, _tmp) = start(&mock.base_url(), &grant, "").await;
    let support: Vec<String> = (0..6)
        .map(|i| format!("support question number {i} about billing"))
        .collect();
    let own: Vec<String> = (0..4)
        .map(|i| format!("private note {i} on the roadmap"))
        .collect();
    let c = client();
    for p in &support {
        assert_eq!(ask_in(&c, &d.base, p, true).await.0, "miss");
    }
    for p in &own {
        assert_eq!(ask_in(&c, &d.base, p, false).await.0, "miss");
    }
    d.wait_entries(support.len() + own.len()).await;
    let (mut old_support, mut old_own) = (HashSet::new(), HashSet::new());
    for p in &support {
        let (outcome, entry) = ask_in(&c, &d.base, p, true).await;
        assert_eq!(outcome, "exact-hit");
        old_support.insert(entry);
    }
    for p in &own[..2] {
        let (outcome, entry) = ask_in(&c, &d.base, p, false).await;
        assert_eq!(outcome, "exact-hit");
        old_own.insert(entry);
    }
    d.settle().await;

    let (status, stats) = get(&d, "/admin/stats").await;
    assert_eq!(status, 200, "{stats}");
    let by_ns = stats["by_namespace"].as_object().unwrap();
    assert_eq!(by_ns.len(), 2, "{stats}");
    let team = &by_ns["ns:support"];
    assert_eq!(team["entries"], 6, "{team}");
    assert_eq!(team["hits"], 6, "{team}");
    assert_eq!(team["requests"]["miss"], 6);
    assert_eq!(team["requests"]["exact_hit"], 6);
    assert_eq!(team["hit_rate"]["exact"], 0.5);
    assert_eq!(team["hit_rate"]["semantic"], 0.0);
    assert!(team["oldest_ms"].as_u64().unwrap() > 0);
    // The key's own namespace is its hash, never the key.
    let (own_ns, mine) = by_ns.iter().find(|(k, _)| k.starts_with("key:")).unwrap();
    assert!(!own_ns.contains("Bearer") && own_ns.len() > 20, "{own_ns}");
    assert_eq!(mine["entries"], 4);
    assert_eq!(mine["requests"]["exact_hit"], 2);
    let rate = mine["hit_rate"]["exact"].as_f64().unwrap();
    assert!((rate - 2.0 / 6.0).abs() < 1e-9, "{mine}");
    let saved = |v: &Value| v["tokens_saved"].as_u64().unwrap();
    assert!(saved(team) > 0 && saved(mine) > 0, "{stats}");
    assert_eq!(
        saved(team) + saved(mine),
        stats["stored_tokens_saved"].as_u64().unwrap()
    );
    let model = &stats["requests_by_model"]["gpt-4o-mini"]["requests"];
    assert_eq!(
        (model["miss"].as_u64(), model["exact_hit"].as_u64()),
        (Some(10), Some(8))
    );
    let sum: u64 = by_ns.values().map(|v| v["entries"].as_u64().unwrap()).sum();
    assert_eq!(sum, stats["entries"].as_u64().unwrap());

    // Both namespaces busy while one of them is purged.
    let stop = Arc::new(AtomicBool::new(false));
    let purged = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4usize {
        let (stop, purged, base) = (stop.clone(), purged.clone(), d.base.clone());
        let (support, own) = (support.clone(), own[..2].to_vec());
        workers.push(tokio::spawn(async move {
            let c = client();
            let (mut after, mut i) = (Vec::new(), w);
            while !stop.load(Ordering::SeqCst) {
                let in_support = i % 2 == 0;
                let text = if in_support {
                    &support[i % support.len()]
                } else {
                    &own[i % own.len()]
                };
                let was_purged = purged.load(Ordering::SeqCst);
                let seen = ask_in(&c, &base, text, in_support).await;
                if was_purged {
                    after.push((in_support, seen));
                }
                i += 1;
            }
            after
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (status, v) = post(&d, "/admin/purge", &json!({"namespace": "support"})).await;
    assert_eq!(status, 200, "{v}");
    purged.store(true, Ordering::SeqCst);
    assert!(v["removed"].as_u64().unwrap() >= 6, "{v}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut support_after, mut own_after) = (0, 0);
    for w in workers {
        for (in_support, (outcome, entry)) in w.await.unwrap() {
            if in_support {
                support_after += 1;
                assert!(!old_support.contains(&entry), "purged entry {entry} served");
            } else {
                own_after += 1;
                assert_eq!(outcome, "exact-hit", "the other namespace was purged too");
                assert!(old_own.contains(&entry), "{entry}");
            }
        }
    }
    assert!(
        support_after > 0 && own_after > 0,
        "{support_after} {own_after}"
    );
    d.settle().await;
    let (_, stats) = get(&d, "/admin/stats").await;
    assert_eq!(
        stats["by_namespace"][own_ns.as_str()]["entries"],
        4,
        "{stats}"
    );
    let (status, v) = post(&d, "/admin/purge", &json!({"namespace": ""})).await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("namespace"))
    );
    d.stop().await;
}

#[tokio::test]
async fn issue17_export_then_import_onto_a_fresh_store_round_trips() {
    let mock = MockUpstream::start().await;
    let (a, _ta) = start(&mock.base_url(), "threshold = 0.8", "").await;
    let prompts = [
        "the capital of france",
        "how tall is everest",
        "boil an egg",
    ];
    let mut answers = Vec::new();
    for p in prompts {
        answers.push(ask(&a, p).await.content().to_string());
    }
    a.wait_entries(prompts.len()).await;
    let export = client()
        .get(admin(&a, "/admin/export"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    let text = export.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), prompts.len() + 1, "{text}");
    let header: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(header["deja_export"], 1);
    a.stop().await;

    let calls = mock.calls();
    let (b, _tb) = start(&mock.base_url(), "threshold = 0.8", "max_line_bytes = 4096").await;
    assert_eq!(b.entries(), 0);
    let r = client()
        .post(admin(&b, "/admin/import"))
        .bearer_auth(TOKEN)
        .body(text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["imported"], prompts.len() as u64, "{done}");
    assert_eq!(done["reembedded"], 0, "same model: embeddings kept");
    for (p, answer) in prompts.iter().zip(&answers) {
        let r = ask(&b, p).await;
        assert_eq!(r.header("x-deja-cache"), "exact-hit");
        assert_eq!(r.content(), answer);
    }
    // The imported embeddings are searchable.
    let near = ask(&b, "the capital of france please").await;
    assert_ne!(near.header("x-deja-cache"), "miss", "{:?}", near.headers);
    assert_eq!(
        mock.calls(),
        calls,
        "nothing went upstream on the fresh store"
    );

    // Another model's export is embedded again; a line past max_line_bytes stops with 413.
    let other = text.replacen(
        &format!("\"embedding_model\":{}", header["embedding_model"]),
        "\"embedding_model\":\"someone/else\"",
        1,
    );
    let r = client()
        .post(admin(&b, "/admin/import"))
        .bearer_auth(TOKEN)
        .body(other)
        .send()
        .await
        .unwrap();
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["reembedded"], prompts.len() as u64, "{done}");
    let long = format!("{}\n{}\n", lines[0], "x".repeat(5000));
    let r = client()
        .post(admin(&b, "/admin/import"))
        .bearer_auth(TOKEN)
        .body(long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let bad = format!("{}\nnot json\n", lines[0]);
    let r = client()
        .post(admin(&b, "/admin/import"))
        .bearer_auth(TOKEN)
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("line 2"),
        "{v}"
    );
    b.stop().await;
}

#[test]
fn issue17_the_grafana_dashboard_uses_only_metric_names_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dash = std::fs::read_to_string(root.join("deploy/grafana-deja.json")).unwrap();
    let v: Value = serde_json::from_str(&dash).expect("valid JSON");
    let mut defined = String::new();
    for f in std::fs::read_dir(root.join("src/metrics")).unwrap() {
        defined += &std::fs::read_to_string(f.unwrap().path()).unwrap();
    }
    let names = regex::Regex::new(r"deja_[a-z_]+").unwrap();
    let mut checked = 0;
    for panel in v["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            for m in names.find_iter(t["expr"].as_str().unwrap()) {
                let name = m.as_str();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                assert!(
                    defined.contains(&format!("\"{base}\"")),
                    "panel {} uses {name}, which src/metrics does not define",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "{checked}");
}
