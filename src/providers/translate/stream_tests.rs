use super::*;
use crate::api::anthropic::MessagesStreamCollector;
use crate::api::collect::ChatStreamCollector;
use crate::providers::error::ProviderErrorKind;
use futures::executor::block_on;

/// A real Anthropic stream (the shape of the docs' example), multibyte text included.
const ANTHROPIC: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-3-5-haiku-20241022\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Grüße\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" aus 東京 🎉\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

const OPENAI: &str = concat!(
    "data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Grüße \"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"aus 東京 🎉\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":4,\"total_tokens\":15}}\n\n",
    "data: [DONE]\n\n",
);

/// Run `t` over `input` cut into pieces of `size` bytes: (output bytes, the ending error).
fn run(t: Box<dyn StreamTranslate>, input: &[u8], size: usize) -> (Vec<u8>, Option<ProviderError>) {
    let chunks: Vec<Result<Bytes, ProviderError>> = input
        .chunks(size.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let inner = futures::stream::iter(chunks).boxed();
    let on_error = Box::new(|e: TranslateError| {
        ProviderError::new("p", ProviderErrorKind::StreamCut).with_detail(e.to_string())
    });
    let mut s = translate_stream(inner, t, on_error);
    block_on(async {
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    })
}

fn events(bytes: &[u8]) -> Vec<SseEvent> {
    SseParser::new().feed(bytes)
}

fn json_of(ev: &SseEvent) -> Value {
    serde_json::from_str(&ev.data).unwrap()
}

#[test]
fn anthropic_stream_becomes_openai_chunks() {
    let (out, err) = run(
        Box::new(MessagesToChatStream::new(true)),
        ANTHROPIC.as_bytes(),
        4096,
    );
    assert!(err.is_none(), "{err:?}");
    let evs = events(&out);
    assert_eq!(evs.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = evs[..evs.len() - 1].iter().map(json_of).collect();
    assert_eq!(chunks.len(), 5, "role, 2 content, finish, usage");
    for c in &chunks {
        assert_eq!(c["id"], "chatcmpl-1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "claude-3-5-haiku-20241022");
        assert!(c.as_object().unwrap().contains_key("usage"));
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Grüße");
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(
        chunks[4]["usage"],
        json!({"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40})
    );
    let mut c = ChatStreamCollector::new("a");
    for e in &evs {
        c.push_event_data(&e.data);
    }
    assert_eq!(c.finish().unwrap().content, "Grüße aus 東京 🎉");

    let (out, _) = run(
        Box::new(MessagesToChatStream::new(false)),
        ANTHROPIC.as_bytes(),
        4096,
    );
    let evs = events(&out);
    assert_eq!(evs.len(), 5, "no usage chunk unless asked");
    assert!(!json_of(&evs[1]).as_object().unwrap().contains_key("usage"));
}

#[test]
fn any_chunking_gives_the_same_output() {
    let strip_created = |b: &[u8]| -> Vec<String> {
        events(b)
            .iter()
            .map(|e| {
                let mut v: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.remove("created");
                }
                format!("{:?}|{v}", e.event)
            })
            .collect()
    };
    let (whole, _) = run(
        Box::new(MessagesToChatStream::new(true)),
        ANTHROPIC.as_bytes(),
        1 << 20,
    );
    let (whole2, _) = run(
        Box::new(ChatToMessagesStream::new()),
        OPENAI.as_bytes(),
        1 << 20,
    );
    for size in [1, 2, 3, 7, 64] {
        let (out, err) = run(
            Box::new(MessagesToChatStream::new(true)),
            ANTHROPIC.as_bytes(),
            size,
        );
        assert!(err.is_none());
        assert_eq!(strip_created(&out), strip_created(&whole), "size {size}");
        let (out, err) = run(
            Box::new(ChatToMessagesStream::new()),
            OPENAI.as_bytes(),
            size,
        );
        assert!(err.is_none());
        assert_eq!(out, whole2, "size {size}");
    }
}

#[test]
fn output_is_not_held_back() {
    // Only the first two events: their translation must already be out, and then the stream
    // reports the missing end instead of waiting.
    let upto = ANTHROPIC.find("event: ping").unwrap();
    let (out, err) = run(
        Box::new(MessagesToChatStream::new(false)),
        &ANTHROPIC.as_bytes()[..upto],
        8,
    );
    let evs = events(&out);
    assert_eq!(json_of(&evs[0])["choices"][0]["delta"]["role"], "assistant");
    assert!(json_of(&evs[1])["error"]["message"]
        .as_str()
        .unwrap()
        .contains("message_stop"));
    assert!(err.is_some());
}

#[test]
fn anthropic_error_event_ends_the_stream_with_an_error() {
    let cut = ANTHROPIC.find("event: content_block_stop").unwrap();
    let mut input = ANTHROPIC[..cut].to_string();
    input.push_str("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
    let (out, err) = run(
        Box::new(MessagesToChatStream::new(false)),
        input.as_bytes(),
        5,
    );
    let err = err.expect("an error ends the stream");
    assert!(err.detail.contains("overloaded_error"), "{err}");
    let evs = events(&out);
    let last = json_of(evs.last().unwrap());
    assert_eq!(last["error"]["message"], "Overloaded");
    assert_eq!(last["error"]["type"], "server_error");
    assert!(!evs.iter().any(|e| e.is_done()));
}

#[test]
fn issue15_tool_use_blocks_stream_as_tool_call_deltas() {
    let cut = ANTHROPIC.find("event: content_block_stop").unwrap();
    let mut input = ANTHROPIC[..cut].to_string();
    input.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    );
    input.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\n");
    for piece in ["{\\\"a\\\":", "[1]}"] {
        input.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":\"{piece}\"}}}}\n\n"));
    }
    input.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    );
    input.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":3}}\n\n");
    input.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    let (out, err) = run(
        Box::new(MessagesToChatStream::new(false)),
        input.as_bytes(),
        64,
    );
    assert!(err.is_none(), "{err:?}");
    let (mut args, mut finish, mut name) = (String::new(), None, None);
    for ev in events(&out).iter().filter(|e| !e.is_done()) {
        let v = json_of(ev);
        let choice = &v["choices"][0];
        if let Some(call) = choice["delta"]["tool_calls"].get(0) {
            assert_eq!(call["index"], 0);
            if let Some(n) = call["function"]["name"].as_str() {
                name = Some(n.to_string());
            }
            args.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(name.as_deref(), Some("f"));
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"a": [1]})
    );
    assert_eq!(finish.as_deref(), Some("tool_calls"));
}

