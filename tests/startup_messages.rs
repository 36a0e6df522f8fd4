//! What the real binary says at start (issue 12): a failed cache start-up is reported once, and
//! a config without routes starts with a warning.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn write_config(dir: &Path, cache_dir: &Path, routes: bool) -> std::path::PathBuf {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nwatch_config = false\n[cache]\ndir = \"{}\"\n",
        cache_dir.display()
    );
    if routes {
        text.push_str(
            "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             [[routes]]\nmodel = \"*\"\nproviders = [\"p\"]\n",
        );
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn serve(config: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_deja"))
        .args(["serve", "--config"])
        .arg(config)
        .env("DEJA_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn issue12_cache_start_up_failure_is_reported_once() {
    let tmp = tempfile::tempdir().unwrap();
    // A regular file where the store's directory should be.
    let not_a_dir = tmp.path().join("not-a-dir");
    std::fs::write(&not_a_dir, "x").unwrap();
    let config = write_config(tmp.path(), &not_a_dir, true);
    let mut child = serve(&config);
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().unwrap();
    // The process exits on its own once the model is loaded and the store fails to open.
    let reader = std::thread::spawn(move || {
        pipe.read_to_string(&mut stderr).unwrap();
        stderr
    });
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait().unwrap();
        let _ = tx.send(());
        status
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(300)).is_ok(),
        "deja did not exit after its cache failed"
    );
    let status = waiter.join().unwrap();
    let stderr = reader.join().unwrap();
    assert!(!status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("cache start-up failed").count(),
        1,
        "the failure should be reported once:\n{stderr}"
    );
    assert!(
        stderr.contains("not-a-dir"),
        "the message names the store's path:\n{stderr}"
    );
}

#[test]
fn issue12_a_config_without_routes_starts_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tmp.path().join("store"), false);
    let mut child = serve(&config);
    let pipe = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let warned = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let hit = line.contains("WARN") && line.contains("no [[routes]] configured");
                seen.push(line);
                if hit {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        warned,
        "no warning about the missing routes:\n{}",
        seen.join("\n")
    );
}
