"""End-to-end checks of deja's gateway controls (issue 16) with the official `openai` and
`anthropic` Python SDKs: deja keys (401/403/429 as each SDK raises them) and personal data
(skip-cache, redact, block).

Run by tests/e2e_sdk.rs against a `deja` binary with `server.auth = "keys"`. Arguments: the
base URL, a key without limits, a key limited to `gpt-*` models and 2 requests per minute, a
key with a $0.05 daily budget (`gpt-4o-budget` costs $0.01 per completion token).
Prints one line per check and a closing 'N passed, N failed' line; exits non-zero on failure.
"""
import json
import sys
import traceback
import urllib.request

import anthropic
import openai

BASE, FULL_KEY, LIMITED_KEY, BUDGET_KEY = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
full = openai.OpenAI(base_url=BASE + "/v1", api_key=FULL_KEY, max_retries=0)
limited = openai.OpenAI(base_url=BASE + "/v1", api_key=LIMITED_KEY, max_retries=0)
stranger = openai.OpenAI(base_url=BASE + "/v1", api_key="sk-not-a-deja-key", max_retries=0)
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


def chat(client, text, model="gpt-4o-mini"):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    return raw.headers, raw.parse()


def expect(exc, fn):
    try:
        fn()
    except exc as e:
        return e
    raise AssertionError(f"expected {exc.__name__}")


def test_unknown_key_is_401_in_both_sdks():
    e = expect(openai.AuthenticationError, lambda: chat(stranger, "hello"))
    assert e.status_code == 401 and e.code == "invalid_api_key", e
    a = anthropic.Anthropic(base_url=BASE, api_key="sk-not-a-deja-key", max_retries=0)
    e = expect(
        anthropic.AuthenticationError,
        lambda: a.messages.create(
            model="claude-x", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        ),
    )
    assert e.status_code == 401, e


def test_model_outside_the_keys_globs_is_403():
    e = expect(openai.PermissionDeniedError, lambda: chat(limited, "hello", model="claude-x"))
    assert e.code == "model_not_allowed", e


def test_rpm_limit_is_429_with_retry_after():
    headers, _ = chat(limited, "What is the capital of France?")
    assert headers["x-ratelimit-limit-requests"] == "2", dict(headers)
    assert headers["x-ratelimit-remaining-requests"] == "1", dict(headers)
    chat(limited, "What is the capital of France?")
    e = expect(openai.RateLimitError, lambda: chat(limited, "What is the capital of France?"))
    assert int(e.response.headers["retry-after"]) >= 1, dict(e.response.headers)
    assert "rpm" in e.message, e.message
    # The Anthropic SDK sees the same limit in Anthropic's shape.
    a = anthropic.Anthropic(base_url=BASE, api_key=LIMITED_KEY, max_retries=0)
    e = expect(
        anthropic.RateLimitError,
        lambda: a.messages.create(
            model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        ),
    )
    assert e.status_code == 429, e


def test_spent_budget_is_429_insufficient_quota_in_both_sdks():
    spender = openai.OpenAI(base_url=BASE + "/v1", api_key=BUDGET_KEY, max_retries=0)
    raw = spender.chat.completions.with_raw_response.create(
        model="gpt-4o-budget", max_tokens=5,
        messages=[{"role": "user", "content": "Spend the whole budget"}],
    )
    # Five completion tokens at $0.01 are reserved: nothing is left.
    assert raw.headers["x-deja-budget-remaining-daily-usd"] == "0.000000", dict(raw.headers)
    e = expect(
        openai.RateLimitError,
        lambda: spender.chat.completions.create(
            model="gpt-4o-budget", max_tokens=5,
            messages=[{"role": "user", "content": "One more, please"}],
        ),
    )
    assert e.code == "insufficient_quota" and "budget_daily_usd" in e.message, e
    assert int(e.response.headers["retry-after"]) >= 1, dict(e.response.headers)
    a = anthropic.Anthropic(base_url=BASE, api_key=BUDGET_KEY, max_retries=0)
    e = expect(
        anthropic.RateLimitError,
        lambda: a.messages.create(
            model="gpt-4o-budget", max_tokens=5,
            messages=[{"role": "user", "content": "And one in Anthropic's format"}],
        ),
    )
    assert e.status_code == 429 and "daily budget" in e.message, e


def test_template_call_through_extra_body():
    r = full.chat.completions.create(
        model="template:greet", messages=[],
        extra_body={"deja_variables": {"name": "Ada Lovelace"}},
    )
    assert "Say hello to Ada Lovelace" in r.choices[0].message.content, r
    e = expect(
        openai.BadRequestError,
        lambda: full.chat.completions.create(
            model="template:greet", messages=[], extra_body={"deja_variables": {"nom": "Ada"}}
        ),
    )
    assert e.param == "deja_variables" and "missing variables: name" in e.message, e
    assert "unknown variables: nom" in e.message, e
    req = urllib.request.Request(BASE + "/v1/templates", headers={"Authorization": "Bearer " + FULL_KEY})
    listed = json.load(urllib.request.urlopen(req))
    assert [t["id"] for t in listed["data"]] == ["template:greet"], listed
    assert listed["data"][0]["variables"] == ["name"], listed


def test_pii_prompt_skips_the_cache():
    text = "Please confirm my number +44 20 7946 0958 is saved"
    for _ in range(2):
        headers, _ = chat(full, text)
        assert headers["x-deja-cache"] == "bypass", dict(headers)


def test_pii_block_route_is_a_400_naming_the_kind():
    e = expect(
        openai.BadRequestError,
        lambda: chat(full, "my SSN is 123-45-6789", model="gpt-4o-block"),
    )
    assert e.code == "pii_detected" and "ssn" in e.message and "6789" not in e.message, e


def test_pii_redact_route_round_trips():
    headers, r = chat(full, "Say hello to ann@example.com", model="gpt-4o-redact")
    assert headers["x-deja-cache"] == "miss", dict(headers)
    assert "ann@example.com" in r.choices[0].message.content, r
    assert "[EMAIL_1]" not in r.choices[0].message.content, r


for name, fn in list(globals().items()):
    if name.startswith("test_"):
        check(fn)
failed = [n for n, e in results if e]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
