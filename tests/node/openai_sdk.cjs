// The official OpenAI Node SDK pointed at isnad (same gateway and mock upstream as
// tests/python/openai_sdk.py): chat, streaming with usage, tool calls, embeddings, models,
// fallback, and each error status as the SDK's typed error. Run by tests/tests/openai_sdk.rs;
// prints one line per check and exits non-zero on the first failure.
const { OpenAI } = require("openai"); // found through NODE_PATH (scripts/test installs it)

async function main() {

const [BASE, TOKEN] = process.argv.slice(2);
const client = new OpenAI({ apiKey: TOKEN, baseURL: `${BASE}/v1`, maxRetries: 0, timeout: 20_000 });
let passed = 0;

function check(name, cond, detail = "") {
  if (!cond) {
    console.log(`FAIL ${name}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    process.exit(1);
  }
  passed += 1;
  console.log(`ok   ${name}`);
}

async function expectError(name, cls, status, fn) {
  try {
    await fn();
  } catch (e) {
    check(name, e instanceof cls && e.status === status, `${e?.constructor?.name} ${e?.status}: ${e?.message}`);
    return e;
  }
  check(name, false, "no error");
}

const MSG = [{ role: "user", content: "What is the capital of France?" }];

// Chat, with the sovereignty headers.
const { data: chat, response } = await client.chat.completions.create({ model: "small", messages: MSG }).withResponse();
const text = chat.choices[0].message.content;
check("chat answers", text.includes("capital of France"), text);
check("chat usage", chat.usage.total_tokens === chat.usage.prompt_tokens + chat.usage.completion_tokens);
for (const h of ["x-request-id", "x-audit-trace-id", "x-sovereign-id", "x-route-policy", "x-data-residency"]) {
  check(`header ${h}`, response.headers.get(h));
}

// Streaming with usage.
const stream = await client.chat.completions.create({
  model: "small", messages: MSG, stream: true, stream_options: { include_usage: true },
});
const chunks = [];
for await (const c of stream) chunks.push(c);
const withChoices = chunks.filter((c) => c.choices.length > 0);
check("stream role first", withChoices[0].choices[0].delta.role === "assistant");
const streamed = withChoices.map((c) => c.choices[0].delta.content ?? "").join("");
check("stream text equals non-stream", streamed === text, `${streamed} vs ${text}`);
const usage = chunks.filter((c) => c.choices.length === 0);
check("stream usage chunk", usage.length === 1 && usage[0].usage.completion_tokens > 0);

// Tool calls, whole and streamed (the SDK's helper reassembles the deltas by index).
const tools = [{ type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } } }];
const tc = await client.chat.completions.create({ model: "small", messages: MSG, tools, tool_choice: "auto" });
check("tool call", tc.choices[0].message.tool_calls[0].function.name === "get_weather");
const runner = client.chat.completions.stream({ model: "small", messages: MSG, tools });
const final = await runner.finalChatCompletion();
check("streamed tool call reassembles", final.choices[0].message.tool_calls[0].function.arguments === '{"city":"Riyadh"}',
  final.choices[0].message);

// Embeddings: the Node SDK also asks for base64 by default and decodes it.
const emb = await client.embeddings.create({ model: "embed", input: ["مرحبا بالعالم", "hello world"], dimensions: 8 });
check("embeddings", emb.data.length === 2 && emb.data[0].embedding.length === 8);
const norm = emb.data[0].embedding.reduce((s, x) => s + x * x, 0);
check("embeddings unit norm", Math.abs(norm - 1) < 1e-3, `${norm}`);
const embf = await client.embeddings.create({ model: "embed", input: "hello world", dimensions: 8, encoding_format: "float" });
check("float equals base64", embf.data[0].embedding.every((x, i) => Math.abs(x - emb.data[1].embedding[i]) < 1e-6));

// Models, auto-router, fallback.
const ids = new Set();
for await (const m of client.models.list()) ids.add(m.id);
check("models list", ["small", "embed", "auto-router"].every((id) => ids.has(id)), [...ids]);
const auto = await client.chat.completions.create({ model: "auto-router", messages: MSG });
check("auto-router routes", auto.model === "small", auto.model);
const fb = await client.chat.completions.create({ model: "broken", messages: MSG });
check("fallback answers", fb.model === "small", fb.model);

// Errors as typed errors.
const bad = new OpenAI({ apiKey: "wrong", baseURL: `${BASE}/v1`, maxRetries: 0 });
await expectError("401 AuthenticationError", OpenAI.AuthenticationError, 401, () => bad.chat.completions.create({ model: "small", messages: MSG }));
await expectError("400 BadRequestError", OpenAI.BadRequestError, 400, () => client.chat.completions.create({ model: "small", messages: [] }));
const nf = await expectError("404 NotFoundError", OpenAI.NotFoundError, 404, () => client.chat.completions.create({ model: "no-such-model", messages: MSG }));
check("404 code", nf.code === "model_not_found", nf.code);
await expectError("422 UnprocessableEntityError", OpenAI.UnprocessableEntityError, 422, () => client.chat.completions.create({ model: "plain", messages: MSG, tools }));
await expectError("429 RateLimitError", OpenAI.RateLimitError, 429, () => client.chat.completions.create({ model: "limited", messages: MSG }));
await expectError("502 InternalServerError", OpenAI.InternalServerError, 502, () => client.chat.completions.create({ model: "failing", messages: MSG }));
await expectError("504 InternalServerError", OpenAI.InternalServerError, 504, () => client.chat.completions.create({ model: "hanging", messages: MSG }));

// A stream cut mid-way ends with an SSE error object, which the SDK throws.
let got = 0;
try {
  for await (const c of await client.chat.completions.create({ model: "cut", messages: MSG, stream: true })) got += c ? 1 : 0;
  check("cut stream throws", false, "ended without an error");
} catch (e) {
  check("cut stream throws", e instanceof OpenAI.APIError && got >= 2, `${got} chunks before ${e}`);
}

console.log(`${passed} passed, 0 failed`);
}

main().catch((e) => {
  console.log(`FAIL unexpected: ${e}`);
  process.exit(1);
});
