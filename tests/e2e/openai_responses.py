"""End-to-end checks of deja's Responses API (`POST /v1/responses`) with the official `openai`
Python SDK: misses and paraphrase hits, stream <-> JSON both ways, a chat answer served to a
Responses request and back, `previous_response_id` chains (passed through when unknown, resolved
when deja relayed or served the response), and 400s for bad input.

Run by tests/e2e_sdk.rs against the real `deja` binary (the same process as openai_sdk.py),
which forwards misses to an in-process mock upstream speaking the Responses wire format.
"""
import json
import sys
import time
import traceback

import openai

BASE = sys.argv[1]
client = openai.OpenAI(base_url=BASE + "/v1", api_key="sk-e2e-client-key", max_retries=0)
MODEL = "gpt-4o-mini"
results = []


def check(fn):
    try:
        fn()
        results.append((fn.__name__, None))
        print(f"ok   {fn.__name__}", flush=True)
    except Exception as e:  # noqa: BLE001 - report every failure, keep going
        results.append((fn.__name__, e))
        print(f"FAIL {fn.__name__}: {e!r}", flush=True)
        traceback.print_exc()


def create(**kw):
    raw = client.responses.with_raw_response.create(model=MODEL, **kw)
    return raw.headers, raw.parse()


def until_stored(fn, tries=100):
    """Repeat `fn` (returning headers first) until deja answers it from the cache."""
    for _ in range(tries):
        out = fn()
        if out[0]["x-deja-cache"] != "miss":
            return out
        time.sleep(0.05)
    return out


def stream_raw(**kw):
    """A raw `stream=True` call: headers, the events, the text of their deltas."""
    raw = client.responses.with_raw_response.create(model=MODEL, stream=True, **kw)
    events = list(raw.parse())
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    return raw.headers, events, text


def test_miss_then_paraphrase_hit():
    h1, r1 = create(input="How do I change my email address?")
    assert h1["x-deja-cache"] == "miss", h1
    assert h1["x-deja-provider"] == "openai-mock", h1
    assert r1.output_text.startswith("Answer #"), r1.output_text
    h2, r2 = until_stored(lambda: create(input="How can I change my email address?"))
    assert h2["x-deja-cache"] == "semantic-hit", h2
    assert float(h2["x-deja-similarity"]) >= 0.9, h2
    assert r2.object == "response" and r2.status == "completed"
    assert r2.id.startswith("resp_") and r2.id != r1.id
    assert r2.output[0].type == "message" and r2.output[0].role == "assistant"
    assert r2.output_text == r1.output_text, (r2.output_text, r1.output_text)
    assert r2.usage.total_tokens == r2.usage.input_tokens + r2.usage.output_tokens


def test_json_miss_then_stream_hit():
    h1, r1 = create(input="Name a sorting algorithm.", instructions="Answer in one line.")
    assert h1["x-deja-cache"] == "miss", h1
    until_stored(lambda: create(input="Name a sorting algorithm.", instructions="Answer in one line."))
    h, events, text = stream_raw(input="Name a sorting algorithm.", instructions="Answer in one line.")
    assert h["x-deja-cache"] == "exact-hit", h
    assert h["content-type"].startswith("text/event-stream"), h
    assert text == r1.output_text, (text, r1.output_text)
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"], types
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"], types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.instructions == "Answer in one line."
    # The SDK's stream helper accumulates the replay into the final response.
    with client.responses.stream(model=MODEL, input="Name a sorting algorithm.",
                                 instructions="Answer in one line.") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == r1.output_text
    assert final.output_text == r1.output_text and final.status == "completed"


def test_stream_miss_then_json_hit():
    h, events, text = stream_raw(input="Give me a fun fact about octopuses.")
    assert h["x-deja-cache"] == "miss", h
    assert events[-1].type == "response.completed", events[-1]
    assert text and events[-1].response.output_text == text
    h2, r2 = until_stored(lambda: create(input="Give me a fun fact about octopuses."))
    assert h2["x-deja-cache"] == "exact-hit", h2
    assert r2.output_text == text


