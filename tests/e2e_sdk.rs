//! End-to-end: the real `deja` binary (real model, real store) driven by the official Python
//! SDKs, with misses forwarded to an in-process mock upstream on 127.0.0.1:0.

mod common;

use std::process::Command;

use common::binary::{python_with_sdks, DejaProcess};
use common::mock_upstream::MockUpstream;

fn write_config(dir: &std::path::Path, upstream: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
[cache]
dir = "{}"
threshold = 0.85
[[providers]]
name = "mock"
kind = "openai"
base_url = "{upstream}"
max_retries = 0
[[routes]]
model = "*"
providers = ["mock"]
"#,
        dir.join("store").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn openai_python_sdk_against_the_binary() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = rt.block_on(
        MockUpstream::builder()
            .with_models(&["gpt-4o-mini"])
            .start(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &mock.base_url());
    let deja = DejaProcess::start(&config);
    let python = python_with_sdks();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/openai_sdk.py");
    let status = Command::new(&python)
        .arg(script)
        .arg(&deja.base)
        .env("PYTHONUNBUFFERED", "1")
        .status()
        .expect("run python");
    assert!(
        status.success(),
        "openai SDK checks failed (see output above)"
    );
    // Hits cost nothing upstream: every miss in the script is one upstream call, every hit none.
    let calls = mock.calls_for("/v1/chat/completions");
    assert!(calls <= 6, "too many upstream chat calls: {calls}");
    let stopped = deja.stop();
    assert!(
        stopped.success(),
        "graceful shutdown must exit 0, got {stopped}"
    );
}
