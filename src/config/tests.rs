use super::*;
use std::time::Duration;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Vec::<(String, String)>::new(), Path::new("/base"))
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9000"
[cache]
dir = "./data"
threshold = 0.93
ttl = "7d"
max_entries = 1000
[[cache.thresholds]]
model = "gpt-4o*"
threshold = 0.97
[embedding]
model = "sentence-transformers/all-MiniLM-L6-v2"
device = "cpu"
max_tokens = 256
[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1/"
api_key_env = "OPENAI_API_KEY"
[[routes]]
model = "claude-*"
providers = ["openai"]
threshold = 0.99
[[routes]]
model = "*"
providers = ["openai"]
"#;

#[test]
fn valid_config_is_typed() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.server.listen.port(), 9000);
    assert_eq!(c.cache.dir, PathBuf::from("/base/./data"));
    assert_eq!(c.cache.ttl, Duration::from_secs(7 * 86400));
    assert_eq!(c.cache.max_entries, 1000);
    assert_eq!(c.providers[0].base_url, "https://api.openai.com/v1");
    assert_eq!(c.providers[0].kind, ProviderKind::OpenAi);
    assert_eq!(c.routes.len(), 2);
    assert!(c.cache.guards, "guards are on by default");
}

#[test]
fn thresholds_resolve_route_then_model_then_default() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.threshold_for("claude-3-haiku"), 0.99);
    assert_eq!(c.threshold_for("gpt-4o-mini"), 0.97);
    assert_eq!(c.threshold_for("llama3"), 0.93);
}

#[test]
fn empty_config_uses_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.cache.threshold, validate::DEFAULT_THRESHOLD);
    assert_eq!(
        c.cache.verified_threshold,
        validate::DEFAULT_VERIFIED_THRESHOLD
    );
    assert_eq!(c.embedding.model, validate::DEFAULT_MODEL);
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.embedding.cpu_backend, crate::embed::CpuBackend::Native);
    assert_eq!(c.embedding.compute_threads, 0);
}

#[test]
fn the_shipped_config_toml_carries_the_default_decision_rule() {
    let shipped = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config.toml"
    )))
    .unwrap();
    assert_eq!(shipped.cache.threshold, validate::DEFAULT_THRESHOLD);
    assert_eq!(
        shipped.cache.verified_threshold,
        validate::DEFAULT_VERIFIED_THRESHOLD
    );
    assert!(shipped.cache.guards);
}

#[test]
fn cpu_backend_is_parsed_and_checked() {
    let c = parse("[embedding]\ncpu_backend = \"candle\"\ncompute_threads = 1\n").unwrap();
    assert_eq!(c.embedding.cpu_backend, crate::embed::CpuBackend::Candle);
    assert_eq!(c.embedding.compute_threads, 1);
    let err = parse("[embedding]\ncpu_backend = \"onnx\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("embedding.cpu_backend") && err.contains("native, candle"),
        "{err}"
    );
}

