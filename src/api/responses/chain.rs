//! Conversations behind `previous_response_id`, as JSON: what deja remembers of a Responses
//! answer it served or relayed (a [`ChainRecord`]: the whole conversation as input items, the
//! answer's output included), and the stateless request a follow-up becomes once its chain is
//! known ([`expand`]). The provider keeps a stored response's conversation for a follow-up; a
//! response deja answered from the cache, or translated from a provider without a Responses
//! API, exists nowhere but here, so deja must resolve such a follow-up itself. Storage and the
//! request path are `cache::chains`; this module has no I/O.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Prefix of the response ids deja makes (hits, translated answers): `resp_dj` + 32 hex
/// characters. A provider never makes one, so a follow-up naming such an id is deja's to
/// resolve, never the provider's.
pub const MINTED_PREFIX: &str = "resp_dj";

/// Whether `id` is one deja made.
pub fn is_minted(id: &str) -> bool {
    id.starts_with(MINTED_PREFIX)
}

/// What deja keeps of one answered Responses request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainRecord {
    /// Record layout version.
    pub v: u32,
    /// blake3 of the tenant the conversation belongs to: another tenant's follow-up never
    /// finds it.
    pub tenant: String,
    /// The conversation as Responses input items, oldest first, the answer's output last
    /// (without `instructions`, which OpenAI does not carry over to a follow-up either).
    pub items: Vec<Value>,
}

impl ChainRecord {
    pub const VERSION: u32 = 1;

