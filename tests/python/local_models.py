"""The official OpenAI Python SDK against `isnad serve` with no configuration: the in-process
chat and embedding models answer. Run by tests/tests/local_models.rs; prints one line per check
and exits non-zero on the first failure."""

import math
import sys

import openai

from checks import check

BASE, TOKEN = sys.argv[1], sys.argv[2]
client = openai.OpenAI(api_key=TOKEN, base_url=f"{BASE}/v1", max_retries=0, timeout=120)


ids = {m.id for m in client.models.list().data}
check("models lists the local chat and embedding models",
      {"smollm2-135m-instruct", "all-minilm-l6-v2"} <= ids, ids)

MSG = [{"role": "user", "content": "What is the capital of France?"}]
raw = client.chat.completions.with_raw_response.create(model="auto-router", messages=MSG, temperature=0)
r = raw.parse()
check("auto-router answers from the local model", r.model == "smollm2-135m-instruct", r.model)
check("the answer names Paris", "Paris" in r.choices[0].message.content, r.choices[0].message.content)
check("finish reason stop", r.choices[0].finish_reason == "stop", r.choices[0].finish_reason)
check("usage counts tokens", r.usage.prompt_tokens > 10 and r.usage.completion_tokens > 0, r.usage)
check("local residency header", raw.headers.get("x-data-residency") == "local", dict(raw.headers))
print("REQUEST_ID", raw.headers.get("x-request-id"))

story = [{"role": "user", "content": "Write one sentence about the sea."}]
kw = dict(model="smollm2-135m-instruct", messages=story, temperature=0.8, seed=42, max_tokens=20)
whole = client.chat.completions.create(**kw).choices[0].message.content
parts, finish, usage = [], None, None
for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        finish = c.finish_reason or finish
check("streamed token by token", len(parts) > 3, parts)
check("seeded stream equals the seeded answer", "".join(parts) == whole, ("".join(parts), whole))
check("stream ends with a finish reason", finish in ("stop", "length"), finish)
check("stream usage chunk", usage is not None and usage.completion_tokens > 0, usage)

r = client.chat.completions.create(model="smollm2-135m-instruct", messages=MSG, temperature=0,
                                   max_tokens=40, stop=["Paris"])
check("stop sequence cuts the text", "Paris" not in r.choices[0].message.content, r.choices[0].message.content)
r = client.chat.completions.create(model="smollm2-135m-instruct", messages=MSG, max_tokens=2)
check("max_tokens ends with length", r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2, r)

texts = ["The capital of France is Paris.", "Where is Paris?", "I like green apples.", "مرحبا بالعالم"]
e = client.embeddings.create(model="all-minilm-l6-v2", input=texts)  # base64 on the wire (SDK default)
vecs = [d.embedding for d in e.data]
check("one 384-dim vector per input", len(vecs) == 4 and all(len(v) == 384 for v in vecs), [len(v) for v in vecs])
check("vectors have unit length", all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vecs))
dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
check("related sentences are closer", dot(vecs[0], vecs[1]) > dot(vecs[1], vecs[2]) + 0.2,
      (dot(vecs[0], vecs[1]), dot(vecs[1], vecs[2])))
check("usage counts tokens", e.usage.prompt_tokens > 10, e.usage)
f = client.embeddings.create(model="all-minilm-l6-v2", input="Where is Paris?", encoding_format="float")
check("float and base64 agree", max(abs(a - b) for a, b in zip(f.data[0].embedding, vecs[1])) < 1e-6)

try:
    client.chat.completions.create(model="smollm2-135m-instruct", messages=MSG, n=3)
    check("n>1 refused", False, "no error")
except openai.BadRequestError as err:
    check("n>1 refused with 400", err.status_code == 400, err)
try:
    client.embeddings.create(model="all-minilm-l6-v2", input=[])
    check("empty input refused", False, "no error")
except openai.BadRequestError as err:
    check("empty input refused with 400", err.status_code == 400, err)
print("ALL OK")