#[test]
fn index_snapshot_keys_are_parsed_and_checked() {
    let c = parse("").unwrap();
    assert!(c.index.snapshot);
    assert_eq!(c.index.snapshot_every, Duration::from_secs(600));
    let c = parse("[index]\nsnapshot = false\nsnapshot_every = \"0s\"\n").unwrap();
    assert!(!c.index.snapshot);
    assert!(c.index.snapshot_every.is_zero());
    let err = parse("[index]\nsnapshot_every = \"often\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("index.snapshot_every"), "{err}");
}

#[test]
fn unknown_field_names_its_path() {
    let err = parse("[cache]\nthreshhold = 0.9\n").unwrap_err();
    let issues = err.issues();
    assert_eq!(issues.len(), 1);
    assert!(issues[0].path.contains("cache"), "{issues:?}");
    assert!(issues[0].message.contains("threshhold"), "{issues:?}");
}

#[test]
fn wrong_type_names_its_path() {
    let err = parse("[cache]\nmax_entries = \"lots\"\n").unwrap_err();
    assert_eq!(err.issues()[0].path, "cache.max_entries");
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let text = r#"
[server]
listen = "nowhere"
[cache]
threshold = 1.5
ttl = "seven days"
[embedding]
device = "tpu"
[[providers]]
name = "a"
kind = "bard"
base_url = "ftp://x"
[[routes]]
model = "*"
providers = ["missing"]
"#;
    let err = parse(text).unwrap_err();
    let paths: Vec<&str> = err.issues().iter().map(|i| i.path.as_str()).collect();
    for expected in [
        "server.listen",
        "cache.threshold",
        "cache.ttl",
        "embedding.device",
        "providers[0].kind",
        "providers[0].base_url",
        "routes[0].providers[0]",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
    let shown = err.to_string();
    assert!(shown.contains("cache.ttl"), "{shown}");
}

#[test]
fn env_overrides_win_over_file() {
    let env = vec![
        ("DEJA__CACHE__THRESHOLD".to_string(), "0.91".to_string()),
        (
            "DEJA__SERVER__LISTEN".to_string(),
            "127.0.0.1:7777".to_string(),
        ),
        ("DEJA__EMBEDDING__DEVICE".to_string(), "cpu".to_string()),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let c = Config::from_toml_str(GOOD, env, Path::new("/")).unwrap();
    assert_eq!(c.cache.threshold, 0.91);
    assert_eq!(c.server.listen.port(), 7777);
}

#[test]
fn env_override_with_unknown_key_is_rejected() {
    let env = vec![("DEJA__CACHE__NOPE".to_string(), "1".to_string())];
    let err = Config::from_toml_str(GOOD, env, Path::new("/")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn shipped_config_toml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Config::from_toml_str(&text, Vec::<(String, String)>::new(), Path::new("/")).unwrap();
    assert!(!c.routes.is_empty());
}

#[test]
fn route_with_both_forms_is_rejected() {
    let text = r#"
[[providers]]
name = "a"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[[routes]]
model = "*"
providers = ["a"]
targets = [{ provider = "a", model = "x" }]
"#;
    assert!(parse(text).is_err());
}

#[test]
fn model_globs_are_compiled_once_and_keep_their_text() {
    let g = ModelGlob::new("gpt-4o*").unwrap();
    assert_eq!(g.as_str(), "gpt-4o*");
    assert!(g.matches("gpt-4o-mini"));
    assert!(!g.matches("gpt-3.5-turbo"));
    assert!(ModelGlob::new("gpt-[").is_err());
    assert!(!ModelGlob::invalid("gpt-[").matches("gpt-["));
    let c = parse(GOOD).unwrap();
    assert_eq!(c.routes[1].model_glob.as_str(), "*");
    assert!(c.routes[1].model_glob.matches("anything"));
}

#[test]
fn an_invalid_glob_is_a_config_issue() {
    let err = parse(
        "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1\"\n\
         [[routes]]\nmodel = \"gpt-[\"\nproviders = [\"p\"]\n",
    )
    .unwrap_err();
    let issues = err.issues();
    assert!(
        issues
            .iter()
            .any(|i| i.path == "routes[0].model" && i.message.contains("invalid glob")),
        "{issues:?}"
    );
}

// --- Bounded upstream answers (issue 12) ---

const ONE_PROVIDER: &str = r#"
[[providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
"#;

#[test]
fn issue12_upstream_bounds_have_defaults_and_parse() {
    let c = parse(ONE_PROVIDER).unwrap();
    let p = &c.providers[0];
    assert_eq!(p.max_response_bytes, 64 << 20);
    assert_eq!(p.max_event_bytes, 1 << 20);
    assert_eq!(p.stream_timeout, Duration::from_secs(600));
    assert_eq!(c.cache.max_entry_bytes, 4 << 20);
    let text = format!(
        "[cache]\nmax_entry_bytes = 1000\n{ONE_PROVIDER}max_response_bytes = 2000\n\
         max_event_bytes = 300\nstream_timeout = \"90s\"\n"
    );
    let c = parse(&text).unwrap();
    let p = &c.providers[0];
    assert_eq!(
        (p.max_response_bytes, p.max_event_bytes, p.stream_timeout),
        (2000, 300, Duration::from_secs(90))
    );
    assert_eq!(c.cache.max_entry_bytes, 1000);
    let s = crate::providers::ProviderSettings::from(p);
    assert_eq!(
        (s.max_response_bytes, s.max_event_bytes, s.stream_timeout),
        (2000, 300, Duration::from_secs(90))
    );
}

#[test]
fn issue12_upstream_bounds_reject_bad_values_all_at_once() {
    let text = format!(
        "[cache]\nmax_entry_bytes = 0\n{ONE_PROVIDER}max_response_bytes = 0\n\
         max_event_bytes = 0\nstream_timeout = \"0s\"\n"
    );
    let err = parse(&text).unwrap_err();
    let paths: Vec<&str> = err.issues().iter().map(|i| i.path.as_str()).collect();
    for want in [
        "cache.max_entry_bytes",
        "providers[0].max_response_bytes",
        "providers[0].max_event_bytes",
        "providers[0].stream_timeout",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    let err = parse(&format!("{ONE_PROVIDER}stream_timeout = \"soon\"\n")).unwrap_err();
    assert!(
        err.to_string().contains("providers[0].stream_timeout"),
        "{err}"
    );
}

// Connection bounds (issue 12).
#[test]
fn server_connection_bounds_are_parsed_and_checked() {
    let c = parse("").unwrap();
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(120));
    assert_eq!(c.server.body_read_timeout, Duration::from_secs(30));
    assert_eq!(c.server.max_connections, 1024);
    let c = parse(
        "[server]\nheader_read_timeout = \"250ms\"\nidle_timeout = \"5s\"\n\
         body_read_timeout = \"2s\"\nmax_connections = 8\n",
    )
    .unwrap();
    assert_eq!(c.server.header_read_timeout, Duration::from_millis(250));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(5));
    assert_eq!(c.server.body_read_timeout, Duration::from_secs(2));
    assert_eq!(c.server.max_connections, 8);
    let err = parse(
        "[server]\nheader_read_timeout = \"0s\"\nidle_timeout = \"soon\"\n\
         body_read_timeout = \"0ms\"\nmax_connections = 0\n",
    )
    .unwrap_err();
    let paths: Vec<&str> = err.issues().iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "server.header_read_timeout",
            "server.idle_timeout",
            "server.body_read_timeout",
            "server.max_connections"
        ],
        "{err}"
    );
}

#[test]
fn issue12_unknown_keys_type_errors_and_values_are_reported_together() {
    let text = r#"
[server]
listne = "127.0.0.1:1"
max_body_bytes = "big"
[cache]
threshold = 1.5
max_entries = "lots"
colour = "blue"
[[cache.thresholds]]
model = "gpt-*"
threshold = "high"
[index]
hnsw_m = 0
[embedding]
device = "tpu"
[[providers]]
name = "first"
base_url = "http://127.0.0.1:1/v1"
[[providers]]
name = "second"
kind = "openai"
base_url = "ftp://x"
retries = 3
[[routes]]
model = "*"
providers = ["second", 7]
[surprise]
x = 1
"#;
    let err = parse(text).unwrap_err();
    let issues = err.issues();
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    for expected in [
        // unknown keys
        "server.listne",
        "cache.colour",
        "providers[1].retries",
        "surprise",
        // type errors
        "server.max_body_bytes",
        "cache.max_entries",
        "cache.thresholds[0].threshold",
        "routes[0].providers[1]",
        // a missing required field: the element is left out, later indices keep their number
        "providers[0].kind",
        // value errors, judged on what remains
        "cache.threshold",
        "index.hnsw_m",
        "embedding.device",
        "providers[1].base_url",
    ] {
        assert!(
            paths.contains(&expected),
            "missing {expected} in {issues:#?}"
        );
    }
    let unknown = issues.iter().find(|i| i.path == "cache.colour").unwrap();
    assert!(unknown.message.contains("unknown field"), "{unknown:?}");
    let typed = issues
        .iter()
        .find(|i| i.path == "cache.max_entries")
        .unwrap();
    assert!(typed.message.contains("invalid type"), "{typed:?}");
    // Each problem once, with nothing judged twice.
    let mut sorted = paths.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), paths.len(), "{paths:?}");
}

#[test]
fn issue12_env_override_problems_do_not_hide_file_problems() {
    let env = vec![
        ("DEJA__CACHE__NOPE".to_string(), "1".to_string()),
        ("DEJA__".to_string(), "1".to_string()),
    ];
    let err = Config::from_toml_str("[cache]\nthreshold = 3\n", env, Path::new("/")).unwrap_err();
    let paths: Vec<&str> = err.issues().iter().map(|i| i.path.as_str()).collect();
    for expected in ["DEJA__", "cache.nope", "cache.threshold"] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
}

#[test]
fn issue12_a_config_without_routes_warns() {
    let c = parse("").unwrap();
    let warnings = c.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].path, "routes");
    assert!(warnings[0].message.contains("404"), "{warnings:?}");
    assert!(parse(GOOD).unwrap().warnings().is_empty());
}

