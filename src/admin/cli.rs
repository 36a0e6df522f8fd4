//! `deja cache stats|explain|purge|export|import|delete`: the admin API from a shell. By
//! default each command is one request to a running server's admin listener (`--admin URL`,
//! the token from the environment variable `--token-env` names). With `--offline` the store
//! named by `--config` is opened in this process (sled allows one process: while a server
//! holds it, that is a clear error) and the same request is answered by the same admin router
//! in-process, so both ways run exactly the same handlers. Offline, the embedding model is
//! resolved but loaded only by a command that embeds ([`crate::embed::LazyEmbedder`]): stats,
//! purge, delete, export and an import of this model's embeddings never read its weights.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use axum::body::Body;
use futures::StreamExt;
use tower::ServiceExt;

use super::{AdminState, Token};
use crate::config::Config;
use crate::server::AppState;

#[derive(clap::Args, Debug)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
    /// A running deja's admin listener.
    #[arg(
        long,
        global = true,
        env = "DEJA_ADMIN_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub admin: String,
    /// The environment variable that holds the admin token.
    #[arg(long, global = true, default_value = crate::config::admin::DEFAULT_ADMIN_TOKEN_ENV)]
    pub token_env: String,
    /// Open the store of --config directly (no server may be running on it).
    #[arg(long, global = true)]
    pub offline: bool,
    /// The config whose store --offline opens.
    #[arg(long, short, global = true, default_value = "config.toml")]
    pub config: PathBuf,
}

#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// Entries, bytes, hits and hit rates per model and namespace, requests and savings (JSON).
    Stats,
    /// Why a request would hit or miss: FILE holds the request body (`-` for stdin).
    Explain {
        file: PathBuf,
        /// The endpoint the body is for.
        #[arg(long, default_value = "/v1/chat/completions")]
        path: String,
        /// Request headers that matter (`authorization: Bearer sk-…`, `x-deja-namespace: …`).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
    },
    /// Remove entries; the filters combine (AND).
    Purge {
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        older_than: Option<String>,
        #[arg(long)]
        prompt_contains: Option<String>,
        #[arg(long)]
        scope: Option<String>,
        /// A namespace as `stats` lists it (`ns:team-a`, `key:…`; a bare name means `ns:NAME`).
        #[arg(long)]
        namespace: Option<String>,
        /// Everything (no other filter).
        #[arg(long)]
        all: bool,
    },
    /// Remove one entry.
    Delete { id: u64 },
    /// Every live entry as JSONL on stdout.
    Export,
    /// Entries from a JSONL export (FILE, or `-` for stdin).
    Import { file: PathBuf },
}

/// One admin request.
struct Call {
    method: axum::http::Method,
    path: String,
    body: Body,
}

fn read_input(file: &Path) -> anyhow::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
        Ok(b)
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// A file (or stdin) as a body read in chunks, for imports larger than memory.
fn stream_input(file: &Path) -> anyhow::Result<Body> {
    let reader: Box<dyn std::io::Read + Send> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(8);
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    Ok(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
}

fn call(cmd: &CacheCommand) -> anyhow::Result<Call> {
    use axum::http::Method;
    let json = |v: serde_json::Value| Body::from(v.to_string());
    Ok(match cmd {
        CacheCommand::Stats => Call {
            method: Method::GET,
            path: "/admin/stats".into(),
            body: Body::empty(),
        },
        CacheCommand::Explain {
            file,
            path,
            headers,
        } => {
            let body: serde_json::Value = serde_json::from_slice(&read_input(file)?)
                .context("the request body is not JSON")?;
            let mut h = serde_json::Map::new();
            for line in headers {
                let Some((k, v)) = line.split_once(':') else {
                    bail!("--header '{line}': expected 'name: value'");
                };
                h.insert(k.trim().to_ascii_lowercase(), v.trim().into());
            }
            Call {
                method: Method::POST,
                path: "/admin/explain".into(),
                body: json(serde_json::json!({"path": path, "body": body, "headers": h})),
            }
        }
        CacheCommand::Purge {
            model,
            older_than,
            prompt_contains,
            scope,
            namespace,
            all,
        } => Call {
            method: Method::POST,
            path: "/admin/purge".into(),
            body: json(serde_json::json!({
                "model": model, "older_than": older_than, "prompt_contains": prompt_contains,
                "scope": scope, "namespace": namespace, "all": all,
            })),
        },
        CacheCommand::Delete { id } => Call {
            method: Method::DELETE,
            path: format!("/admin/entries/{id}"),
            body: Body::empty(),
        },
        CacheCommand::Export => Call {
            method: Method::GET,
            path: "/admin/export".into(),
            body: Body::empty(),
        },
        CacheCommand::Import { file } => Call {
            method: Method::POST,
            path: "/admin/import".into(),
            body: stream_input(file)?,
        },
    })
}

/// Runs a `deja cache` command; the answer goes to stdout, a refusal to stderr (exit 1).
pub fn run(args: CacheArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let req = call(&args.command)?;
        if args.offline {
            offline(&args, req).await
        } else {
            online(&args, req).await
        }
    })
}

