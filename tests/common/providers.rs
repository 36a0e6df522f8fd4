//! Helpers shared by the router tests (`providers_*`).
#![allow(dead_code)]

use deja::providers::{
    ProviderError, ProviderSettings, RouteSettings, Router, UpstreamBody, UpstreamResponse,
};
use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;

/// Fast backoff so retry tests take milliseconds; generous timeouts so a loaded machine does not
/// turn into a false timeout.
pub fn fast(mut p: ProviderSettings) -> ProviderSettings {
    p.backoff_base = Duration::from_millis(1);
    p.backoff_max = Duration::from_millis(5);
    p.request_timeout = Duration::from_secs(30);
    p.read_timeout = Duration::from_secs(30);
    p
}

/// One route, `*` → `chain`.
pub fn router(providers: Vec<ProviderSettings>, chain: &[&str]) -> Router {
    Router::new(providers, vec![RouteSettings::new("*", chain)]).unwrap()
}

pub fn json_body(resp: &UpstreamResponse) -> Value {
    serde_json::from_slice(resp.json_bytes().expect("a JSON body")).unwrap()
}

/// Drains a stream body: (all bytes, the error that ended it, if any).
pub async fn drain(resp: UpstreamResponse) -> (Vec<u8>, Option<ProviderError>) {
    let UpstreamBody::Stream(mut s) = resp.body else {
        panic!("expected a stream body");
    };
    let mut bytes = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => bytes.extend_from_slice(&b),
            Err(e) => return (bytes, Some(e)),
        }
    }
    (bytes, None)
}
