//! Issue 17: `deja cache stats|explain|purge|export|import`, the real binary, against a running
//! server's admin listener and, with `--offline`, against a store no server holds. The offline
//! store is made for a model whose weights are not weights: every command that needs no
//! embedding succeeds without loading it, and one that embeds fails.

mod common;

use std::path::{Path, PathBuf};

use common::harness::{client, config_text, hash_model, Deja};
use common::mock_upstream::MockUpstream;
use deja::admin::entries::{ExportHeader, ExportLine};
use deja::store::{CachedResponse, FinishReason, Usage};
use serde_json::{json, Value};

const TOKEN: &str = "cli-admin-token";
const AUTH: &[(&str, &str)] = &[("T17CLI", TOKEN)];

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// `deja cache <args>` with `env`, off the runtime.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_deja"))
            .arg("cache")
            .args(&args)
            .env_remove("DEJA_ADMIN_URL")
            .envs(env)
            .env("DEJA_LOG", "warn")
            .output()
            .expect("run deja");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn chat(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}

async fn api(d: &Deja, path: &str, body: Option<Value>) -> Value {
    let url = format!("{}{path}", d.admin.as_deref().unwrap());
    let req = match body {
        Some(b) => client().post(url).json(&b),
        None => client().get(url),
    };
    let r = req.bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn issue17_the_cli_talks_to_a_running_servers_admin_listener() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(&tmp.path().join("store"), &mock.base_url(), "", "")
        + "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"T17CLI\"\n";
    let env = vec![("T17CLI".to_string(), TOKEN.to_string())];
    let d = Deja::start_config_env(&text, tmp.path(), hash_model(), None, env).await;
    let prompts = [
        "alpha question one",
        "beta question two",
        "a refund for my order",
    ];
    for p in prompts {
        d.post(
            "/v1/chat/completions",
            &chat(p),
            &[("authorization", "Bearer k")],
        )
        .await;
    }
    d.wait_entries(prompts.len()).await;
    let hit = d
        .post(
            "/v1/chat/completions",
            &chat(prompts[0]),
            &[("authorization", "Bearer k")],
        )
        .await;
    assert_eq!(hit.header("x-deja-cache"), "exact-hit");
    d.settle().await;
    let admin = d.admin.clone().unwrap();
    let run = |extra: &[&str], env: &'static [(&'static str, &'static str)]| {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--admin".into(),
            admin.clone(),
            "--token-env".into(),
            "T17CLI".into(),
        ]);
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&a, env).await
        }
    };

    // stats: the same numbers as the API.
    let stats = run(&["stats"], AUTH).await.json();
    let from_api = api(&d, "/admin/stats", None).await;
    assert_eq!(stats["entries"], prompts.len() as u64, "{stats}");
    assert_eq!(stats["entries"], from_api["entries"]);
    assert_eq!(stats["by_model"], from_api["by_model"]);
    assert_eq!(stats["since_start"]["requests"]["exact_hit"], 1, "{stats}");
    assert_eq!(stats["stored_hits"], 1);

    // explain: what the API says, for a body in a file and a header.
    let body = tmp.path().join("body.json");
    std::fs::write(&body, chat(prompts[0]).to_string()).unwrap();
    let body_arg = body.display().to_string();
    let e = run(
        &["explain", &body_arg, "-H", "authorization: Bearer k"],
        AUTH,
    )
    .await
    .json();
    let e_api = api(
        &d,
        "/admin/explain",
        Some(json!({"body": chat(prompts[0]), "headers": {"authorization": "Bearer k"}})),
    )
    .await;
    assert_eq!(e["decision"]["outcome"], "exact-hit", "{e}");
    assert_eq!(e["decision"]["outcome"], e_api["decision"]["outcome"]);
    assert_eq!(e["decision"]["entry"], e_api["decision"]["entry"]);
    assert_eq!(e["scope"], e_api["scope"]);
    assert_eq!(
        e["decision"]["entry"].as_u64().unwrap().to_string(),
        hit.header("x-deja-entry")
    );
    let bad = run(&["explain", &body_arg, "-H", "no colon"], AUTH).await;
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("expected 'name: value'"),
        "{}",
        bad.stderr
    );

    // export: a header and one line per entry.
    let export = run(&["export"], AUTH).await;
    assert_eq!(export.code, 0, "{}", export.stderr);
    let lines: Vec<&str> = export.stdout.lines().collect();
    assert_eq!(lines.len(), prompts.len() + 1, "{}", export.stdout);
    let header: ExportHeader = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(header.deja_export, 1);
    let mut exported: Vec<String> = lines[1..]
        .iter()
        .map(|l| serde_json::from_str::<ExportLine>(l).unwrap().prompt)
        .collect();
    exported.sort();
    let mut want: Vec<String> = prompts.iter().map(|p| p.to_string()).collect();
    want.sort();
    assert_eq!(exported, want);
    let file = tmp.path().join("export.jsonl");
    std::fs::write(&file, &export.stdout).unwrap();

    // purge: counts what it removed, and the API sees it gone.
    let purged = run(&["purge", "--prompt-contains", "REFUND"], AUTH)
        .await
        .json();
    assert_eq!(purged["removed"], 1, "{purged}");
    assert_eq!(d.entries(), prompts.len() - 1);
    let after = run(&["stats"], AUTH).await.json();
    assert_eq!(after["entries"], prompts.len() as u64 - 1, "{after}");
    let none = run(&["purge"], AUTH).await;
    assert_ne!(none.code, 0, "a purge without a filter is refused");
    assert!(none.stderr.contains("400"), "{}", none.stderr);

    // import: the export brings the purged entry back, nothing goes upstream.
    let calls = mock.calls();
    let imported = run(&["import", &file.display().to_string()], AUTH)
        .await
        .json();
    assert_eq!(imported["imported"], prompts.len() as u64, "{imported}");
    assert_eq!(d.entries(), prompts.len());
    let back = d
        .post(
            "/v1/chat/completions",
            &chat(prompts[2]),
            &[("authorization", "Bearer k")],
        )
        .await;
    assert_eq!(back.header("x-deja-cache"), "exact-hit");
    assert_eq!(mock.calls(), calls);

    // A wrong token, no token, no server: a clear error and a non-zero exit.
    let wrong = run(&["stats"], &[("T17CLI", "not-the-token")]).await;
    assert_ne!(wrong.code, 0);
    assert!(
        wrong.stderr.contains("admin API answered 401"),
        "{}",
        wrong.stderr
    );
    assert!(!wrong.stderr.contains(TOKEN));
    let unset = cli(
        &["stats", "--admin", &admin, "--token-env", "T17CLI_UNSET"],
        &[],
    )
    .await;
    assert_ne!(unset.code, 0);
    assert!(unset.stderr.contains("$T17CLI_UNSET"), "{}", unset.stderr);
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let unreachable = cli(&["stats", "--admin", &gone, "--token-env", "T17CLI"], AUTH).await;
    assert_ne!(unreachable.code, 0);
    assert!(
        unreachable
            .stderr
            .contains("cannot reach the admin listener"),
        "{}",
        unreachable.stderr
    );
    d.stop().await;
}