#[test]
fn namespace_grants_are_parsed_and_checked() {
    let a = KeyHash::of("sk-a");
    let text = format!(
        "[[cache.namespaces]]\nname = \"team-a\"\nkeys = [\"{a}\", \"{}\"]\n",
        a.to_string()
            .to_ascii_uppercase()
            .replace("SHA256:", "sha256:")
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.cache.namespaces.len(), 1);
    assert_eq!(c.cache.namespaces[0].name, "team-a");
    assert!(c.cache.namespaces[0].allows(&a));
    assert!(!c.cache.namespaces[0].allows(&KeyHash::of("sk-b")));
    assert!(parse("").unwrap().cache.namespaces.is_empty());

    let bad = r#"
[[cache.namespaces]]
name = "team a"
keys = ["sk-live-secret"]
[[cache.namespaces]]
name = "team-b"
keys = []
[[cache.namespaces]]
name = "team-b"
keys = ["sha256:00"]
"#;
    let err = parse(bad).unwrap_err();
    let paths: Vec<&str> = err.issues().iter().map(|i| i.path.as_str()).collect();
    for expected in [
        "cache.namespaces[0].name",
        "cache.namespaces[0].keys[0]",
        "cache.namespaces[1].keys",
        "cache.namespaces[2].name",
        "cache.namespaces[2].keys[0]",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
    // A key pasted by mistake is never echoed back.
    assert!(!err.to_string().contains("sk-live-secret"), "{err}");
}

#[test]
fn issue15_gemini_is_a_provider_kind() {
    let text = r#"
[[providers]]
name = "g"
kind = "gemini"
base_url = "https://generativelanguage.googleapis.com/v1beta/openai"
api_key_env = "GEMINI_API_KEY"
[[routes]]
model = "gemini-*"
providers = ["g"]
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.providers[0].kind, ProviderKind::Gemini);
    let err = parse(&text.replace("\"gemini\"", "\"gemini-pro\"")).unwrap_err();
    assert_eq!(err.issues()[0].path, "providers[0].kind");
    assert!(err.to_string().contains("gemini"), "{err}");
}
