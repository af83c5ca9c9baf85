"""The official OpenAI Python SDK pointed at isnad: every call a user makes, and every error status
arriving as the SDK's typed exception. Run by tests/tests/openai_sdk.rs against a live isnad and
mock upstream; prints one line per check and exits non-zero on the first failure."""

import base64
import struct
import sys

import openai

import checks
from checks import check

BASE, TOKEN = sys.argv[1], sys.argv[2]
client = openai.OpenAI(api_key=TOKEN, base_url=f"{BASE}/v1", max_retries=0, timeout=20)
request_ids = []


def expect_error(name, exc_type, status, fn):
    try:
        fn()
    except exc_type as e:
        check(name, getattr(e, "status_code", status) == status, f"status {getattr(e, 'status_code', None)}")
        return e
    except Exception as e:  # noqa: BLE001 - report what arrived instead
        check(name, False, f"raised {type(e).__name__}: {e}")
    check(name, False, "no exception")


MSG = [{"role": "user", "content": "What is the capital of France?"}]

# Chat, non-streaming, with the sovereignty headers.
raw = client.chat.completions.with_raw_response.create(model="small", messages=MSG)
chat = raw.parse()
text = chat.choices[0].message.content
check("chat answers", "capital of France" in text, text)
check("chat usage", chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens > 0)
check("chat model id", chat.model == "small", chat.model)
for h in ("x-request-id", "x-audit-trace-id", "x-sovereign-id", "x-route-policy", "x-data-residency"):
    check(f"header {h}", raw.headers.get(h), dict(raw.headers))
check("residency local", raw.headers["x-data-residency"] == "local")
request_ids.append(raw.headers["x-request-id"])

# auto-router picks the configured default.
auto = client.chat.completions.with_raw_response.create(model="auto-router", messages=MSG)
check("auto-router routes", auto.parse().model == "small" and auto.headers["x-route-policy"] == "default")

# Streaming with usage: role first, same text as non-streaming, usage chunk with no choices.
stream = client.chat.completions.create(model="small", messages=MSG, stream=True, stream_options={"include_usage": True})
chunks = list(stream)
content_chunks = [c for c in chunks if c.choices]
check("stream role first", content_chunks[0].choices[0].delta.role == "assistant")
streamed = "".join(c.choices[0].delta.content or "" for c in content_chunks)
check("stream text equals non-stream", streamed == text, f"{streamed!r} vs {text!r}")
usage = [c for c in chunks if not c.choices]
check("stream usage chunk", len(usage) == 1 and usage[0].usage.completion_tokens > 0)

# Tools: passed through; tool-call deltas carry their index.
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
tc = client.chat.completions.create(model="small", messages=MSG, tools=tools, tool_choice="auto")
call = tc.choices[0].message.tool_calls[0]
check("tool call", call.function.name == "get_weather" and "Riyadh" in call.function.arguments and tc.choices[0].finish_reason == "tool_calls")
deltas = [d for c in client.chat.completions.create(model="small", messages=MSG, tools=tools, stream=True) for d in (c.choices[0].delta.tool_calls or [])]
check("tool call deltas carry index", deltas and all(d.index == 0 for d in deltas))
check("tool call args reassemble", "".join(d.function.arguments or "" for d in deltas) == '{"city":"Riyadh"}')

# Embeddings: the SDK asks for base64 by default and decodes it; float works too.
emb = client.embeddings.create(model="embed", input=["مرحبا بالعالم", "hello world"], dimensions=8)
check("embeddings base64 default", len(emb.data) == 2 and len(emb.data[0].embedding) == 8)
check("embeddings unit norm", abs(sum(x * x for x in emb.data[0].embedding) - 1.0) < 1e-3)
embf = client.embeddings.create(model="embed", input="hello world", dimensions=8, encoding_format="float")
check("embeddings float equals base64", all(abs(a - b) < 1e-6 for a, b in zip(embf.data[0].embedding, emb.data[1].embedding)))
raw_b64 = client.embeddings.with_raw_response.create(model="embed", input="x", encoding_format="base64", dimensions=4).http_response.json()
check("embeddings raw base64", len(struct.unpack("<4f", base64.b64decode(raw_b64["data"][0]["embedding"]))) == 4)

# Models.
ids = {m.id for m in client.models.list()}
check("models list", {"small", "embed", "auto-router"} <= ids, ids)

# Fallback: the broken model falls back to a working one.
fb = client.chat.completions.create(model="broken", messages=MSG)
check("fallback answers", "capital" in fb.choices[0].message.content and fb.model == "small", fb.model)