/// A model directory with a real `config.json` (8 dimensions) and files that are not a
/// tokenizer or weights: resolving it works, loading it fails.
fn unloadable_model(dir: &Path) -> PathBuf {
    let m = dir.join("tiny-model");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("config.json"),
        r#"{"model_type":"bert","hidden_size":8,"max_position_embeddings":512}"#,
    )
    .unwrap();
    std::fs::write(m.join("tokenizer.json"), "not a tokenizer").unwrap();
    std::fs::write(m.join("model.safetensors"), "not weights").unwrap();
    m
}

/// A config for `--offline` whose store is `store` and whose model is `model`.
fn offline_config(dir: &Path, store: &Path, model: &Path, name: &str) -> String {
    let text = config_text(store, "http://127.0.0.1:9", "", "")
        + &format!("[embedding]\nmodel = \"{}\"\n", model.display());
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file.display().to_string()
}

fn unit(i: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; 8];
    v[i % 8] = 0.6;
    v[(i + 3) % 8] = 0.8;
    v
}

fn line(scope: u8, prompt: &str, model: &str, i: usize, expires_ms: u64) -> ExportLine {
    let namespace = match scope {
        1 => Some("ns:team-a".to_string()),
        2 => Some("key:0123abcd".to_string()),
        _ => None,
    };
    ExportLine {
        scope: hex::encode([scope; 16]),
        prompt: prompt.into(),
        embedding: Some(unit(i)),
        response: CachedResponse {
            model: model.into(),
            content: format!("answer {i}"),
            finish_reason: FinishReason::Stop,
            usage: Some(Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
            }),
            provider: "p".into(),
            system_fingerprint: None,
            tool_calls: Vec::new(),
        },
        created_ms: 1_000 + i as u64,
        expires_ms,
        hits: 0,
        namespace,
    }
}

