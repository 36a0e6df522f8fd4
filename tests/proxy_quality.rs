//! Hit quality on live traffic (issue 17, section 3) through HTTP: feedback tightens an entry's
//! own threshold, shadow checks compare semantic hits with fresh upstream answers off the
//! client's path, and both record the labeled pairs `deja bench` reads.

mod common;

use std::time::{Duration, Instant};

use common::harness::{client, hash_model, Deja, Reply};
use common::mock_upstream::MockUpstream;
use serde_json::{json, Value};

/// Threshold low enough that the hash embedder's word-overlap neighbours hit.
const CACHE: &str = "threshold = 0.6\nverified_threshold = 0.6";

fn chat(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}

async fn ask(d: &Deja, text: &str, key: &str, extra: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    d.post("/v1/chat/completions", &chat(text), &headers).await
}

async fn feedback(d: &Deja, key: &str, body: Value) -> Reply {
    let auth = format!("Bearer {key}");
    d.post("/v1/deja/feedback", &body, &[("authorization", &auth)])
        .await
}

fn similarity(r: &Reply) -> f32 {
    r.header("x-deja-similarity").parse().unwrap()
}

/// Polls `f` until it holds (background work finishing), for at most 20 s.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < Duration::from_secs(20), "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const NO_STORE: (&str, &str) = ("cache-control", "no-store");

