//! The router against an Azure OpenAI mock: deployment paths (the possibly renamed model),
//! the `api-version` query parameter, the `api-key` header, byte-exact pass-through of
//! OpenAI-dialect answers, and Anthropic-dialect requests translated for Azure.

mod common;

use common::mock_upstream::MockUpstream;
use common::providers::{drain, fast, json_body, router};
use deja::api::ApiKind;
use deja::providers::{
    ProviderSettings, RouteSettings, RouteTarget, Router, SseParser, UpstreamRequest,
    UpstreamResponse, AZURE_DEFAULT_API_VERSION,
};
use serde_json::{json, Value};

fn azure(name: &str, up: &MockUpstream) -> ProviderSettings {
    fast(ProviderSettings::azure(name, up.azure_base_url()))
}

fn chat(text: &str, stream: bool) -> UpstreamRequest {
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    });
    UpstreamRequest::post_json("/chat/completions", &body, stream)
        .with_api(ApiKind::Chat)
        .with_client_key(Some("azure-client-key".to_string()))
}

/// The bytes of a stream that must end cleanly.
async fn drain_ok(resp: UpstreamResponse) -> Vec<u8> {
    let (bytes, err) = drain(resp).await;
    assert!(err.is_none(), "a complete stream: {err:?}");
    bytes
}

#[tokio::test]
async fn chat_goes_to_the_deployment_with_api_version_and_api_key() {
    let var = "DEJA_TEST_KEY_PROVIDERS_AZURE_1";
    std::env::set_var(var, "azure-env-key");
    let up = MockUpstream::start().await;
    let mut p = azure("az", &up);
    p.api_key_env = Some(var.to_string());
    let r = router(vec![p], &["az"]);
    let req = chat("hello azure", false);
    let sent = req.body.clone();
    let resp = r.send(req, "gpt-4o-mini").await.unwrap();
    assert_eq!(resp.status, 200);
    let rec = up.last_request().unwrap();
    assert_eq!(rec.path, "/openai/deployments/gpt-4o-mini/chat/completions");
    assert_eq!(
        rec.query_param("api-version").as_deref(),
        Some(AZURE_DEFAULT_API_VERSION)
    );
    assert_eq!(rec.header("api-key").as_deref(), Some("azure-env-key"));
    assert_eq!(rec.authorization(), None);
    assert_eq!(rec.raw_body, sent, "OpenAI bodies go to Azure untouched");
    assert_eq!(resp.json_bytes().unwrap(), &rec.response_body);
    assert_eq!(
        json_body(&resp)["choices"][0]["message"]["content"],
        "Answer #1 to: hello azure"
    );
}

#[tokio::test]
async fn deployment_is_the_renamed_model_and_the_version_is_configurable() {
    let up = MockUpstream::start().await;
    let mut p = azure("az", &up);
    p.api_version = Some("2025-01-01-preview".to_string());
    let mut route = RouteSettings::new("*", &[]);
    let mut target = RouteTarget::new("az");
    target.model = Some("prod-gpt4o".to_string());
    route.targets.push(target);
    let r = Router::new(vec![p], vec![route]).unwrap();
    let resp = r.send(chat("x", false), "gpt-4o-mini").await.unwrap();
    assert_eq!(resp.model.as_deref(), Some("prod-gpt4o"));
    let rec = up.last_request().unwrap();
    assert_eq!(rec.path, "/openai/deployments/prod-gpt4o/chat/completions");
    assert_eq!(rec.body["model"], "prod-gpt4o");
    assert_eq!(
        rec.query_param("api-version").as_deref(),
        Some("2025-01-01-preview")
    );
    // Without a key the mock refuses as Azure does; the refusal passes through untouched.
    let mut req = chat("x", false);
    req.client_key = None;
    req.headers
        .insert("api-key", "client-sent-header".parse().unwrap());
    req.headers
        .insert("x-api-key", "client-sent-header".parse().unwrap());
    let resp = r.send(req, "gpt-4o-mini").await.unwrap();
    assert_eq!(
        resp.status, 401,
        "client credential headers are never forwarded as is"
    );
    assert_eq!(up.last_request().unwrap().header("api-key"), None);
    assert_eq!(json_body(&resp)["error"]["code"], "401");
}

