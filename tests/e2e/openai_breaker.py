"""The circuit breaker as the official `openai` Python SDK sees it (issue 12).

Run by tests/proxy_faults.rs against an in-process deja whose only provider, `mock`, fails its
first two calls and is healthy after; deja does not retry and opens the breaker after two
failed requests, for one second. Prints one line per step; exits non-zero on any failure.
"""
import sys
import time

import openai

BASE = sys.argv[1] + "/v1"
no_retries = openai.OpenAI(base_url=BASE, api_key="sk-breaker", max_retries=0)
default_retries = openai.OpenAI(base_url=BASE, api_key="sk-breaker")  # max_retries=2


def ask(client, text):
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )


def main():
    for i in range(2):
        try:
            ask(no_retries, "q")
            raise AssertionError(f"call {i} should fail: the upstream answers 500")
        except openai.InternalServerError as e:
            assert e.status_code == 502, e
    print("ok   two failed requests", flush=True)

    try:
        ask(no_retries, "q")
        raise AssertionError("the breaker should be open")
    except openai.APIStatusError as e:
        assert e.status_code == 503, e
        assert "`mock`" in e.message and "circuit breaker" in e.message, e.message
        assert e.response.headers.get("retry-after") == "1", dict(e.response.headers)
        assert e.body["code"] == "circuit_open", e.body
    print("ok   open breaker: 503 naming the provider, Retry-After: 1", flush=True)

    # The SDK honours Retry-After, retries after the cooldown, and the probe closes the breaker.
    started = time.monotonic()
    c = ask(default_retries, "q")
    waited = time.monotonic() - started
    assert c.choices[0].message.content, c
    assert waited >= 0.5, f"the SDK should have waited for Retry-After, waited {waited:.2f}s"
    print(f"ok   SDK retried after {waited:.2f}s and the probe succeeded", flush=True)

    c = ask(no_retries, "another question")
    assert c.choices[0].message.content, c
    print("ok   traffic flows again", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report and fail
        print(f"FAIL {e!r}", flush=True)
        sys.exit(1)
