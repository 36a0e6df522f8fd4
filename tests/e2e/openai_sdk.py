"""End-to-end checks of deja with the official `openai` Python SDK.

Run by tests/e2e_sdk.rs against the real `deja` binary, which forwards misses to an in-process
mock upstream speaking OpenAI's wire format. Prints one line per check and a closing
'N passed, N failed' line; exits non-zero on any failure.
"""
import sys
import traceback

import openai

BASE = sys.argv[1]
client = openai.OpenAI(base_url=BASE + "/v1", api_key="sk-e2e-client-key", max_retries=0)
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


def ask(text, **kw):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **kw
    )
    return raw.headers, raw.parse()


def test_miss_then_semantic_hit_on_paraphrase():
    h1, c1 = ask("How do I reset my password?")
    assert h1["x-deja-cache"] == "miss", h1
    assert h1["x-deja-provider"] == "openai-mock", h1
    assert float(h1["x-deja-overhead-ms"]) >= 0
    assert c1.choices[0].message.content
    h2, c2 = wait_for_hit("How can I reset my password?")
    # The README's example, at the shipped decision rule: cosine 0.99 is below the cosine-only
    # threshold, and the lexical verifier confirms it (same content words).
    assert h2["x-deja-cache"] == "semantic-hit", h2
    assert h2["x-deja-verified"] == "lexical", h2
    assert float(h2["x-deja-similarity"]) >= 0.9, h2
    assert int(h2["x-deja-entry"]) >= 0
    assert c2.choices[0].message.content == c1.choices[0].message.content
    assert c2.id != c1.id, "a hit gets a fresh id"
    assert c2.object == "chat.completion"
    assert c2.choices[0].finish_reason == "stop"
    assert c2.usage.total_tokens == c1.usage.total_tokens


def wait_for_hit(text, tries=100):
    import time

    for _ in range(tries):
        h, c = ask(text)
        if h["x-deja-cache"] != "miss":
            return h, c
        time.sleep(0.05)
    return h, c


def test_exact_hit():
    h1, c1 = ask("What is the capital of France?")
    h2, c2 = wait_for_hit("What is the capital of France?")
    assert h2["x-deja-cache"] == "exact-hit", h2
    assert c2.choices[0].message.content == c1.choices[0].message.content


def stream_text(text, include_usage):
    kw = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], stream=True, **kw
    )
    stream = raw.parse()
    parts, usage, finish, roles = [], None, None, []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    return raw.headers, "".join(parts), usage, finish, roles


def test_stream_replay_without_usage():
    _, c1 = ask("Write a haiku about caching.")
    wait_for_hit("Write a haiku about caching.")
    h, text, usage, finish, roles = stream_text("Write a haiku about caching.", include_usage=False)
    assert h["x-deja-cache"] == "exact-hit", h
    assert text == c1.choices[0].message.content, (text, c1.choices[0].message.content)
    assert usage is None
    assert finish == "stop"
    assert roles == ["assistant"]


def test_stream_replay_with_usage():
    _, c1 = ask("Explain HNSW in one sentence.")
    wait_for_hit("Explain HNSW in one sentence.")
    h, text, usage, finish, _ = stream_text("Explain HNSW in one sentence.", include_usage=True)
    assert h["x-deja-cache"] == "exact-hit", h
    assert text == c1.choices[0].message.content
    assert usage is not None and usage.total_tokens == c1.usage.total_tokens


def test_stream_miss_then_json_hit():
    h, text, usage, finish, _ = stream_text("Name three prime numbers.", include_usage=True)
    assert h["x-deja-cache"] == "miss", h
    assert text and finish == "stop" and usage is not None
    h2, c2 = wait_for_hit("Name three prime numbers.")
    assert h2["x-deja-cache"] == "exact-hit", h2
    assert c2.choices[0].message.content == text


def test_bad_request_is_openai_shaped():
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    except openai.BadRequestError as e:
        assert e.status_code == 400
        assert e.body and "messages" in e.body.get("message", ""), e.body
        return
    raise AssertionError("expected a 400")


def test_legacy_completions():
    r1 = client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    assert r1.headers["x-deja-cache"] == "miss"
    c1 = r1.parse()
    import time

    for _ in range(100):
        r2 = client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
        if r2.headers["x-deja-cache"] != "miss":
            break
        time.sleep(0.05)
    assert r2.headers["x-deja-cache"] == "exact-hit", r2.headers
    assert r2.parse().choices[0].text == c1.choices[0].text


def feedback(body):
    """POST /v1/deja/feedback with the client's key (the SDK has no method for it)."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        BASE + "/v1/deja/feedback",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer sk-e2e-client-key"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_feedback_tightens_a_wrong_hit():
    """Issue 17: thumbs-down on a semantic hit, with the response id from the hit's headers."""
    ask("How do I update my billing address?")
    h, _ = wait_for_hit("How can I update my billing address?")
    assert h["x-deja-cache"] == "semantic-hit", h
    rid = h["x-deja-response-id"]
    assert rid.startswith("dejaresp-"), h
    status, body = feedback({"response_id": rid, "correct": False})
    assert status == 200, (status, body)
    assert body["recorded"] is True and body["verdict"] == "wrong", body
    assert abs(body["entry_min_similarity"] - float(h["x-deja-similarity"])) < 1e-3, body
    # The same query now misses that entry (no-store: its answer is not written).
    h2, _ = ask("How can I update my billing address?", extra_headers={"cache-control": "no-store"})
    assert h2["x-deja-cache"] == "miss", h2
    status, body = feedback({"response_id": rid, "correct": False})
    assert status == 404 and body["error"]["param"] == "response_id", (status, body)
    status, body = feedback({"response_id": rid})
    assert status == 400 and body["error"]["param"] == "correct", (status, body)


def test_models_passthrough():
    models = client.models.list()
    assert len(models.data) >= 1


for name, fn in list(globals().items()):
    if name.startswith("test_") and callable(fn):
        check(fn)

failed = sum(1 for _, e in results if e is not None)
print(f"openai sdk: {len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