#[tokio::test]
async fn client_key_goes_in_api_key_and_streams_pass_through() {
    let up = MockUpstream::start().await;
    let r = router(vec![azure("az", &up)], &["az"]);
    let resp = r
        .send(chat("stream me", true), "gpt-4o-mini")
        .await
        .unwrap();
    let bytes = drain_ok(resp).await;
    let rec = up.last_request().unwrap();
    assert_eq!(rec.header("api-key").as_deref(), Some("azure-client-key"));
    assert_eq!(bytes, rec.response_body.to_vec(), "byte for byte");

    let legacy = UpstreamRequest::post_json(
        "/completions",
        &json!({"model": "instruct", "prompt": "Say hi"}),
        false,
    )
    .with_api(ApiKind::Completions)
    .with_client_key(Some("k".to_string()));
    let resp = r.send(legacy, "instruct").await.unwrap();
    assert_eq!(
        up.last_request().unwrap().path,
        "/openai/deployments/instruct/completions"
    );
    assert_eq!(json_body(&resp)["object"], "text_completion");
}

#[tokio::test]
async fn rate_limits_are_retried_with_retry_after_ms() {
    let up = MockUpstream::builder()
        .fail_n_times(1, 429)
        .with_retry_after_ms(5)
        .start()
        .await;
    let r = router(vec![azure("az", &up)], &["az"]);
    let resp = r.send(chat("x", false), "gpt-4o-mini").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn anthropic_dialect_is_translated_for_azure() {
    let up = MockUpstream::start().await;
    let r = router(vec![azure("az", &up)], &["az"]);
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 50, "stream": true,
                      "system": "Be brief.",
                      "messages": [{"role": "user", "content": "naïve café"}]});
    let req = UpstreamRequest::post_json("/messages", &body, true)
        .with_api(ApiKind::Messages)
        .with_client_key(Some("k".to_string()));
    let resp = r.send(req, "gpt-4o-mini").await.unwrap();
    let rec = up.last_request().unwrap();
    assert_eq!(rec.path, "/openai/deployments/gpt-4o-mini/chat/completions");
    assert_eq!(
        rec.body["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(rec.body["max_tokens"], 50);
    let bytes = drain_ok(resp).await;
    let events = SseParser::new().feed(&bytes);
    assert_eq!(events[0].event.as_deref(), Some("message_start"));
    assert_eq!(
        events.last().unwrap().event.as_deref(),
        Some("message_stop")
    );
    let text: String = events
        .iter()
        .filter(|e| e.event.as_deref() == Some("content_block_delta"))
        .map(|e| {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            v["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, "Answer #1 to: naïve café");
}

/// A Responses request goes to Azure natively, on its v1 surface: `/openai/v1/responses`, the
/// renamed model (the deployment) in the body, no `api-version`, the key in `api-key`, and the
/// Responses answer passed through untouched.
#[tokio::test]
async fn responses_go_to_the_v1_surface_natively() {
    let up = MockUpstream::start().await;
    let mut route = RouteSettings::new("*", &[]);
    let mut target = RouteTarget::new("az");
    target.model = Some("prod-gpt4o".to_string());
    route.targets.push(target);
    let r = Router::new(vec![azure("az", &up)], vec![route]).unwrap();
    let body =
        json!({"model": "gpt-4o-mini", "input": "hello responses", "instructions": "be brief"});
    let req = UpstreamRequest::post_json("/responses", &body, false)
        .with_api(ApiKind::Responses)
        .with_client_key(Some("azure-client-key".to_string()));
    let resp = r.send(req, "gpt-4o-mini").await.unwrap();
    assert_eq!(resp.status, 200);
    let rec = up.last_request().unwrap();
    assert_eq!(rec.path, "/openai/v1/responses");
    assert_eq!(rec.query_param("api-version"), None);
    assert_eq!(rec.header("api-key").as_deref(), Some("azure-client-key"));
    assert_eq!(rec.body["model"], "prod-gpt4o");
    assert_eq!(
        rec.body["input"], "hello responses",
        "not translated to chat"
    );
    assert_eq!(resp.json_bytes().unwrap(), &rec.response_body);
    assert_eq!(json_body(&resp)["object"], "response");
}