#[test]
fn openai_stream_becomes_anthropic_events() {
    let (out, err) = run(
        Box::new(ChatToMessagesStream::new()),
        OPENAI.as_bytes(),
        4096,
    );
    assert!(err.is_none(), "{err:?}");
    let evs = events(&out);
    let names: Vec<&str> = evs.iter().filter_map(|e| e.event.as_deref()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for e in &evs {
        assert_eq!(json_of(e)["type"].as_str(), e.event.as_deref());
    }
    let start = json_of(&evs[0]);
    assert_eq!(start["message"]["id"], "msg_9x");
    assert_eq!(start["message"]["model"], "gpt-4o-mini");
    assert!(start["message"]["stop_reason"].is_null());
    let delta = json_of(&evs[6]);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(
        delta["usage"],
        json!({"input_tokens": 11, "output_tokens": 4})
    );
    let mut c = MessagesStreamCollector::new("o");
    for e in &evs {
        c.push_event_data(&e.data);
    }
    let r = c.finish().unwrap();
    assert_eq!(r.content, "Grüße aus 東京 🎉");
    assert_eq!(
        r.usage,
        Some(crate::store::Usage {
            prompt_tokens: 11,
            completion_tokens: 4
        })
    );
}

#[test]
fn openai_stream_without_done_but_finished_is_complete() {
    let cut = OPENAI.find("data: [DONE]").unwrap();
    let (out, err) = run(
        Box::new(ChatToMessagesStream::new()),
        &OPENAI.as_bytes()[..cut],
        4096,
    );
    assert!(err.is_none());
    assert_eq!(
        events(&out).last().unwrap().event.as_deref(),
        Some("message_stop")
    );
    // Without the finish chunk it is truncated.
    let cut = OPENAI.find("{\"index\":0,\"delta\":{},").unwrap();
    let cut = OPENAI[..cut].rfind("data: ").unwrap();
    let (out, err) = run(
        Box::new(ChatToMessagesStream::new()),
        &OPENAI.as_bytes()[..cut],
        4096,
    );
    assert!(err.is_some());
    let last = events(&out).pop().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"));
}

#[test]
fn openai_error_chunk_becomes_an_anthropic_error_event() {
    let cut = OPENAI.find("data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},").unwrap();
    let mut input = OPENAI[..cut].to_string();
    input.push_str("data: {\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}\n\n");
    let (out, err) = run(
        Box::new(ChatToMessagesStream::new()),
        input.as_bytes(),
        4096,
    );
    assert!(err.is_some());
    let last = events(&out).pop().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"));
    let v = json_of(&last);
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["message"], "Rate limit reached");
}

#[test]
fn transport_errors_pass_through() {
    let chunks: Vec<Result<Bytes, ProviderError>> = vec![
        Ok(Bytes::from_static(OPENAI.as_bytes().split_at(200).0)),
        Err(ProviderError::new("p", ProviderErrorKind::Timeout)),
    ];
    let inner = futures::stream::iter(chunks).boxed();
    let mut s = translate_stream(
        inner,
        Box::new(ChatToMessagesStream::new()),
        Box::new(|_| ProviderError::new("p", ProviderErrorKind::Protocol)),
    );
    let items: Vec<_> = block_on(async {
        let mut v = Vec::new();
        while let Some(i) = s.next().await {
            v.push(i);
        }
        v
    });
    assert_eq!(
        items.last().unwrap().as_ref().unwrap_err().kind,
        ProviderErrorKind::Timeout
    );
}
