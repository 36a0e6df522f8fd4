//! Raw → typed config, collecting every problem with its field path instead of stopping at the
//! first. Defaults live here and nowhere else.

use super::raw::*;
use super::*;

/// Default similarity threshold. Chosen from `deja bench` on qqp-pairs (see docs/benchmarks.md).
pub const DEFAULT_THRESHOLD: f32 = 0.996;
/// Default `cache.verified_threshold`, the lexical verifier's bar (see docs/benchmarks.md).
pub const DEFAULT_VERIFIED_THRESHOLD: f32 = 0.90;
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// Default `cache.max_entry_bytes`: 4 MiB, the request body cap too. A chat answer is a few
/// kilobytes; the cap keeps one entry (and every hit rendering it) from costing megabytes.
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 4 << 20;

// Connection bounds, as a production sidecar would set them (issue 12). Headers are small and
// come in one packet from a live client: 10 s is generous. Idle keep-alive connections outlive
// the clients' own pool timeouts (Go's 90 s, httpx's 5 s), so the client closes first and never
// sends a request on a connection deja is closing. 1024 connections fit the usual open-file
// limit with room for the store and the upstream pools.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
const MAX_MAX_CONNECTIONS: usize = 1_000_000;

/// The problems found so far, shared by every section validator (and by those in sibling files).
pub(super) struct Issues(Vec<ConfigIssue>);

impl Issues {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(&mut self, path: &str, v: Option<&str>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    self.push(
                        path,
                        format!("invalid duration '{s}': {e} (e.g. \"200ms\", \"30s\", \"7d\")"),
                    );
                    default
                }
            },
        }
    }

    pub(super) fn threshold(&mut self, path: &str, v: f64) -> f32 {
        if !(-1.0..=1.0).contains(&v) || v.is_nan() {
            self.push(path, format!("{v} is not a cosine similarity in [-1, 1]"));
        }
        v as f32
    }

    pub(super) fn positive(&mut self, path: &str, v: Option<u64>, default: u64) -> u64 {
        let v = v.unwrap_or(default);
        if v == 0 {
            self.push(path, "must be greater than 0");
        }
        v
    }

    /// A duration that must be greater than zero (a zero timeout would close every connection).
    pub(super) fn nonzero_duration(
        &mut self,
        path: &str,
        v: Option<&str>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(path, v, default);
        if d.is_zero() {
            self.push(path, "must be greater than 0");
            return default;
        }
        d
    }

    pub(super) fn max_connections(&mut self, v: Option<u64>) -> usize {
        let path = "server.max_connections";
        let v = v.unwrap_or(DEFAULT_MAX_CONNECTIONS as u64);
        if !(1..=MAX_MAX_CONNECTIONS as u64).contains(&v) {
            self.push(
                path,
                format!("{v} is not between 1 and {MAX_MAX_CONNECTIONS}"),
            );
            return DEFAULT_MAX_CONNECTIONS;
        }
        v as usize
    }

    /// The compiled glob; an invalid one is an issue (and a glob that matches nothing).
    pub(super) fn glob(&mut self, path: &str, glob: &str) -> ModelGlob {
        ModelGlob::new(glob).unwrap_or_else(|e| {
            self.push(path, format!("invalid glob '{glob}': {e}"));
            ModelGlob::invalid(glob)
        })
    }
}

