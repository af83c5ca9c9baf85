"""LangChain's OpenAI integration (`langchain-openai`) pointed at isnad by its base URL: chat,
streaming, tool calling and embeddings against the mock upstream. Run by
tests/tests/openai_sdk.rs; prints one line per check and exits non-zero on the first failure."""

import sys

from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from checks import check

BASE, TOKEN = sys.argv[1], sys.argv[2]


llm = ChatOpenAI(model="small", base_url=f"{BASE}/v1", api_key=TOKEN, max_retries=0, timeout=20)
msg = llm.invoke("What is the capital of France?")
check("invoke", "capital of France" in msg.content, msg.content)
check("usage metadata", msg.usage_metadata and msg.usage_metadata["total_tokens"] > 0, msg.usage_metadata)
streamed = "".join(c.content for c in llm.stream("What is the capital of France?"))
check("stream equals invoke", streamed == msg.content, (streamed, msg.content))


def get_weather(city: str) -> str:
    """Weather for a city."""
    return "sunny"


called = llm.bind_tools([get_weather]).invoke("Weather in Riyadh?")
check("tool call", called.tool_calls and called.tool_calls[0]["name"] == "get_weather"
      and called.tool_calls[0]["args"] == {"city": "Riyadh"}, called.tool_calls)

# No tokenizer download: the gateway counts tokens, the client need not.
emb = OpenAIEmbeddings(model="embed", base_url=f"{BASE}/v1", api_key=TOKEN, dimensions=8,
                       check_embedding_ctx_length=False, max_retries=0)
vecs = emb.embed_documents(["مرحبا بالعالم", "hello world"])
check("embed_documents", len(vecs) == 2 and len(vecs[0]) == 8, [len(v) for v in vecs])
q = emb.embed_query("hello world")
check("embed_query equals the document vector", max(abs(a - b) for a, b in zip(q, vecs[1])) < 1e-6)
print("ALL OK")