# Errors as typed exceptions.
bad = openai.OpenAI(api_key="wrong", base_url=f"{BASE}/v1", max_retries=0)
expect_error("401 AuthenticationError", openai.AuthenticationError, 401, lambda: bad.chat.completions.create(model="small", messages=MSG))
# Keys of [[keys]]: an auditor may not call models (403); a clinic key, held to its models and to
# local residency, is refused an external model (451), gets no external fallback, and sees only
# its models.
auditor = openai.OpenAI(api_key="sdk-auditor-key", base_url=f"{BASE}/v1", max_retries=0)
e = expect_error("403 PermissionDeniedError (auditor role)", openai.PermissionDeniedError, 403, lambda: auditor.chat.completions.create(model="small", messages=MSG))
check("403 role code", e.code == "permission_denied", e.body)
clinic = openai.OpenAI(api_key="sdk-clinic-key", base_url=f"{BASE}/v1", max_retries=0, timeout=20)
e = expect_error("403 PermissionDeniedError (model not in the key's list)", openai.PermissionDeniedError, 403, lambda: clinic.chat.completions.create(model="plain", messages=MSG))
check("403 model code", e.code == "model_not_permitted", e.body)
e = expect_error("451 sovereignty_violation", openai.APIStatusError, 451, lambda: clinic.chat.completions.create(model="abroad", messages=MSG))
check("451 code", e.code == "sovereignty_violation" and e.body.get("type") == "sovereignty_error", e.body)
check("451 carries the audit trace", e.response.headers.get("x-audit-trace-id"), dict(e.response.headers))
print(f"REFUSED_ID {e.response.headers['x-request-id']}")
local = clinic.chat.completions.with_raw_response.create(model="auto-router", messages=MSG)
check("local-only key routed inside", local.parse().model == "small" and local.headers["x-route-policy"] == "local-only" and local.headers["x-data-residency"] == "local", dict(local.headers))
expect_error("no external fallback for a local-only key", openai.InternalServerError, 502, lambda: clinic.chat.completions.create(model="home-broken", messages=MSG))
crossed = client.chat.completions.create(model="home-broken", messages=MSG)
check("an unrestricted key does fall back outside", crossed.model == "abroad", crossed.model)
clinic_ids = {m.id for m in clinic.models.list()}
check("a key sees only its models", clinic_ids == {"small", "abroad", "home-broken", "auto-router"}, clinic_ids)
expect_error("400 BadRequestError (no messages)", openai.BadRequestError, 400, lambda: client.chat.completions.create(model="small", messages=[]))
e = expect_error("400 BadRequestError (bad role)", openai.BadRequestError, 400, lambda: client.chat.completions.create(model="small", messages=[{"role": "wizard", "content": "x"}]))
check("400 names the param", e.body.get("param") == "messages[0].role", e.body)
expect_error("400 BadRequestError (temperature)", openai.BadRequestError, 400, lambda: client.chat.completions.create(model="small", messages=MSG, temperature=9))
e = expect_error("404 NotFoundError", openai.NotFoundError, 404, lambda: client.chat.completions.create(model="no-such-model", messages=MSG))
check("404 code", e.code == "model_not_found", e.code)
expect_error("404 embeddings with a chat model", openai.NotFoundError, 404, lambda: client.embeddings.create(model="small", input="x"))
e = expect_error("422 tools on a model without them", openai.UnprocessableEntityError, 422, lambda: client.chat.completions.create(model="plain", messages=MSG, tools=tools))
check("422 names the param", e.body.get("param") == "tools", e.body)
expect_error("422 dimensions on a fixed-size embedder", openai.UnprocessableEntityError, 422, lambda: client.embeddings.create(model="fixed-embed", input="x", dimensions=3))
expect_error("413 body too large", openai.APIStatusError, 413, lambda: client.chat.completions.create(model="small", messages=[{"role": "user", "content": "x" * 2_000_000}]))
expect_error("429 RateLimitError", openai.RateLimitError, 429, lambda: client.chat.completions.create(model="limited", messages=MSG))
expect_error("502 upstream error", openai.InternalServerError, 502, lambda: client.chat.completions.create(model="failing", messages=MSG))
expect_error("503 upstream unreachable", openai.InternalServerError, 503, lambda: client.chat.completions.create(model="unreachable", messages=MSG))
expect_error("504 upstream timeout", openai.InternalServerError, 504, lambda: client.chat.completions.create(model="hanging", messages=MSG))

# A stream cut mid-way ends with an SSE error object, which the SDK raises.
got = []
try:
    for c in client.chat.completions.create(model="cut", messages=MSG, stream=True):
        got.append(c)
    check("cut stream raises", False, "stream ended without an error")
except openai.APIError as e:
    check("cut stream raises", len(got) >= 2, f"{len(got)} chunks before {e}")

# A stream whose upstream never answers ends with an SSE error object, not a silent close.
try:
    for c in client.chat.completions.create(model="hanging", messages=MSG, stream=True):
        pass
    check("hung stream raises", False, "stream ended without an error")
except openai.APIError as e:
    check("hung stream raises", "timed out" in str(e), str(e))

print(f"REQUEST_IDS {' '.join(request_ids)}")
print(f"{checks.passed} passed, 0 failed")