/// Every section in turn, in file order; each pushes its problems into the shared list, so that
/// all of them are reported at once. A new section, or a block validated in a file of its own
/// (`judge::validate(..., &mut is)`), is one more line here.
pub fn validate(raw: RawConfig, base_dir: &Path) -> Result<Config, ConfigError> {
    let mut is = Issues(Vec::new());
    let server = server(&raw.server, &mut is);
    let cache = cache(&raw.cache, base_dir, &mut is);
    let index = index(&raw.index, &mut is);
    let embedding = embedding(&raw.embedding, &mut is);
    let providers = providers(&raw.providers, &mut is);
    let routes = routes(&raw.routes, &providers, &mut is);
    let prices = prices(&raw.prices, &mut is);
    let mut cache = cache;
    cache.judge =
        super::judge::validate_judge(raw.cache.judge.as_ref(), &providers, &routes, &mut is.0);
    cache.verifier = super::verifier::validate_verifier(raw.cache.verifier.as_ref(), &mut is.0);
    cache.quality = super::quality::validate_quality(raw.cache.audit_rate, &raw.quality, &mut is.0);
    cache.chains = super::chains::validate_chains(
        raw.cache.response_chains,
        raw.cache.response_chain_ttl.as_deref(),
        raw.cache.response_chain_bytes,
        &mut is.0,
    );
    cache.quality.judge_model = super::shadow_judge::validate_shadow_judge(
        raw.quality.judge_model.as_deref(),
        &routes,
        &mut is.0,
    );
    let pii = super::pii::validate_pii(&raw.pii, &mut is.0);
    let admin = super::admin::validate_admin(&raw.admin, &mut is.0);
    let keys = super::keys::validate_keys(raw.server.auth.as_deref(), &raw.keys, &mut is.0);
    let templates = super::templates::validate_templates(&raw.templates, &mut is.0);
    let audit = super::audit::validate_audit(&raw.audit, base_dir, &mut is.0);
    cache.backend = super::backend::validate_backend(
        raw.cache.backend.as_deref(),
        raw.cache.postgres.as_ref(),
        &mut is.0,
    );

    if is.0.is_empty() {
        Ok(Config {
            server,
            cache,
            index,
            embedding,
            providers,
            routes,
            prices,
            pii,
            keys,
            admin,
            templates,
            audit,
        })
    } else {
        Err(ConfigError::Invalid(is.0))
    }
}

/// `[server]`.
fn server(s: &RawServer, is: &mut Issues) -> ServerConfig {
    let listen_str = s.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen = listen_str.parse::<SocketAddr>().unwrap_or_else(|e| {
        is.push(
            "server.listen",
            format!("'{listen_str}' is not host:port ({e})"),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let log_format = match s.log_format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            is.push(
                "server.log_format",
                format!("'{other}' is not one of: text, json"),
            );
            LogFormat::Text
        }
    };
    ServerConfig {
        listen,
        max_body_bytes: is.positive("server.max_body_bytes", s.max_body_bytes, 4 << 20) as usize,
        log_format,
        shutdown_grace: is.duration(
            "server.shutdown_grace",
            s.shutdown_grace.as_deref(),
            Duration::from_secs(30),
        ),
        watch_config: s.watch_config.unwrap_or(true),
        header_read_timeout: is.nonzero_duration(
            "server.header_read_timeout",
            s.header_read_timeout.as_deref(),
            DEFAULT_HEADER_READ_TIMEOUT,
        ),
        idle_timeout: is.nonzero_duration(
            "server.idle_timeout",
            s.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
        ),
        body_read_timeout: is.nonzero_duration(
            "server.body_read_timeout",
            s.body_read_timeout.as_deref(),
            DEFAULT_BODY_READ_TIMEOUT,
        ),
        max_connections: is.max_connections(s.max_connections),
    }
}

/// `[cache]`, with its `[[cache.thresholds]]` and `[[cache.namespaces]]`; a relative `dir` is
/// taken from `base_dir` (the config file's directory).
fn cache(c: &RawCache, base_dir: &Path, is: &mut Issues) -> CacheConfig {
    let dir = PathBuf::from(c.dir.as_deref().unwrap_or("./data"));
    let dir = if dir.is_relative() {
        base_dir.join(dir)
    } else {
        dir
    };
    let tenant = match c.tenant.as_deref().unwrap_or("api-key") {
        "api-key" => TenantMode::ApiKey,
        "shared" => TenantMode::Shared,
        other => {
            is.push(
                "cache.tenant",
                format!("'{other}' is not one of: api-key, shared"),
            );
            TenantMode::ApiKey
        }
    };
    let thresholds = threshold_overrides(&c.thresholds, is);
    let namespaces = namespace_grants(&c.namespaces, is);
    let cache = CacheConfig {
        dir,
        threshold: is.threshold(
            "cache.threshold",
            c.threshold.unwrap_or(DEFAULT_THRESHOLD as f64),
        ),
        // A config that sets only `threshold` keeps the plain cosine rule it asked for.
        verified_threshold: is.threshold(
            "cache.verified_threshold",
            c.verified_threshold.unwrap_or(match c.threshold {
                Some(t) => t,
                None => DEFAULT_VERIFIED_THRESHOLD as f64,
            }),
        ),
        ttl: is.duration(
            "cache.ttl",
            c.ttl.as_deref(),
            Duration::from_secs(7 * 86_400),
        ),
        max_entries: is.positive("cache.max_entries", c.max_entries, 1_000_000) as usize,
        guards: c.guards.unwrap_or(true),
        max_turns: is.positive("cache.max_turns", c.max_turns, 16) as usize,
        tenant,
        namespace: c.namespace.clone().unwrap_or_else(|| "default".into()),
        flush_interval: is.duration(
            "cache.flush_interval",
            c.flush_interval.as_deref(),
            Duration::from_millis(200),
        ),
        thresholds,
        // --- Bounded upstream answers (issue 12) ---
        max_entry_bytes: is.positive(
            "cache.max_entry_bytes",
            c.max_entry_bytes,
            DEFAULT_MAX_ENTRY_BYTES as u64,
        ) as usize,
        namespaces,
        judge: None,
        verifier: None,
        backend: Default::default(),
        quality: Default::default(),
        chains: Default::default(),
    };
    if cache.ttl.is_zero() {
        is.push("cache.ttl", "must be greater than 0");
    }
    cache
}

/// `[[cache.thresholds]]`: per-model thresholds.
fn threshold_overrides(raw: &[RawThreshold], is: &mut Issues) -> Vec<ThresholdOverride> {
    let mut thresholds = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let model_glob = is.glob(&format!("cache.thresholds[{i}].model"), &t.model);
        thresholds.push(ThresholdOverride {
            model_glob,
            threshold: is.threshold(&format!("cache.thresholds[{i}].threshold"), t.threshold),
            verified_threshold: t
                .verified_threshold
                .map(|v| is.threshold(&format!("cache.thresholds[{i}].verified_threshold"), v)),
        });
    }
    thresholds
}