async fn online(args: &CacheArgs, req: Call) -> anyhow::Result<()> {
    let token = std::env::var(&args.token_env)
        .ok()
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        bail!(
            "the admin token is read from ${}: set it (or --token-env NAME), or use --offline",
            args.token_env
        );
    };
    let url = format!("{}{}", args.admin.trim_end_matches('/'), req.path);
    let body = reqwest::Body::wrap_stream(req.body.into_data_stream());
    let resp = reqwest::Client::new()
        .request(req.method, &url)
        .bearer_auth(token.trim())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach the admin listener at {}", args.admin))?;
    let status = resp.status();
    let mut stream = resp.bytes_stream();
    let (mut out, mut last) = (Vec::new(), b'\n');
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading the answer")?;
        if status.is_success() {
            std::io::stdout().write_all(&chunk)?;
            last = chunk.last().copied().unwrap_or(last);
        } else {
            out.extend_from_slice(&chunk);
        }
    }
    finish(status.as_u16(), &out, last)
}

async fn offline(args: &CacheArgs, req: Call) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    // Resolved, not loaded: only a command that embeds (explain, an import from another
    // model) reads the weights, on its first embedding.
    let embedder: std::sync::Arc<dyn crate::embed::Embedder> =
        std::sync::Arc::new(crate::embed::LazyEmbedder::resolve(
            &crate::embed::EmbedSettings::from(&config.embedding),
            &crate::embed::ResolveOptions::from_env(),
        )?);
    let cfg = config.clone();
    let engine = tokio::task::spawn_blocking(move || crate::server::open_engine(&cfg, embedder))
        .await?
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("locked by another process") {
                anyhow::anyhow!(
                    "{text}: a running deja holds this store; talk to it with --admin URL instead \
                 of --offline"
                )
            } else {
                anyhow::anyhow!(text)
            }
        })?;
    let router = crate::server::build_router(&config)?;
    let metrics = crate::metrics::Metrics::new()?;
    let state = AppState::new(config, router, metrics, Some(args.config.clone()));
    let _ = state.0.engine.set(engine.clone());
    let secret = uuid::Uuid::new_v4().to_string();
    let admin = AdminState::new(state, Token::new(&secret));
    let request = axum::http::Request::builder()
        .method(req.method)
        .uri(&req.path)
        .header("authorization", format!("Bearer {secret}"))
        .body(req.body)?;
    let resp = super::router(admin)
        .oneshot(request)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let status = resp.status();
    let mut stream = resp.into_body().into_data_stream();
    let (mut out, mut last) = (Vec::new(), b'\n');
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading the answer")?;
        if status.is_success() {
            std::io::stdout().write_all(&chunk)?;
            last = chunk.last().copied().unwrap_or(last);
        } else {
            out.extend_from_slice(&chunk);
        }
    }
    tokio::task::spawn_blocking(move || engine.flush_blocking()).await??;
    finish(status.as_u16(), &out, last)
}

fn finish(status: u16, error_body: &[u8], last: u8) -> anyhow::Result<()> {
    if (200..300).contains(&status) {
        if last != b'\n' {
            let _ = std::io::stdout().write_all(b"\n");
        }
        return Ok(());
    }
    let message = serde_json::from_slice::<serde_json::Value>(error_body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(error_body).into_owned());
    bail!("admin API answered {status}: {message}")
}