def test_chat_answer_served_to_responses_and_back():
    chat = client.chat.completions.with_raw_response.create(
        model=MODEL, temperature=0,
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "What is a B-tree?"}])
    assert chat.headers["x-deja-cache"] == "miss", chat.headers
    answer = chat.parse().choices[0].message.content
    h, r = until_stored(lambda: create(instructions="You are terse.", input="What is a B-tree?", temperature=0))
    assert h["x-deja-cache"] == "exact-hit", h
    assert r.output_text == answer
    # Another system prompt is another scope.
    h, _ = create(instructions="You are verbose.", input="What is a B-tree?", temperature=0)
    assert h["x-deja-cache"] == "miss", h
    # And back: a Responses answer (input items this time) served to a chat request.
    h, r = create(input=[{"role": "user", "content": [{"type": "input_text", "text": "What is a trie?"}]}],
                  max_output_tokens=64)
    assert h["x-deja-cache"] == "miss", h

    def chat_ask():
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, max_completion_tokens=64, messages=[{"role": "user", "content": "What is a trie?"}])
        return raw.headers, raw.parse()

    h, c = until_stored(chat_ask)
    assert h["x-deja-cache"] == "exact-hit", h
    assert c.choices[0].message.content == r.output_text


def test_previous_response_id_is_passed_through_uncached():
    h, r = create(input="And in French?", previous_response_id="resp_upstream_only")
    assert h["x-deja-cache"] == "bypass", h
    assert h["x-deja-provider"] == "openai-mock", h
    assert r.previous_response_id == "resp_upstream_only"


def test_previous_response_id_chains_through_the_cache():
    h1, r1 = create(input="Recommend a book about databases.")
    assert h1["x-deja-cache"] == "miss", h1
    # deja relayed turn 1, so it knows the conversation: the follow-up is cacheable.
    h2, r2 = create(input="Why that one?", previous_response_id=r1.id)
    assert h2["x-deja-cache"] == "miss", h2
    assert r2.previous_response_id == r1.id
    h3, r3 = until_stored(lambda: create(input="Why that one?", previous_response_id=r1.id))
    assert h3["x-deja-cache"] == "exact-hit", h3
    assert r3.id.startswith("resp_dj") and r3.previous_response_id == r1.id, r3
    assert r3.output_text == r2.output_text
    # A follow-up to deja's own id, through the SDK's stream helper: deja sends the whole
    # conversation upstream (tests/e2e_sdk.rs checks what the mock received).
    with client.responses.stream(model=MODEL, input="Is there a newer edition?",
                                 previous_response_id=r3.id) as stream:
        final = stream.get_final_response()
    assert final.output_text.startswith("Answer #"), final
    h5, _ = create(input="Thanks, that is all.", previous_response_id=final.id)
    assert h5["x-deja-cache"] == "miss", h5
    try:
        client.responses.create(model=MODEL, input="x-chain", previous_response_id="resp_dj" + "0" * 32)
    except openai.BadRequestError as e:
        assert e.body.get("code") == "previous_response_not_found", e.body
        assert e.body.get("param") == "previous_response_id", e.body
        return
    raise AssertionError("expected a 400 for an unknown deja response id")


def test_responses_routed_to_an_anthropic_provider():
    claude = "claude-3-5-haiku-latest"
    raw = client.responses.with_raw_response.create(
        model=claude, instructions="Be brief.", input="Translate 'cache' to German.", max_output_tokens=64)
    assert raw.headers["x-deja-cache"] == "miss", raw.headers
    assert raw.headers["x-deja-provider"] == "anthropic-mock", raw.headers
    r = raw.parse()
    assert r.object == "response" and r.status == "completed", r
    assert r.output_text.startswith("Answer #"), r.output_text
    # The id is deja's (the translation made it): a follow-up naming it is resolved by deja and
    # translated with the whole conversation, where the provider could not resolve it.
    assert r.id.startswith("resp_dj"), r.id
    follow = client.responses.with_raw_response.create(
        model=claude, input="And to French?", previous_response_id=r.id, max_output_tokens=64)
    assert follow.headers["x-deja-cache"] == "miss", follow.headers
    assert follow.parse().output_text.startswith("Answer #")
    # A translated stream the SDK's helper accumulates, then served again from the cache.
    with client.responses.stream(model=claude, input="Translate 'index' to German.") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) and final.output_text.startswith("Answer #")
    h, again = until_stored(lambda: create_for(claude, input="Translate 'index' to German."))
    assert h["x-deja-cache"] == "exact-hit", h
    assert again.output_text == final.output_text