/// `[index]`.
fn index(x: &RawIndex, is: &mut Issues) -> IndexConfig {
    let fraction = x.rebuild_tombstone_fraction.unwrap_or(0.2);
    if !(0.0..=1.0).contains(&fraction) || fraction == 0.0 {
        is.push(
            "index.rebuild_tombstone_fraction",
            format!("{fraction} is not in (0, 1]"),
        );
    }
    IndexConfig {
        flat_max: x.flat_max.unwrap_or(10_000) as usize,
        hnsw_m: is.positive("index.hnsw_m", x.hnsw_m, 16) as usize,
        ef_construction: is.positive("index.ef_construction", x.ef_construction, 200) as usize,
        ef_search: is.positive("index.ef_search", x.ef_search, 64) as usize,
        rebuild_tombstone_fraction: fraction as f32,
        snapshot: x.snapshot.unwrap_or(true),
        snapshot_every: is.duration(
            "index.snapshot_every",
            x.snapshot_every.as_deref(),
            Duration::from_secs(600),
        ),
    }
}

/// `[embedding]`.
fn embedding(e: &RawEmbedding, is: &mut Issues) -> EmbeddingConfig {
    let device = match e.device.as_deref().unwrap_or("cpu") {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda,
        "metal" => Device::Metal,
        other => {
            is.push(
                "embedding.device",
                format!("'{other}' is not one of: cpu, cuda, metal"),
            );
            Device::Cpu
        }
    };
    if device == Device::Cuda && !cfg!(feature = "cuda") {
        is.push(
            "embedding.device",
            "'cuda' needs a build with `--features cuda`",
        );
    }
    if device == Device::Metal && !cfg!(feature = "metal") {
        is.push(
            "embedding.device",
            "'metal' needs a build with `--features metal`",
        );
    }
    if let Some(sha) = &e.sha256 {
        if sha.len() != 64 || !sha.chars().all(|ch| ch.is_ascii_hexdigit()) {
            is.push("embedding.sha256", "must be 64 hex characters");
        }
    }
    let max_tokens = is.positive("embedding.max_tokens", e.max_tokens, 256) as usize;
    if max_tokens > 512 {
        is.push(
            "embedding.max_tokens",
            "BERT-style models take at most 512 tokens",
        );
    }
    let cpu_backend = match e.cpu_backend.as_deref() {
        None | Some("native") => crate::embed::CpuBackend::Native,
        Some("candle") => crate::embed::CpuBackend::Candle,
        Some(other) => {
            is.push(
                "embedding.cpu_backend",
                format!("'{other}' is not one of: native, candle"),
            );
            crate::embed::CpuBackend::Native
        }
    };
    EmbeddingConfig {
        model: e.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into()),
        revision: e.revision.clone(),
        device,
        max_tokens,
        sha256: e.sha256.as_deref().map(str::to_ascii_lowercase),
        threads: is.positive("embedding.threads", e.threads, 1) as usize,
        compute_threads: e.compute_threads.unwrap_or(0) as usize,
        cpu_backend,
        max_batch: is.positive("embedding.max_batch", e.max_batch, 32) as usize,
        lru_capacity: e.lru_capacity.unwrap_or(10_000) as usize,
        queue_capacity: is.positive("embedding.queue_capacity", e.queue_capacity, 1024) as usize,
    }
}