#[tokio::test]
async fn issue17_feedback_tightens_a_hit_into_a_miss_for_it_and_its_neighbours() {
    let mock = MockUpstream::builder()
        .reply_with(|_| "It is sunny in Paris today.".into())
        .start()
        .await;
    let d = Deja::start_with(&mock.base_url(), hash_model(), CACHE, "").await;
    let seed = "tell me about the weather in paris today";
    assert_eq!(ask(&d, seed, "k", &[]).await.header("x-deja-cache"), "miss");
    d.wait_entries(1).await;

    // Three neighbours of the seed, all hits before any feedback.
    let wrong = ask(
        &d,
        "tell me about the weather in paris today please",
        "k",
        &[],
    )
    .await;
    let farther = ask(
        &d,
        "please tell me about the weather in paris now",
        "k",
        &[],
    )
    .await;
    let closer = ask(&d, "tell me about the weather in paris today ok", "k", &[]).await;
    for r in [&wrong, &farther, &closer] {
        assert_eq!(r.header("x-deja-cache"), "semantic-hit", "{:?}", r.headers);
        assert!(r.header("x-deja-response-id").starts_with("dejaresp-"));
    }
    let entry = wrong.header("x-deja-entry").to_string();
    let (s_wrong, s_farther, s_closer) = (
        similarity(&wrong),
        similarity(&farther),
        similarity(&closer),
    );
    assert!(
        s_farther < s_wrong && s_wrong < s_closer,
        "the test needs neighbours on both sides: {s_farther} < {s_wrong} < {s_closer}"
    );
    assert_eq!(mock.calls(), 1);

    // Another tenant cannot judge this client's hit: it is not found for them.
    let id = wrong.header("x-deja-response-id").to_string();
    let other = feedback(&d, "other", json!({"response_id": id, "correct": false})).await;
    assert_eq!(other.status, 404, "{}", other.text);
    assert_eq!(other.body["error"]["param"], "response_id");

    let r = feedback(&d, "k", json!({"response_id": id, "correct": false})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["recorded"], true);
    assert_eq!(r.body["verdict"], "wrong");
    assert_eq!(r.body["entry_id"].to_string(), entry);
    let floor = r.body["entry_min_similarity"].as_f64().unwrap() as f32;
    assert!((floor - s_wrong).abs() < 1e-3, "{floor} vs {s_wrong}");

    // The same query and the less similar neighbour now miss that entry; the closer one
    // still hits it. no-store keeps their answers out, so the seed stays the only entry.
    let again = ask(
        &d,
        "tell me about the weather in paris today please",
        "k",
        &[NO_STORE],
    )
    .await;
    assert_eq!(again.header("x-deja-cache"), "miss", "{:?}", again.headers);
    let farther = ask(
        &d,
        "please tell me about the weather in paris now",
        "k",
        &[NO_STORE],
    )
    .await;
    assert_eq!(farther.header("x-deja-cache"), "miss");
    let closer_again = ask(&d, "tell me about the weather in paris today ok", "k", &[]).await;
    assert_eq!(closer_again.header("x-deja-cache"), "semantic-hit");
    assert_eq!(mock.calls(), 3, "the two tightened misses went upstream");
    let q = &d.state.metrics().quality;
    assert_eq!(q.tightened.get(), 2);
    assert_eq!(
        q.feedback.with_label_values(&["wrong", "semantic"]).get(),
        1
    );

    // One verdict per served answer.
    let twice = feedback(&d, "k", json!({"response_id": id, "correct": false})).await;
    assert_eq!(twice.status, 404, "{}", twice.text);

    // By entry id: the latest remembered hit of the entry (the closer query's).
    let r = feedback(&d, "k", json!({"entry_id": entry, "correct": true})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["verdict"], "correct");
    assert!((r.body["similarity"].as_f64().unwrap() as f32 - s_closer).abs() < 1e-3);
    assert_eq!(
        q.feedback.with_label_values(&["correct", "semantic"]).get(),
        1
    );

    // Bad inputs: the field is named, unknown ids are 404, the body is bounded; and none of
    // them reached the upstream.
    let calls = mock.calls();
    let r = feedback(&d, "k", json!({"response_id": id})).await;
    assert_eq!(
        (r.status, r.body["error"]["param"].as_str()),
        (400, Some("correct"))
    );
    let r = feedback(&d, "k", json!({"entry_id": "x1", "correct": true})).await;
    assert_eq!(
        (r.status, r.body["error"]["param"].as_str()),
        (400, Some("entry_id"))
    );
    let r = feedback(&d, "k", json!({"entry_id": 987654, "correct": false})).await;
    assert_eq!(
        (r.status, r.body["error"]["param"].as_str()),
        (404, Some("entry_id"))
    );
    let big = json!({"entry_id": 1, "correct": false, "note": "x".repeat(20_000)});
    let r = feedback(&d, "k", big).await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(mock.calls(), calls);

    // The labels export as a `pairs` dataset the bench reads.
    let quality = d.state.quality().unwrap();
    let mut out = Vec::new();
    assert_eq!(quality.export(&mut out).unwrap(), 2);
    let path = d.dir.join("recorded.jsonl");
    std::fs::write(&path, &out).unwrap();
    let deja::bench::dataset::Dataset::Pairs(rows) =
        deja::bench::dataset::load(&path, None).unwrap()
    else {
        panic!("not a pairs dataset: {}", String::from_utf8_lossy(&out));
    };
    let labels: Vec<(&str, &str, bool)> = rows
        .iter()
        .map(|r| (r.a.as_str(), r.b.as_str(), r.same))
        .collect();
    assert_eq!(
        labels,
        [
            (
                "tell me about the weather in paris today please",
                seed,
                false
            ),
            ("tell me about the weather in paris today ok", seed, true),
        ]
    );
    let summary = quality.summary(&d.state.config());
    assert_eq!(summary["feedback"], json!({"correct": 1, "wrong": 1}));
    assert_eq!(summary["tightened_entries"], 1);
}