def create_for(model, **kw):
    raw = client.responses.with_raw_response.create(model=model, **kw)
    return raw.headers, raw.parse()


CLAUDE = "claude-3-5-haiku-latest"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                                 "parameters": WEATHER}}]
# What the mock's tool call carries (tests/common/mock_upstream.rs, OFFERED_TOOL_ARGUMENTS).
ARGUMENTS = {"city": "Paris", "unit": "celsius", "days": 3}


def test_chat_tool_round_trip_through_an_anthropic_provider():
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    raw = client.chat.completions.with_raw_response.create(model=CLAUDE, messages=question, tools=CHAT_TOOLS)
    assert raw.headers["x-deja-provider"] == "anthropic-mock", raw.headers
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == ARGUMENTS
    # A tool call is never cached: replaying it would run the tool again.
    again = client.chat.completions.with_raw_response.create(model=CLAUDE, messages=question, tools=CHAT_TOOLS)
    assert again.headers["x-deja-cache"] == "miss", again.headers
    follow = question + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
    ]
    final = client.chat.completions.create(model=CLAUDE, messages=follow, tools=CHAT_TOOLS)
    assert final.choices[0].finish_reason == "stop", final
    assert final.choices[0].message.content.startswith("Answer #"), final


def test_streamed_tool_calls_reassemble_into_valid_json():
    with client.chat.completions.stream(model=CLAUDE, tools=CHAT_TOOLS,
                                        messages=[{"role": "user", "content": "Weather in Paris, streamed?"}]) as s:
        deltas = [e for e in s if e.type == "tool_calls.function.arguments.delta"]
        completion = s.get_final_completion()
    assert len(deltas) > 1, "the arguments arrived in several deltas"
    call = completion.choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == ARGUMENTS
    # The Responses API, streamed through the same Anthropic provider, then the tool's result.
    tools = [{"type": "function", "name": "get_weather", "description": "Weather by city", "parameters": WEATHER}]
    with client.responses.stream(model=CLAUDE, input="Weather in Paris, via responses?", tools=tools) as s:
        pieces = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
        response = s.get_final_response()
    fc = [o for o in response.output if o.type == "function_call"][0]
    assert len(pieces) > 1 and json.loads("".join(pieces)) == ARGUMENTS
    assert json.loads(fc.arguments) == ARGUMENTS and fc.name == "get_weather"
    final = client.responses.create(model=CLAUDE, tools=tools, input=[
        {"role": "user", "content": "Weather in Paris, via responses?"},
        {"type": "function_call", "call_id": fc.call_id, "name": fc.name, "arguments": fc.arguments},
        {"type": "function_call_output", "call_id": fc.call_id, "output": "18 C and sunny"},
    ])
    assert final.output_text.startswith("Answer #"), final


# Routed to the OpenAI-kind mock on a route with `cache_tool_calls = true` (tests/e2e_sdk.rs).
TOOLS_MODEL = "gpt-4o-tools"
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather by city",
                    "parameters": WEATHER}]