/// `[[providers]]`, in order (a name must not repeat an earlier one).
fn providers(raw: &[RawProvider], is: &mut Issues) -> Vec<ProviderConfig> {
    let mut providers = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let provider = provider(i, p, &providers, is);
        providers.push(provider);
    }
    providers
}

/// `providers[i]`, given the providers before it.
fn provider(
    i: usize,
    p: &RawProvider,
    before: &[ProviderConfig],
    is: &mut Issues,
) -> ProviderConfig {
    let path = |f: &str| format!("providers[{i}].{f}");
    let kind = match p.kind.as_str() {
        "openai" => ProviderKind::OpenAi,
        "azure" => ProviderKind::Azure,
        "anthropic" => ProviderKind::Anthropic,
        "gemini" => ProviderKind::Gemini,
        other => {
            is.push(
                path("kind"),
                format!("'{other}' is not one of: openai, azure, anthropic, gemini"),
            );
            ProviderKind::OpenAi
        }
    };
    if p.name.trim().is_empty() {
        is.push(path("name"), "must not be empty");
    }
    if before.iter().any(|q| q.name == p.name) {
        is.push(
            path("name"),
            format!("duplicate provider name '{}'", p.name),
        );
    }
    match reqwest::Url::parse(&p.base_url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        Ok(u) => is.push(
            path("base_url"),
            format!("scheme '{}' is not http(s)", u.scheme()),
        ),
        Err(e) => is.push(
            path("base_url"),
            format!("'{}' is not a URL: {e}", p.base_url),
        ),
    }
    if let Some(env) = &p.api_key_env {
        if env.is_empty() || env.contains('=') {
            is.push(path("api_key_env"), "must be an environment variable name");
        }
    }
    let provider = ProviderConfig {
        name: p.name.clone(),
        kind,
        base_url: p.base_url.trim_end_matches('/').to_string(),
        api_key_env: p.api_key_env.clone(),
        connect_timeout: is.duration(
            &path("connect_timeout"),
            p.connect_timeout.as_deref(),
            Duration::from_secs(5),
        ),
        request_timeout: is.duration(
            &path("request_timeout"),
            p.request_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        read_timeout: is.duration(
            &path("read_timeout"),
            p.read_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        max_retries: p.max_retries.unwrap_or(2) as u32,
        backoff_base: is.duration(
            &path("backoff_base"),
            p.backoff_base.as_deref(),
            Duration::from_millis(100),
        ),
        backoff_max: is.duration(
            &path("backoff_max"),
            p.backoff_max.as_deref(),
            Duration::from_secs(5),
        ),
        breaker_failures: is.positive(&path("breaker_failures"), p.breaker_failures, 5) as u32,
        breaker_cooldown: is.duration(
            &path("breaker_cooldown"),
            p.breaker_cooldown.as_deref(),
            Duration::from_secs(30),
        ),
        api_version: p.api_version.clone(),
        // --- Bounded upstream answers (issue 12) ---
        max_response_bytes: is.positive(
            &path("max_response_bytes"),
            p.max_response_bytes,
            crate::providers::DEFAULT_MAX_RESPONSE_BYTES as u64,
        ) as usize,
        max_event_bytes: is.positive(
            &path("max_event_bytes"),
            p.max_event_bytes,
            crate::providers::DEFAULT_MAX_EVENT_BYTES as u64,
        ) as usize,
        stream_timeout: is.duration(
            &path("stream_timeout"),
            p.stream_timeout.as_deref(),
            crate::providers::DEFAULT_STREAM_TIMEOUT,
        ),
    };
    if provider.stream_timeout.is_zero() {
        is.push(path("stream_timeout"), "must be greater than 0");
    }
    provider
}

/// `[[routes]]`: each names providers of `providers`.
fn routes(raw: &[RawRoute], providers: &[ProviderConfig], is: &mut Issues) -> Vec<RouteConfig> {
    let mut routes = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let path = |f: &str| format!("routes[{i}].{f}");
        let model_glob = is.glob(&path("model"), &r.model);
        let mut targets: Vec<RouteTarget> = r
            .providers
            .iter()
            .map(|p| RouteTarget {
                provider: p.clone(),
                model: None,
                weight: None,
            })
            .collect();
        if !r.providers.is_empty() && !r.targets.is_empty() {
            is.push(
                path("targets"),
                "give either `providers` or `targets`, not both",
            );
        }
        targets.extend(r.targets.iter().map(|t| RouteTarget {
            provider: t.provider.clone(),
            model: t.model.clone(),
            weight: t.weight,
        }));
        if targets.is_empty() {
            is.push(path("providers"), "a route needs at least one provider");
        }
        for (j, t) in targets.iter().enumerate() {
            if !providers.iter().any(|p| p.name == t.provider) {
                is.push(
                    format!("routes[{i}].providers[{j}]"),
                    format!("unknown provider '{}'", t.provider),
                );
            }
        }
        routes.push(RouteConfig {
            model_glob,
            targets,
            threshold: r.threshold.map(|t| is.threshold(&path("threshold"), t)),
            verified_threshold: r
                .verified_threshold
                .map(|t| is.threshold(&path("verified_threshold"), t)),
            cache_tool_calls: super::tools::cache_tool_calls(r),
        });
    }
    routes
}

/// `[[prices]]`.
fn prices(raw: &[RawPrice], is: &mut Issues) -> Vec<PriceConfig> {
    let mut prices = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let model_glob = is.glob(&format!("prices[{i}].model"), &p.model);
        for (field, v) in [
            ("input_per_mtok", p.input_per_mtok),
            ("output_per_mtok", p.output_per_mtok),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                is.push(
                    format!("prices[{i}].{field}"),
                    format!("{v} is not a non-negative price"),
                );
            }
        }
        prices.push(PriceConfig {
            model_glob,
            price: Price {
                input_per_mtok: p.input_per_mtok,
                output_per_mtok: p.output_per_mtok,
            },
        });
    }
    prices
}