#[tokio::test]
async fn issue17_the_cli_works_offline_without_loading_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = unloadable_model(tmp.path());
    let one = offline_config(tmp.path(), &tmp.path().join("one"), &model, "one.toml");
    let two = offline_config(tmp.path(), &tmp.path().join("two"), &model, "two.toml");
    let far = u64::MAX / 2;
    let lines = [
        line(1, "first prompt", "m-a", 0, far),
        line(1, "second prompt", "m-a", 1, far),
        line(2, "third prompt", "m-b", 2, far),
        line(2, "long gone", "m-b", 3, 5),
    ];
    let mut jsonl = serde_json::to_string(&ExportHeader {
        deja_export: 1,
        embedding_model: "tiny-model".into(),
        dim: 8,
    })
    .unwrap();
    for l in &lines {
        jsonl += "\n";
        jsonl += &serde_json::to_string(l).unwrap();
    }
    let file = tmp.path().join("in.jsonl");
    std::fs::write(&file, jsonl + "\n").unwrap();
    let file = file.display().to_string();
    let off = |config: &str, args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["--offline".into(), "--config".into(), config.to_string()]);
        async move {
            let a: Vec<&str> = v.iter().map(String::as_str).collect();
            cli(&a, &[]).await
        }
    };

    let imported = off(&one, &["import", &file]).await.json();
    assert_eq!(
        imported,
        json!({"imported": 3, "expired_skipped": 1, "reembedded": 0})
    );
    let stats = off(&one, &["stats"]).await.json();
    assert_eq!(stats["entries"], 3, "{stats}");
    assert_eq!(stats["by_model"]["m-a"]["entries"], 2);
    assert_eq!(stats["by_model"]["m-b"]["entries"], 1);
    assert_eq!(stats["oldest_ms"], 1_000);
    assert_eq!(stats["by_namespace"]["ns:team-a"]["entries"], 2, "{stats}");
    assert_eq!(stats["by_namespace"]["key:0123abcd"]["entries"], 1);

    // export gives back what was imported, embeddings included.
    let export = off(&one, &["export"]).await;
    assert_eq!(export.code, 0, "{}", export.stderr);
    let out: Vec<&str> = export.stdout.lines().collect();
    let header: ExportHeader = serde_json::from_str(out[0]).unwrap();
    assert_eq!(
        (header.embedding_model.as_str(), header.dim),
        ("tiny-model", 8)
    );
    assert_eq!(out.len(), 4, "{}", export.stdout);
    for (got, want) in out[1..].iter().zip(&lines[..3]) {
        let got: ExportLine = serde_json::from_str(got).unwrap();
        assert_eq!(got.prompt, want.prompt);
        assert_eq!(got.scope, want.scope);
        assert_eq!(got.embedding, want.embedding);
        assert_eq!(got.response, want.response);
        assert_eq!(got.created_ms, want.created_ms);
        assert_eq!(got.namespace, want.namespace);
    }

    // purge by model, then the export round-trips onto a fresh store.
    let purged = off(&one, &["purge", "--model", "m-b"]).await.json();
    assert_eq!(
        (purged["removed"].as_u64(), purged["scanned"].as_u64()),
        (Some(1), Some(3))
    );
    let after = off(&one, &["stats"]).await.json();
    assert_eq!(after["entries"], 2, "{after}");
    let export = off(&one, &["export"]).await;
    let again = tmp.path().join("again.jsonl");
    std::fs::write(&again, &export.stdout).unwrap();
    let round = off(&two, &["import", &again.display().to_string()])
        .await
        .json();
    assert_eq!(round["imported"], 2, "{round}");
    let two_stats = off(&two, &["stats"]).await.json();
    assert_eq!(two_stats["by_model"], after["by_model"]);
    assert_eq!(two_stats["by_namespace"], after["by_namespace"]);
    let by_ns = off(&two, &["purge", "--namespace", "team-a"]).await.json();
    assert_eq!(by_ns["removed"], 2, "{by_ns}");
    let empty = off(&two, &["stats"]).await.json();
    assert_eq!(empty["entries"], 0, "{empty}");

    // explain embeds: it tries to load the model, which fails clearly.
    let body = tmp.path().join("body.json");
    std::fs::write(&body, chat("first prompt").to_string()).unwrap();
    let explain = off(&one, &["explain", &body.display().to_string()]).await;
    assert_ne!(explain.code, 0, "{}", explain.stdout);
    assert!(
        explain.stderr.contains("admin API answered"),
        "{}",
        explain.stderr
    );

    // A store a server holds is refused with a pointer to --admin.
    let mock = MockUpstream::start().await;
    let held = Deja::start(&mock.base_url(), hash_model()).await;
    let cfg = offline_config(tmp.path(), &held.dir.join("store"), &model, "held.toml");
    let locked = off(&cfg, &["stats"]).await;
    assert_ne!(locked.code, 0);
    assert!(locked.stderr.contains("--admin"), "{}", locked.stderr);
    held.stop().await;
}
