"""LlamaIndex's OpenAI-compatible integrations (`llama-index-llms-openai-like`,
`llama-index-embeddings-openai-like`) pointed at isnad by base URL: chat, streaming, completion
and embeddings against the mock upstream. Run by tests/tests/openai_sdk.rs; prints one line per
check and exits non-zero on the first failure."""

import sys

from llama_index.core.llms import ChatMessage
from llama_index.embeddings.openai_like import OpenAILikeEmbedding
from llama_index.llms.openai_like import OpenAILike

from checks import check

BASE, TOKEN = sys.argv[1], sys.argv[2]


llm = OpenAILike(model="small", api_base=f"{BASE}/v1", api_key=TOKEN, is_chat_model=True,
                 context_window=8192, max_retries=0, timeout=20)
msgs = [ChatMessage(role="user", content="What is the capital of France?")]
r = llm.chat(msgs)
check("chat", "capital of France" in r.message.content, r.message.content)
streamed = "".join(c.delta or "" for c in llm.stream_chat(msgs))
check("stream_chat equals chat", streamed == r.message.content, (streamed, r.message.content))
c = llm.complete("What is the capital of France?")
check("complete (through chat)", "capital of France" in c.text, c.text)

emb = OpenAILikeEmbedding(model_name="embed", api_base=f"{BASE}/v1", api_key=TOKEN, dimensions=8,
                          max_retries=0)
vecs = emb.get_text_embedding_batch(["مرحبا بالعالم", "hello world"])
check("text embeddings", len(vecs) == 2 and len(vecs[0]) == 8, [len(v) for v in vecs])
q = emb.get_query_embedding("hello world")
check("query equals text vector", max(abs(a - b) for a, b in zip(q, vecs[1])) < 1e-6)
print("ALL OK")