#[tokio::test]
async fn issue17_shadow_checks_record_agreement_and_disagreement_off_the_client_path() {
    let mock = MockUpstream::builder()
        .reply_with(|_| "It is sunny in Paris today.".into())
        .start()
        .await;
    let cache = format!("{CACHE}\naudit_rate = 1.0");
    let d = Deja::start_with(&mock.base_url(), hash_model(), &cache, "").await;
    let seed = "tell me about the weather in paris today";
    ask(&d, seed, "k", &[]).await;
    d.wait_entries(1).await;
    let q = &d.state.metrics().quality;
    let checked = || {
        ["agree", "disagree", "error"]
            .iter()
            .map(|o| q.shadow.with_label_values(&[o]).get())
            .sum::<u64>()
    };

    // The upstream now takes its time: the client's hit must not wait for its shadow check.
    mock.set_latency(Duration::from_millis(1500));
    let hit = ask(
        &d,
        "tell me about the weather in paris today please",
        "k",
        &[],
    )
    .await;
    assert_eq!(hit.header("x-deja-cache"), "semantic-hit");
    assert_eq!(
        checked(),
        0,
        "the client's answer arrived before the shadow check's upstream answer"
    );
    eventually("the shadow check agrees", || {
        q.shadow.with_label_values(&["agree"]).get() == 1
    })
    .await;

    // An upstream that now answers something else: a disagreement.
    mock.set_latency(Duration::ZERO);
    mock.set_reply(|_| "Bananas are yellow and rich in potassium.".into());
    let hit = ask(
        &d,
        "please tell me about the weather in paris now",
        "k",
        &[],
    )
    .await;
    assert_eq!(hit.header("x-deja-cache"), "semantic-hit");
    eventually("the shadow check disagrees", || {
        q.shadow.with_label_values(&["disagree"]).get() == 1
    })
    .await;
    assert_eq!(mock.calls(), 3, "the seed and two shadow checks");
    assert_eq!(q.agreement.get(), 0.5);
    let (lo, hi) = (q.agreement_lower.get(), q.agreement_upper.get());
    assert!(lo > 0.0 && lo < 0.5 && hi > 0.5 && hi < 1.0, "{lo} {hi}");
    assert!(q.shadow_tokens.with_label_values(&["completion"]).get() > 0);

    let quality = d.state.quality().unwrap();
    eventually("both pairs recorded", || quality.ledger().len() == 2).await;
    let pairs = quality.ledger().pairs().unwrap();
    let labels: Vec<(&str, bool)> = pairs.iter().map(|p| (p.a.as_str(), p.same)).collect();
    assert_eq!(
        labels,
        [
            ("tell me about the weather in paris today please", true),
            ("please tell me about the weather in paris now", false),
        ]
    );
    assert!(pairs.iter().all(|p| p.b == seed));
    let summary = quality.summary(&d.state.config());
    assert_eq!(summary["shadow"]["compared"], 2);
    assert_eq!(summary["shadow"]["precision"], 0.5);
    assert_eq!(summary["shadow"]["interval"]["method"], "wilson");
    let metrics = client().get(d.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    for line in [
        "deja_semantic_hit_agreement 0.5",
        "deja_shadow_checks_total{outcome=\"disagree\"} 1",
        "deja_quality_pairs_recorded_total{same=\"false\",source=\"shadow\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing");
    }
    // A shadow disagreement is recorded, not acted on: the entry still serves.
    let again = ask(
        &d,
        "please tell me about the weather in paris now",
        "k",
        &[],
    )
    .await;
    assert_eq!(again.header("x-deja-cache"), "semantic-hit");
}

#[tokio::test]
async fn issue17_a_full_shadow_queue_drops_checks_and_counts_them() {
    let mock = MockUpstream::builder()
        .reply_with(|_| "It is sunny in Paris today.".into())
        .start()
        .await;
    let cache = format!("{CACHE}\naudit_rate = 1.0");
    let extra = "[quality]\naudit_queue = 1\naudit_concurrency = 1";
    let d = Deja::start_with(&mock.base_url(), hash_model(), &cache, extra).await;
    ask(&d, "tell me about the weather in paris today", "k", &[]).await;
    d.wait_entries(1).await;
    // Shadow checks now hang upstream: one runs, one waits, the rest must be dropped.
    mock.set_latency(Duration::from_secs(60));
    for _ in 0..5 {
        let hit = ask(
            &d,
            "tell me about the weather in paris today please",
            "k",
            &[],
        )
        .await;
        assert_eq!(hit.header("x-deja-cache"), "semantic-hit");
    }
    let dropped = d
        .state
        .metrics()
        .quality
        .shadow
        .with_label_values(&["dropped"])
        .get();
    assert!(
        (3..=5).contains(&dropped),
        "one check in flight and one queued at most: {dropped} of 5 dropped"
    );
    let summary = d.state.quality().unwrap().summary(&d.state.config());
    assert_eq!(summary["shadow"]["dropped"], dropped);
}