/// `[[cache.namespaces]]`: names as the header allows them, each listing key hashes. A value
/// that is not a hash is never echoed: it may be a key pasted by mistake.
fn namespace_grants(raw: &[RawNamespace], is: &mut Issues) -> Vec<NamespaceGrant> {
    let mut grants: Vec<NamespaceGrant> = Vec::new();
    for (i, n) in raw.iter().enumerate() {
        let path = |f: &str| format!("cache.namespaces[{i}].{f}");
        if !grants::valid_namespace(&n.name) {
            is.push(
                path("name"),
                "must be 1 to 128 printable ASCII characters without spaces",
            );
        } else if grants.iter().any(|g| g.name == n.name) {
            is.push(path("name"), format!("duplicate namespace '{}'", n.name));
        }
        if n.keys.is_empty() {
            is.push(
                path("keys"),
                "list the hash of at least one API key (`deja key-hash` prints it)",
            );
        }
        let mut keys = Vec::new();
        for (j, k) in n.keys.iter().enumerate() {
            match KeyHash::parse(k.trim()) {
                Some(h) => keys.push(h),
                None => is.push(
                    format!("cache.namespaces[{i}].keys[{j}]"),
                    "not \"sha256:\" followed by 64 hex digits: list the SHA-256 of each key, as \
                     `deja key-hash` prints it, never a key itself",
                ),
            }
        }
        grants.push(NamespaceGrant {
            name: n.name.clone(),
            keys,
        });
    }
    grants
}