    pub fn new(tenant: &str, items: Vec<Value>) -> ChainRecord {
        ChainRecord {
            v: Self::VERSION,
            tenant: tenant_tag(tenant),
            items,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for bytes that are not a record of this version.
    pub fn decode(bytes: &[u8]) -> Option<ChainRecord> {
        serde_json::from_slice::<ChainRecord>(bytes)
            .ok()
            .filter(|r| r.v == Self::VERSION)
    }

    /// Whether the record belongs to `tenant`.
    pub fn belongs_to(&self, tenant: &str) -> bool {
        self.tenant == tenant_tag(tenant)
    }
}

fn tenant_tag(tenant: &str) -> String {
    blake3::hash(tenant.as_bytes()).to_hex().to_string()
}

/// The `previous_response_id` of a body, when it is a chain deja could resolve: a string, and
/// no `conversation` (a provider-side conversation is never deja's to know).
pub fn previous_id(body: &Map<String, Value>) -> Option<&str> {
    let id = body.get("previous_response_id")?.as_str()?;
    match body.get("conversation") {
        None | Some(Value::Null) => Some(id),
        Some(_) => None,
    }
}

/// The request's `input` as a list of items (a string is one user message).
pub fn input_items(body: &Map<String, Value>) -> Vec<Value> {
    match body.get("input") {
        Some(Value::String(s)) => vec![json!({"type": "message", "role": "user", "content": s})],
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    }
}

/// The stateless request a follow-up stands for: `earlier` (its chain's items) followed by its
/// own input, with `previous_response_id` gone. Everything else (instructions, parameters) is
/// the follow-up's own, as OpenAI applies them.
pub fn expand(body: &Map<String, Value>, earlier: &[Value]) -> Map<String, Value> {
    let mut out = body.clone();
    out.remove("previous_response_id");
    let mut items = earlier.to_vec();
    items.extend(input_items(body));
    out.insert("input".into(), Value::Array(items));
    out
}

/// A `response` object's id and its output as input items for the next turn: messages and
/// function calls as they were (ids included: a tool result names its call), reasoning left
/// out (the model's scratchpad, which a cached answer never has either). `None` for an object
/// that is not a finished response.
pub fn answer_items(response: &Value) -> Option<(String, Vec<Value>)> {
    if response.get("object").and_then(Value::as_str) != Some("response") {
        return None;
    }
    match response.get("status").and_then(Value::as_str) {
        Some("completed") | Some("incomplete") => {}
        _ => return None,
    }
    let id = response.get("id")?.as_str()?.to_owned();
    let output = response.get("output")?.as_array()?;
    let items = output
        .iter()
        .filter(|item| item.get("type").and_then(Value::as_str) != Some("reasoning"))
        .cloned()
        .collect();
    Some((id, items))
}

/// The finished `response` object of a rendered or relayed SSE replay: the one its
/// `response.completed` (or `response.incomplete`) event carries.
pub fn response_of_events(events: &[Bytes]) -> Option<Value> {
    events.iter().rev().find_map(|frame| {
        let text = std::str::from_utf8(frame).ok()?;
        let data = text
            .lines()
            .find_map(|l| l.strip_prefix("data:"))?
            .trim_start();
        let v: Value = serde_json::from_str(data).ok()?;
        match v.get("type").and_then(Value::as_str) {
            Some("response.completed") | Some("response.incomplete") => v.get("response").cloned(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_follow_up_expands_to_its_chain_then_its_own_input() {
        let earlier = vec![
            json!({"type": "message", "role": "user", "content": "Hi"}),
            json!({"type": "message", "role": "assistant", "id": "msg_1",
                   "content": [{"type": "output_text", "text": "Hello"}]}),
        ];
        let body = obj(json!({"model": "m", "previous_response_id": "resp_djx",
                              "instructions": "Be brief", "input": "And you?"}));
        let out = expand(&body, &earlier);
        assert!(out.get("previous_response_id").is_none());
        assert_eq!(out["instructions"], "Be brief");
        let items = out["input"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[..2], earlier[..]);
        assert_eq!(items[2]["content"], "And you?");
        // The expanded request has a chat form: it can be looked up and cached.
        let chat = crate::api::responses::to_chat(&out).unwrap();
        let roles: Vec<_> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);

        let listed =
            obj(json!({"input": [{"role": "user", "content": "x"}], "previous_response_id": "r"}));
        assert_eq!(expand(&listed, &[])["input"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn only_a_string_id_without_a_conversation_is_a_chain() {
        assert_eq!(
            previous_id(&obj(json!({"previous_response_id": "resp_1"}))),
            Some("resp_1")
        );
        assert_eq!(
            previous_id(&obj(
                json!({"previous_response_id": "r", "conversation": "c"})
            )),
            None
        );
        assert_eq!(previous_id(&obj(json!({"previous_response_id": 5}))), None);
        assert_eq!(previous_id(&obj(json!({"input": "x"}))), None);
    }

    #[test]
    fn answer_items_keep_messages_and_calls_and_drop_reasoning() {
        let response = json!({"id": "resp_1", "object": "response", "status": "completed",
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "id": "msg_1", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Let me look"}]},
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f",
                 "arguments": "{}"}]});
        let (id, items) = answer_items(&response).unwrap();
        assert_eq!(id, "resp_1");
        let types: Vec<_> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["message", "function_call"]);
        assert_eq!(items[1]["call_id"], "call_1");
        let mut failed = response.clone();
        failed["status"] = json!("failed");
        assert!(answer_items(&failed).is_none());
        assert!(answer_items(&json!({"object": "list"})).is_none());
    }

    #[test]
    fn the_finished_response_is_found_in_a_replay() {
        let completed = json!({"type": "response.completed", "sequence_number": 2,
            "response": {"id": "resp_dj1", "object": "response", "status": "completed", "output": []}});
        let events = vec![
            crate::api::sse::named_event(
                "response.created",
                &json!({"type": "response.created", "response": {"id": "resp_dj1"}}),
            ),
            crate::api::sse::named_event("response.completed", &completed),
        ];
        let found = response_of_events(&events).unwrap();
        assert_eq!(found["id"], "resp_dj1");
        assert!(response_of_events(&events[..1]).is_none());
    }

    #[test]
    fn records_round_trip_and_belong_to_one_tenant() {
        let r = ChainRecord::new("tenant-a", vec![json!({"role": "user", "content": "x"})]);
        let back = ChainRecord::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert!(back.belongs_to("tenant-a"));
        assert!(!back.belongs_to("tenant-b"));
        assert!(ChainRecord::decode(b"{\"v\":2,\"tenant\":\"\",\"items\":[]}").is_none());
        assert!(ChainRecord::decode(b"junk").is_none());
        assert!(is_minted(&crate::api::responses::new_response_id()));
        assert!(!is_minted(
            "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
        ));
    }
}