/// With `quality.judge_model`, the judge's yes or no decides a shadow check (here against the
/// answers' cosine both ways); without a verdict the cosine decides. Its calls, tokens and
/// cost are counted apart.
#[tokio::test]
async fn issue17_a_judge_model_decides_shadow_checks_and_its_cost_is_counted() {
    use std::sync::{Arc, Mutex};
    const SUNNY: &str = "It is sunny in Paris today.";
    // (what clients get, what the judge says)
    let say = Arc::new(Mutex::new((SUNNY.to_string(), "no".to_string())));
    let said = Arc::clone(&say);
    let mock = MockUpstream::builder()
        .reply_with(move |body| {
            let (answer, verdict) = said.lock().unwrap().clone();
            let system = body["messages"][0]["content"].as_str().unwrap_or("");
            if system == deja::quality::shadow_judge::SHADOW_JUDGE_SYSTEM {
                verdict
            } else {
                answer
            }
        })
        .start()
        .await;
    let cache = format!("{CACHE}\naudit_rate = 1.0");
    let extra = "[quality]\njudge_model = \"judge-mini\"\n\
                 [[prices]]\nmodel = \"judge-*\"\ninput_per_mtok = 1000000\noutput_per_mtok = 1000000\n";
    let d = Deja::start_with(&mock.base_url(), hash_model(), &cache, extra).await;
    ask(&d, "tell me about the weather in paris today", "k", &[]).await;
    d.wait_entries(1).await;
    let q = &d.state.metrics().quality;
    let j = &d.state.metrics().shadow_judge;
    let shadow = |o: &str| q.shadow.with_label_values(&[o]).get();

    // The same answer again (cosine 1), but the judge says no: a disagreement.
    let hit = ask(
        &d,
        "tell me about the weather in paris today please",
        "k",
        &[],
    )
    .await;
    assert_eq!(hit.header("x-deja-cache"), "semantic-hit");
    eventually("the judge's no", || shadow("disagree") == 1).await;
    assert_eq!(shadow("agree"), 0);
    assert_eq!(j.calls.with_label_values(&["disagree"]).get(), 1);
    let judged = mock.last_request().unwrap();
    let sent = &judged.body;
    assert_eq!(sent["model"], "judge-mini");
    let user = sent["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains(&format!("<answer_a>\n\"{SUNNY}\"\n</answer_a>")),
        "{user}"
    );
    assert!(user.contains("weather in paris today please"), "{user}");

    // Another answer (a low cosine), but the judge says yes: an agreement.
    *say.lock().unwrap() = (
        "Bananas are yellow and rich in potassium.".into(),
        "Yes.".into(),
    );
    let hit = ask(
        &d,
        "please tell me about the weather in paris now",
        "k",
        &[],
    )
    .await;
    assert_eq!(hit.header("x-deja-cache"), "semantic-hit");
    eventually("the judge's yes", || shadow("agree") == 1).await;
    assert_eq!(j.calls.with_label_values(&["agree"]).get(), 1);

    // No verdict: the cosine decides (a disagreement), and the judge's miss is counted.
    say.lock().unwrap().1 = "maybe".into();
    let hit = ask(
        &d,
        "tell me about the weather in paris today now please",
        "k",
        &[],
    )
    .await;
    assert_eq!(hit.header("x-deja-cache"), "semantic-hit");
    eventually("the cosine's no", || shadow("disagree") == 2).await;
    assert_eq!(j.calls.with_label_values(&["unparsable"]).get(), 1);
    assert_eq!(
        mock.calls(),
        1 + 3 * 2,
        "the seed, three checks and three judge calls"
    );

    let tokens: u64 = ["prompt", "completion"]
        .iter()
        .map(|k| j.tokens.with_label_values(&[k]).get())
        .sum();
    assert!(j.tokens.with_label_values(&["prompt"]).get() > 0);
    assert!(
        (j.cost_usd.get() - tokens as f64).abs() < 1e-6,
        "$1 a token"
    );
    let quality = d.state.quality().unwrap();
    eventually("three pairs recorded", || quality.ledger().len() == 3).await;
    let labels: Vec<bool> = quality
        .ledger()
        .pairs()
        .unwrap()
        .iter()
        .map(|p| p.same)
        .collect();
    assert_eq!(labels, [false, true, false]);
    let metrics = client().get(d.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("deja_shadow_judge_calls_total{verdict=\"agree\"} 1"),
        "{text}"
    );
}