def test_tool_call_answers_served_from_cache_where_the_route_opts_in():
    question = [{"role": "user", "content": "Weather in Lyon, from the cache?"}]

    def chat_json():
        raw = client.chat.completions.with_raw_response.create(
            model=TOOLS_MODEL, messages=question, tools=CHAT_TOOLS)
        return raw.headers, raw.parse()

    h, first = chat_json()
    assert h["x-deja-cache"] == "miss", h
    h, hit = until_stored(chat_json)
    assert h["x-deja-cache"] == "exact-hit", h
    assert hit.choices[0].finish_reason == "tool_calls", hit
    call = hit.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == ARGUMENTS
    assert call.id.startswith("call_") and call.id != first.choices[0].message.tool_calls[0].id, call.id
    # The same entry replayed as a stream: raw chunks, then the SDK's stream helper.
    raw = client.chat.completions.with_raw_response.create(
        model=TOOLS_MODEL, messages=question, tools=CHAT_TOOLS, stream=True)
    assert raw.headers["x-deja-cache"] == "exact-hit", raw.headers
    chunks = [c for c in raw.parse() if c.choices]
    pieces = [tc.function.arguments for c in chunks for tc in (c.choices[0].delta.tool_calls or [])
              if tc.function and tc.function.arguments]
    assert len(pieces) > 1 and json.loads("".join(pieces)) == ARGUMENTS, pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]
    with client.chat.completions.stream(model=TOOLS_MODEL, messages=question, tools=CHAT_TOOLS) as s:
        deltas = [e for e in s if e.type == "tool_calls.function.arguments.delta"]
        completion = s.get_final_completion()
    assert len(deltas) > 1
    assert json.loads(completion.choices[0].message.tool_calls[0].function.arguments) == ARGUMENTS

    # The Responses API: a JSON miss, a JSON hit, then a streamed hit the SDK accumulates.
    text = "Weather in Lyon, responses from the cache?"

    def responses_json():
        raw = client.responses.with_raw_response.create(model=TOOLS_MODEL, input=text, tools=RESPONSES_TOOLS)
        return raw.headers, raw.parse()

    h, _ = responses_json()
    assert h["x-deja-cache"] == "miss", h
    h, r = until_stored(responses_json)
    assert h["x-deja-cache"] == "exact-hit", h
    fc = [o for o in r.output if o.type == "function_call"][0]
    assert fc.name == "get_weather" and json.loads(fc.arguments) == ARGUMENTS, fc
    raw = client.responses.with_raw_response.create(model=TOOLS_MODEL, input=text, tools=RESPONSES_TOOLS,
                                                    stream=True)
    assert raw.headers["x-deja-cache"] == "exact-hit", raw.headers
    list(raw.parse())
    with client.responses.stream(model=TOOLS_MODEL, input=text, tools=RESPONSES_TOOLS) as s:
        pieces = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
        response = s.get_final_response()
    assert len(pieces) > 1 and json.loads("".join(pieces)) == ARGUMENTS, pieces
    fc = [o for o in response.output if o.type == "function_call"][0]
    assert json.loads(fc.arguments) == ARGUMENTS and fc.call_id.startswith("call_"), fc


def test_bad_inputs_are_400s_naming_the_field():
    cases = [
        ({"input": [{"type": "telepathy-e2e", "content": "x"}]}, "input[0].type"),
        ({"input": [{"content": "no role, malformed-e2e"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
        ({"input": "schema-e2e", "tools": [{"type": "function", "name": "f", "parameters": "not-a-schema-e2e"}]},
         "tools[0].parameters"),
    ]
    try:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "chat-schema-e2e"}],
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": "x-e2e"}}])
        raise AssertionError("expected a 400 for a chat tool schema")
    except openai.BadRequestError as e:
        assert e.body.get("param") == "tools[0].function.parameters", e.body
    for kw, param in cases:
        try:
            client.responses.create(model=MODEL, **kw)
        except openai.BadRequestError as e:
            assert e.status_code == 400
            assert e.body and e.body.get("param") == param, (param, e.body)
            assert param in e.body.get("message", ""), e.body
            continue
        raise AssertionError(f"expected a 400 for {param}")


for name, fn in list(globals().items()):
    if name.startswith("test_") and callable(fn):
        check(fn)

failed = sum(1 for _, e in results if e is not None)
print(f"openai responses: {len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
