//! Runs the real `deja` binary (CARGO_BIN_EXE_deja) on port 0 with a temp config, and finds a
//! Python that has the official SDKs (installing them into a venv under target/ when the
//! system Python lacks them).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct DejaProcess {
    pub base: String,
    child: Child,
    /// Its log (stderr), at most [`MAX_LOG_LINES`] lines.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

const MAX_LOG_LINES: usize = 20_000;

impl DejaProcess {
    /// Starts `deja serve --config <config>` and waits until `/readyz` answers 200.
    pub fn start(config: &Path) -> DejaProcess {
        DejaProcess::start_env(config, &[])
    }

    /// [`DejaProcess::start`] with extra environment variables (the shared backend's URL).
    pub fn start_env(config: &Path, env: &[(&str, &str)]) -> DejaProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_deja"))
            .args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("DEJA_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start deja");
        // The log (stderr) is echoed as before and kept, so a test can grep what deja logged.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut k = kept.lock().unwrap();
                if k.len() < MAX_LOG_LINES {
                    k.push(line);
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("deja exited before listening")
                .expect("read stdout");
            if let Some(url) = line.strip_prefix("deja listening on ") {
                break url.trim().to_string();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("deja exited during start-up: {status}");
            }
            if let Ok(r) = reqwest::blocking::get(format!("{base}/readyz")) {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "deja not ready after 180 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        DejaProcess { base, child, log }
    }

    /// What the process logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL and wait: no shutdown work of any kind runs.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: exercises graceful shutdown.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let started = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("deja did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DejaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python interpreter that can `import openai, anthropic`.
pub fn python_with_sdks() -> PathBuf {
    let system = PathBuf::from("python3");
    if has_sdks(&system) {
        return system;
    }
    venv_python()
}

/// The tests' own venv under `target/` (made with tests/e2e/requirements.txt when missing), for
/// what the system Python lacks: `cargo test` alone must work on a clean machine.
pub fn venv_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("e2e-venv");
    let python = venv.join("bin").join("python");
    if !has_sdks(&python) {
        let ok = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "could not create a venv at {}", venv.display());
        let ok = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(root.join("tests/e2e/requirements.txt"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "pip install of tests/e2e/requirements.txt failed");
    }
    python
}

fn has_sdks(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import openai, anthropic, numpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
