"""Drives `airllm serve` with the official `openai` client: the client is the
judge of the wire format. Usage: openai_client.py BASE_URL API_KEY MODEL_ID"""

import sys

import openai

base, key, model = sys.argv[1:4]
client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)

listed = client.models.list()
assert [m.id for m in listed.data] == [model], listed

question = [{"role": "user", "content": "What is the capital of France?"}]
chat = client.chat.completions.create(model=model, messages=question, max_tokens=16, temperature=0)
answer = chat.choices[0].message.content
assert "Paris" in answer, answer
assert chat.choices[0].finish_reason in ("stop", "length"), chat
assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0, chat.usage

chunks = list(
    client.chat.completions.create(
        model=model,
        messages=question,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == answer, (streamed, answer)
assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens, chunks[-1]

completion = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
assert "Paris" in completion.choices[0].text, completion

# Log-probabilities: each greedy token is the most likely, and a log of a probability.
scored = client.chat.completions.create(
    model=model, messages=question, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
)
content = scored.choices[0].logprobs.content
assert len(content) == scored.usage.completion_tokens, scored
for token in content:
    assert token.logprob <= 0 and len(token.top_logprobs) == 2, token
    assert token.top_logprobs[0].token == token.token, token
    assert abs(token.top_logprobs[0].logprob - token.logprob) < 1e-4, token
legacy = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=1)
assert len(legacy.choices[0].logprobs.token_logprobs) == 4, legacy
assert "".join(legacy.choices[0].logprobs.tokens) == legacy.choices[0].text, legacy

try:
    client.chat.completions.create(
        model=model, messages=question, tools=[{"type": "function", "function": {"name": "f"}}]
    )
    raise AssertionError("tools were accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "tools", e.body

try:
    openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    pass

print("ok")
