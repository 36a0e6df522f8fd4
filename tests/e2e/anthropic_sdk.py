"""End-to-end checks of deja with the official `anthropic` Python SDK, plus the `openai` SDK
routed to an Anthropic-kind provider.

Run by tests/e2e_sdk.rs against the real `deja` binary. Routes in its config:
  claude-*  → an Anthropic-kind mock provider (native Messages, or translated from OpenAI chat)
  *         → an OpenAI-kind mock provider (inbound Messages translated to chat completions)
Prints one line per check and a closing 'N passed, N failed' line; exits non-zero on failure.
"""
import sys
import time
import traceback

import anthropic
import openai

BASE = sys.argv[1]
claude = anthropic.Anthropic(base_url=BASE, api_key="sk-ant-e2e-client", max_retries=0)
oai = openai.OpenAI(base_url=BASE + "/v1", api_key="sk-e2e-client-key", max_retries=0)
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


def create(text, model="claude-3-5-haiku-latest", **kw):
    raw = claude.messages.with_raw_response.create(
        model=model, max_tokens=256, messages=[{"role": "user", "content": text}], **kw
    )
    return raw.headers, raw.parse()


def until_hit(fn, tries=100):
    for _ in range(tries):
        h, m = fn()
        if h["x-deja-cache"] != "miss":
            return h, m
        time.sleep(0.05)
    return h, m


def text_of(message):
    return "".join(b.text for b in message.content if b.type == "text")


def test_messages_miss_then_semantic_hit():
    h1, m1 = create("How do I reset my password?", system="You are a helpful support agent.")
    assert h1["x-deja-cache"] == "miss", h1
    assert h1["x-deja-provider"] == "anthropic-mock", h1
    assert m1.type == "message" and m1.role == "assistant"
    assert m1.stop_reason == "end_turn"
    h2, m2 = until_hit(lambda: create("How can I reset my password?", system="You are a helpful support agent."))
    assert h2["x-deja-cache"] == "semantic-hit", h2
    assert h2["x-deja-verified"] == "lexical", h2
    assert float(h2["x-deja-similarity"]) >= 0.9
    assert text_of(m2) == text_of(m1)
    assert m2.id != m1.id and m2.id.startswith("msg_")
    assert m2.usage.output_tokens == m1.usage.output_tokens


def test_system_prompt_separates_scopes():
    h, _ = create("How do I reset my password?", system="Answer like a pirate.")
    assert h["x-deja-cache"] == "miss", h


def test_messages_stream_replay():
    h1, m1 = create("Explain semantic caching briefly.")
    until_hit(lambda: create("Explain semantic caching briefly."))
    with claude.messages.with_streaming_response.create(
        model="claude-3-5-haiku-latest",
        max_tokens=256,
        messages=[{"role": "user", "content": "Explain semantic caching briefly."}],
        stream=True,
    ) as raw:
        assert raw.headers["x-deja-cache"] == "exact-hit", raw.headers
    with claude.messages.stream(
        model="claude-3-5-haiku-latest",
        max_tokens=256,
        messages=[{"role": "user", "content": "Explain semantic caching briefly."}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == text_of(m1), (text, text_of(m1))
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == m1.usage.output_tokens


def test_messages_stream_miss_is_cached():
    with claude.messages.stream(
        model="claude-3-5-haiku-latest",
        max_tokens=256,
        messages=[{"role": "user", "content": "Name two rivers in Europe."}],
    ) as stream:
        text = "".join(stream.text_stream)
    assert text
    h, m = until_hit(lambda: create("Name two rivers in Europe."))
    assert h["x-deja-cache"] == "exact-hit", h
    assert text_of(m) == text


def test_messages_translated_to_openai_provider():
    h, m = create("What is the tallest mountain?", model="gpt-4o-mini")
    assert h["x-deja-cache"] == "miss", h
    assert h["x-deja-provider"] == "openai-mock", h
    assert text_of(m) and m.stop_reason == "end_turn"
    with claude.messages.stream(
        model="gpt-4o-mini", max_tokens=256, messages=[{"role": "user", "content": "Say hi in French."}]
    ) as stream:
        streamed = "".join(stream.text_stream)
    assert streamed


def test_tool_round_trip_routed_to_an_openai_provider():
    import json

    tools = [{"name": "get_weather", "description": "Weather by city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    raw = claude.messages.with_raw_response.create(model="gpt-4o-mini", max_tokens=256, tools=tools,
                                                   messages=question)
    assert raw.headers["x-deja-provider"] == "openai-mock", raw.headers
    m = raw.parse()
    assert m.stop_reason == "tool_use", m
    use = [b for b in m.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and use.input == {"city": "Paris", "unit": "celsius", "days": 3}, use
    # Streamed: the SDK accumulates the input_json_delta pieces into the same input.
    with claude.messages.stream(model="gpt-4o-mini", max_tokens=256, tools=tools,
                                messages=[{"role": "user", "content": "Weather in Paris, streamed?"}]) as stream:
        pieces = [e for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"][0]
    assert len(pieces) > 1 and streamed.input == use.input, (pieces, streamed)
    follow = question + [
        {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C, sunny"}]},
    ]
    answer = claude.messages.create(model="gpt-4o-mini", max_tokens=256, tools=tools, messages=follow)
    assert answer.stop_reason == "end_turn", answer
    assert text_of(answer).startswith("Answer #"), answer
    assert json.dumps(use.input)


def test_bad_request_is_anthropic_shaped():
    try:
        claude.messages.create(model="claude-3-5-haiku-latest", max_tokens=10, messages=[])
    except anthropic.BadRequestError as e:
        assert e.status_code == 400
        assert e.body["type"] == "error" and e.body["error"]["type"] == "invalid_request_error", e.body
        return
    raise AssertionError("expected a 400")


def test_openai_sdk_routed_to_anthropic_provider():
    raw = oai.chat.completions.with_raw_response.create(
        model="claude-3-5-haiku-latest",
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of Italy?"}],
        max_tokens=100,
    )
    assert raw.headers["x-deja-cache"] == "miss"
    assert raw.headers["x-deja-provider"] == "anthropic-mock"
    c = raw.parse()
    assert c.object == "chat.completion" and c.choices[0].message.content
    assert c.choices[0].finish_reason == "stop"
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    stream = oai.chat.completions.create(
        model="claude-3-5-haiku-latest",
        messages=[{"role": "user", "content": "Capital of Spain?"}],
        max_tokens=100,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                parts.append(ch.delta.content)
    assert "".join(parts) and usage is not None


for name, fn in list(globals().items()):
    if name.startswith("test_") and callable(fn):
        check(fn)

failed = sum(1 for _, e in results if e is not None)
print(f"anthropic sdk: {len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
