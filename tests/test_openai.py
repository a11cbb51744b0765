"""Unmodified clients against the demo's tiny LLM on the real tritonserver: the OpenAI frontend
(openai sync/async, LangChain ChatOpenAI, LlamaIndex OpenAILike) and the ensemble's Triton contract
(llama-index NvidiaTriton, tritonclient gRPC streaming, upstream's optional inputs).

Greedy answers are compared exactly with the ensemble's own answer (Triton's generate endpoint,
same prompt, same max_tokens, top_k 1): the frontend adds no computation of its own, and the tiny
model's greedy choices are decisive (see test_llm.py), so any difference is a mapping bug.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import time
import urllib.request

import numpy as np
import pytest
import requests
from tokenizers import Tokenizer

from test_llm import shared_tiny_llm
from tritonize.openai import Frontend
from tritonize.terminal import Terminal
from tritonize.triton.server import free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]

MAX_TOKENS = 12
PROMPT = "The river runs"
SPEC = """\
repository: model_repo
models:
  - name: tiny_llm
    source: {framework: huggingface, path: tiny}
    llm:
      streaming: true
      bls: true
      limits: {max_batch_size: 4, max_input_len: 64, max_output_len: 256}
  - name: tiny_llm_2607
    source: {framework: huggingface, path: tiny}
    llm:
      release: "26.07"
      engine: tensorrt_llm
      streaming: true
      limits: {max_batch_size: 4, max_input_len: 64, max_output_len: 256}
  - name: tiny_nochat
    source: {framework: huggingface, path: tiny_nochat}
    llm:
      streaming: false
      limits: {max_batch_size: 2, max_input_len: 64, max_output_len: 48}
  - name: tiny_llmapi
    source: {framework: huggingface, path: tiny}
    llm:
      release: "26.07"
      streaming: true
      limits: {max_batch_size: 4, max_input_len: 64, max_output_len: 48}
"""
LLMAPI = "tiny_llmapi"  # engine: llmapi is 26.07's default: the LLM API model (its CPU stand-in here)


@pytest.fixture(scope="module")
def built(tmp_path_factory, repo_root):
    from tritonize import build

    tiny = shared_tiny_llm(tmp_path_factory, repo_root)
    nochat = tiny.parent / "tiny_nochat"  # the same model with no chat template in its tokenizer
    shutil.copytree(tiny, nochat)
    (nochat / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((nochat / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (nochat / "tokenizer_config.json").write_text(json.dumps(config))
    (tiny.parent / "model.yaml").write_text(SPEC)
    return build(tiny.parent / "model.yaml", terminal=Terminal(quiet=True, stderr=True))


@pytest.fixture(scope="module")
def server(triton_server, built):
    return triton_server(built.repository)


@pytest.fixture(scope="module")
def frontend(server, built):
    with Frontend(built.repository, server.grpc_url, host="127.0.0.1", port=free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def guarded(server, built, tmp_path_factory):
    """A second frontend with API keys and room for one request at a time."""
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    # A bare key, and a line of the deploy gateway's api-keys.map: the frontend reads both.
    keys.write_text('# keys\nsecret-one\n\n"Bearer secret-two" ci-client;\n')
    with Frontend(built.repository, server.grpc_url, host="127.0.0.1", port=free_port(), api_keys_file=keys,
                  max_in_flight=1) as running:
        yield running


def ensemble_answer(server, model, prompt, max_tokens=MAX_TOKENS, **extra):
    """The model's own greedy answer over Triton's generate endpoint (an ensemble's, or the LLM
    API model's with its own input names)."""
    body = {"text_input": prompt, "sampling_param_max_tokens": max_tokens, "sampling_param_top_k": 1} \
        if model == LLMAPI else {"text_input": prompt, "max_tokens": max_tokens, "top_k": 1}
    response = requests.post(f"http://{server.http_url}/v2/models/{model}/generate", json={**body, **extra},
                             timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def chat_prompt(content):
    """examples/tiny_llm/make_model.py CHAT_TEMPLATE rendered for one user message."""
    return f"user: {content}\nassistant:"


def post(frontend, path, body, headers=None):
    return requests.post(f"{frontend.url}{path}", json=body, headers=headers, timeout=60)


# -- the frontend with official and framework clients -----------------------------------------

def test_models_lists_every_llm_ensemble_with_its_context(frontend):
    import openai

    client = openai.OpenAI(base_url=frontend.url, api_key="unused")
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny_llm", "tiny_llm_2607", "tiny_nochat", LLMAPI}
    assert models["tiny_llm"].max_input_len == 64 and models["tiny_llm"].max_model_len == 64 + 256
    assert models[LLMAPI].max_input_len == 64 and models[LLMAPI].max_model_len == 64 + 48


@pytest.mark.parametrize("model", ["tiny_llm", "tiny_llm_2607", "tiny_nochat", LLMAPI])
def test_openai_completions_equal_the_ensemble_streamed_or_not(frontend, server, model):
    import openai

    expected = ensemble_answer(server, model, PROMPT)["text_output"]
    client = openai.OpenAI(base_url=frontend.url, api_key="unused")
    answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
    assert answer.choices[0].text == expected
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == MAX_TOKENS
    assert answer.usage.prompt_tokens == 4  # "The river runs" is 4 tokens in the tiny BPE
    chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == MAX_TOKENS


def test_openai_async_chat_equals_the_ensemble_on_the_rendered_template(frontend, server):
    import openai

    expected = ensemble_answer(server, "tiny_llm", chat_prompt(PROMPT))["text_output"]

    async def run():
        client = openai.AsyncOpenAI(base_url=frontend.url, api_key="unused")
        messages = [{"role": "user", "content": PROMPT}]
        whole = await client.chat.completions.create(model="tiny_llm", messages=messages, max_tokens=MAX_TOKENS,
                                                     temperature=0)
        stream = await client.chat.completions.create(model="tiny_llm", messages=messages, max_tokens=MAX_TOKENS,
                                                      temperature=0, stream=True)
        deltas = [c.choices[0].delta.content or "" async for c in stream]
        await client.close()
        return whole, deltas

    whole, deltas = asyncio.run(run())
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].message.role == "assistant"
    assert "".join(deltas) == expected


def test_llmapi_model_streams_deltas_takes_its_parameters_and_refuses_what_it_lacks(frontend, server):
    """The LLM API model streams the text so far: the frontend sends the new part; its stop
    strings, seed and penalties go to its sampling_param_* inputs; it has no repetition_penalty."""
    import openai

    client = openai.OpenAI(base_url=frontend.url, api_key="unused")
    expected = ensemble_answer(server, LLMAPI, chat_prompt(PROMPT))["text_output"]
    messages = [{"role": "user", "content": PROMPT}]
    chunks = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=LLMAPI, messages=messages, max_tokens=MAX_TOKENS, temperature=0, stream=True)]
    assert "".join(chunks) == expected and len([c for c in chunks if c]) > 1
    full = ensemble_answer(server, LLMAPI, PROMPT, max_tokens=24)["text_output"]
    stop = full.split()[2]
    answer = client.completions.create(model=LLMAPI, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop],
                                       seed=3, presence_penalty=0.0)
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == (full[:full.index(stop)], "stop")
    refused = post(frontend, "/completions", {"model": LLMAPI, "prompt": PROMPT, "repetition_penalty": 1.2})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "repetition_penalty"
    assert "tiny_llmapi" in refused.json()["error"]["message"]


def test_stop_strings_cut_the_text_and_finish_with_stop(frontend, server):
    import openai

    full = ensemble_answer(server, "tiny_llm", PROMPT, max_tokens=24)["text_output"]
    stop = full.split()[2]  # a word in the middle of the greedy answer
    expected = full[:full.index(stop)]
    client = openai.OpenAI(base_url=frontend.url, api_key="unused")
    answer = client.completions.create(model="tiny_llm", prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop])
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == (expected, "stop")
    # Usage counts the stop string as generated, as OpenAI does: the tokens of the text up to its end
    # (the demo's 24.10 ensemble reports no token count, so the frontend counts the text's).
    tokenizer = Tokenizer.from_file(str(frontend.models["tiny_llm"].tokenizer_dir / "tokenizer.json"))
    through_stop = full[:full.index(stop) + len(stop)]
    assert answer.usage.completion_tokens == len(tokenizer.encode(through_stop, add_special_tokens=False).ids)
    at_once = client.completions.create(model="tiny_llm", prompt=PROMPT, max_tokens=24, temperature=0, stop=full[:3])
    assert at_once.choices[0].text == "" and at_once.usage.completion_tokens >= 1  # was 0: the empty text's
    streamed = client.completions.create(model="tiny_llm", prompt=PROMPT, max_tokens=24, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_langchain_chat_openai(frontend, server):
    from langchain_openai import ChatOpenAI

    expected = ensemble_answer(server, "tiny_llm", chat_prompt(PROMPT))["text_output"]
    chat = ChatOpenAI(model="tiny_llm", base_url=frontend.url, api_key="unused", temperature=0, max_tokens=MAX_TOKENS)
    assert chat.invoke(PROMPT).content == expected
    assert "".join(chunk.content for chunk in chat.stream(PROMPT)) == expected


def test_llamaindex_openai_like(frontend, server):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    common = dict(model="tiny_llm", api_base=frontend.url, api_key="unused", temperature=0.0, max_tokens=MAX_TOKENS,
                  context_window=64 + 256)
    completion = OpenAILike(**common, is_chat_model=False)
    assert completion.complete(PROMPT).text == ensemble_answer(server, "tiny_llm", PROMPT)["text_output"]
    chat = OpenAILike(**common, is_chat_model=True)
    expected = ensemble_answer(server, "tiny_llm", chat_prompt(PROMPT))["text_output"]
    assert chat.chat([ChatMessage(role="user", content=PROMPT)]).message.content == expected
    assert "".join(r.delta for r in chat.stream_chat([ChatMessage(role="user", content=PROMPT)])) == expected


# -- errors in OpenAI's shape ----------------------------------------------------------------

@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/completions", {"model": "nope", "prompt": "x"}, 404, "model"),
    ("/completions", {"model": "tiny_llm", "prompt": "x", "n": 2}, 400, "n"),
    ("/completions", {"model": "tiny_llm", "prompt": "x", "logprobs": 2}, 400, "logprobs"),
    ("/chat/completions", {"model": "tiny_llm", "messages": [{"role": "user", "content": "x"}], "logprobs": True},
     400, "logprobs"),
    ("/completions", {"model": "tiny_llm", "prompt": "x", "temperature": 5}, 400, "temperature"),
    ("/completions", {"model": "tiny_llm", "prompt": "x", "max_tokens": 257}, 400, "max_tokens"),
    ("/completions", {"model": "tiny_llm", "prompt": "x", "top_p": "high"}, 400, "top_p"),
    ("/completions", {"model": "tiny_llm", "prompt": [1, 2]}, 400, "prompt"),
    ("/chat/completions", {"model": "tiny_llm", "messages": []}, 400, "messages"),
    ("/completions", {"model": "tiny_llm", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/completions", {"model": "tiny_llm", "prompt": "x", "stop": 0}, 400, "stop"),
    ("/completions", {"model": 5, "prompt": "x"}, 400, "model"),
    ("/completions", {"model": "tiny_llm", "prompt": "x", "stream": True, "stream_options": {"include_usage": "no"}},
     400, "stream_options.include_usage"),
    ("/chat/completions", {"model": "tiny_llm", "messages": [{"role": "user", "content": "x"}],
                           "tool_choice": "required"}, 400, "tool_choice"),
    ("/chat/completions", {"model": "tiny_llm", "messages": [{"role": "user", "content": "x"}],
                           "modalities": ["text", "audio"]}, 400, "modalities"),
    ("/chat/completions", {"model": "tiny_llm", "messages": [{"role": "user", "content": "x"}],
                           "reasoning_effort": "high"}, 400, "reasoning_effort"),
    ("/chat/completions", {"model": "tiny_llm", "messages": [{"role": "wizard", "content": "x"}]},
     400, "messages[0].role"),
    ("/chat/completions", {"model": "tiny_llm", "messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ("/chat/completions", {"model": "tiny_llm", "messages": [{"role": "user", "content": []}]},
     400, "messages[0].content"),
    ("/chat/completions", {"model": "tiny_llm", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     400, "messages[0].content[0].text"),
])
def test_bad_requests_answer_openai_errors(frontend, path, body, status, param):
    response = post(frontend, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


NESTED = b'{"model": "tiny_llm", "prompt": "x", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize(("body", "headers"), [
    ('{"model": "tiny_llm", "prompt": "\\ud800abc", "max_tokens": 4}', {}),  # a lone surrogate
    ('{"model": "tiny_llm", "prompt": "x", "stop": ["\\udc00"]}', {}),
    ('{"model": "tiny_llm", "prompt": "x"}', {"Content-Type": "application/json; charset=bogus"}),
    ('{"model": "tiny_llm", "prompt": "x", "max_tokens": ' + "9" * 5000 + "}", {}),  # over int's 4300 digits
    (NESTED, {}),
    (b'{"model": "tiny_llm", "prompt": "\xff"}', {}),  # not UTF-8
], ids=["surrogate-prompt", "surrogate-stop", "bogus-charset", "huge-integer", "deep-nesting", "not-utf8"])
def test_malformed_bodies_are_400s_in_openai_shape(frontend, body, headers):
    """Bodies that Python's JSON and codecs reject in other ways than JSONDecodeError were 500s."""
    headers = {"Content-Type": "application/json", **headers}
    response = requests.post(f"{frontend.url}/completions", data=body, headers=headers, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert post(frontend, "/completions", {"model": "tiny_llm", "prompt": PROMPT, "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/models/nope", 404), ("GET", "/v1/embeddings", 404), ("POST", "/v1/responses", 404),
    ("GET", "/v1/completions", 405), ("PUT", "/v1/chat/completions", 405), ("POST", "/v1/models", 405),
])
def test_unknown_paths_models_and_methods_answer_openai_errors(frontend, method, path, status):
    response = requests.request(method, f"http://127.0.0.1:{frontend.port}{path}", json={}, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if path == "/v1/models/nope":
        assert error["code"] == "model_not_found" and "tiny_llm" in error["message"]


def test_a_bug_mid_stream_ends_the_stream_with_an_error_event(frontend, monkeypatch):
    """After the 200 a second response (the middleware's JSON 500) would garble the event stream."""
    from tritonize.openai import app

    original, calls = app.SseChunks.text, []

    def failing(self, text):
        calls.append(text)
        if len(calls) == 2:
            raise RuntimeError("a bug in the frontend")
        return original(self, text)

    monkeypatch.setattr(app.SseChunks, "text", failing)
    body = {"model": "tiny_llm", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True}
    response = requests.post(f"{frontend.url}/completions", json=body, timeout=60)
    assert response.status_code == 200
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["error"]["type"] == "server_error"
    assert "HTTP/1.1" not in response.text  # no second response inside the stream
    monkeypatch.setattr(app.SseChunks, "text", original)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{frontend.port}/metrics").read().decode()
    assert 'tritonize_openai_requests_total{endpoint="completions",model="tiny_llm",status="500"}' in metrics


def test_a_prompt_too_long_to_fit_is_refused_before_it_is_tokenized(frontend):
    """Megabytes of prompt were tokenized on the event loop before the length check (11 s for 7.8 MB,
    every other request waiting); now the characters alone refuse it, and others are not held up."""
    import concurrent.futures

    huge = "ab " * 2_000_000
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        refused = pool.submit(post, frontend, "/completions", {"model": "tiny_llm", "prompt": huge})
        time.sleep(0.05)
        start = time.perf_counter()
        small = post(frontend, "/completions", {"model": "tiny_llm", "prompt": PROMPT, "max_tokens": 2})
        small_s = time.perf_counter() - start
        response = refused.result()
    assert small.status_code == 200
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    assert "6000000 characters" in response.json()["error"]["message"]
    assert small_s < 5, f"a small request took {small_s:.1f} s next to the huge one"


def test_temperature_samples_as_openai_does(frontend, server):
    """temperature > 0 samples (OpenAI's top_p defaults to 1), though the spec's request defaults are
    greedy (top_k 1): a sampled answer differs from the greedy one for some seed, and a seed repeats."""
    greedy = ensemble_answer(server, "tiny_llm", PROMPT)["text_output"]
    body = {"model": "tiny_llm", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 1.5}
    sampled = [post(frontend, "/completions", {**body, "seed": seed}).json()["choices"][0]["text"] for seed in (1, 2, 3)]
    assert any(text != greedy for text in sampled), sampled
    assert post(frontend, "/completions", {**body, "seed": 2}).json()["choices"][0]["text"] == sampled[1]
    assert post(frontend, "/completions", {**body, "temperature": 0}).json()["choices"][0]["text"] == greedy


def test_prompt_longer_than_max_input_len_names_both_numbers(frontend):
    response = post(frontend, "/completions", {"model": "tiny_llm", "prompt": "The river runs " * 30})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    prompt_tokens = int(re.search(r"the prompt has (\d+) tokens", message).group(1))
    assert prompt_tokens > 64 and "max_input_len of 64 tokens" in message


def test_chat_without_a_template_says_how_to_add_one(frontend):
    response = post(frontend, "/chat/completions", {"model": "tiny_nochat", "messages": [{"role": "user",
                                                                                        "content": "hi"}]})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "tiny_nochat" in message and "chat_template" in message


def test_api_keys_and_busy(guarded):
    body = {"model": "tiny_llm", "prompt": PROMPT, "max_tokens": 4}
    assert post(guarded, "/completions", body).status_code == 401
    for path in ("/v1/models", "/v1/models/tiny_llm"):  # were 500s
        response = requests.get(f"http://127.0.0.1:{guarded.port}{path}", headers={"Authorization": "Bearer x"},
                                timeout=60)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert post(guarded, "/completions", body, {"Authorization": "Bearer wrong"}).json()["error"]["code"] == \
        "invalid_api_key"
    auth = {"Authorization": "Bearer secret-two"}
    assert post(guarded, "/completions", body, auth).status_code == 200
    # A request whose body is still arriving holds the one slot: the next one is 503.
    with socket.create_connection(("127.0.0.1", guarded.port)) as held:
        held.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer secret-one\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        deadline = time.monotonic() + 10
        busy = post(guarded, "/completions", body, auth)
        while busy.status_code != 503 and time.monotonic() < deadline:  # until the held one is accepted
            time.sleep(0.1)
            busy = post(guarded, "/completions", body, auth)
        assert busy.status_code == 503 and busy.json()["error"]["type"] == "server_error"
        assert "limit 1" in busy.json()["error"]["message"]


def test_a_stalled_body_gets_408_and_frees_its_slot(guarded, monkeypatch):
    """A client that sends its headers and stalls held one of max_in_flight (here 1) for good."""
    from tritonize.openai import app

    monkeypatch.setattr(app, "BODY_TIMEOUT_S", 1.0)
    auth = {"Authorization": "Bearer secret-one"}
    with socket.create_connection(("127.0.0.1", guarded.port)) as held:
        held.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer secret-one\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        held.settimeout(10)
        answer = held.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code": "request_timeout"' in answer
    body = {"model": "tiny_llm", "prompt": PROMPT, "max_tokens": 2}
    assert post(guarded, "/completions", body, auth).status_code == 200  # the slot is free again


# The engine logs how far a cancelled generation went (python_backends/llm_cpu_engine/model.py).
CANCELLED_LOG = re.compile(r"generation cancelled by the client after (\d+) of (\d+) tokens")
# A cancelled generation asks for this many tokens, max_output_len of the spec's streamed models: on a
# machine whose engine makes ~900 tokens a second its whole run takes ~280 ms, so a cancel that did
# not reach the engine shows as a run to the end (no log line, or all the tokens).
CANCEL_MAX_TOKENS = 256
# How long the engine may go on decoding after the client's cancel: the responses already on their
# way (socket buffers, the ensemble's postprocessing queue), the postprocessing's next
# is_cancelled() check (at most back_channel.CHECK_INTERVAL_S = 20 ms apart in a stream) and the
# round trip of the key. 15-60 ms seen on 2 cores (12-55 tokens at ~900 tokens/s); on a machine at
# load 13, 37 tokens at a few hundred a second (hence the floor, above that).
CANCEL_SLACK_S = 0.1
CANCEL_SLACK_MIN_TOKENS = 48


@pytest.fixture(scope="module")
def cancel_slack_tokens(server):
    """The tokens the engine makes in CANCEL_SLACK_S on this machine, from one whole generation timed
    now (unstreamed: its rate is the engine's, above its streamed rate, so the slack errs long)."""
    ensemble_answer(server, "tiny_llm_2607", PROMPT, max_tokens=4)  # warm
    start = time.perf_counter()
    answer = ensemble_answer(server, "tiny_llm_2607", PROMPT, max_tokens=CANCEL_MAX_TOKENS,
                             return_num_output_tokens=True)  # the 26.07 contract counts its tokens
    rate = int(np.asarray(answer["num_output_tokens"]).reshape(-1)[0]) / (time.perf_counter() - start)
    return max(CANCEL_SLACK_MIN_TOKENS, math.ceil(rate * CANCEL_SLACK_S))


def cancelled_generations(server, before: int) -> list[tuple[int, int]]:
    """(generated, requested) of each generation the engine logged as cancelled after offset before."""
    deadline = time.monotonic() + 15
    while True:
        found = [(int(a), int(b)) for a, b in CANCELLED_LOG.findall(server.log_text()[before:])]
        if found or time.monotonic() > deadline:
            assert found, ("the engine logged no cancelled generation: it ran to its end before the cancel "
                           "reached it, or never saw the cancel")
            return found
        time.sleep(0.2)


def test_client_disconnect_cancels_and_metrics_count_it(frontend, server, cancel_slack_tokens):
    before = len(server.log_text())
    body = json.dumps({"model": "tiny_llm", "prompt": PROMPT, "max_tokens": CANCEL_MAX_TOKENS, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", frontend.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        received = b""
        while received.count(b"data: ") < 3:  # the headers and the first chunks, then hang up
            received += sock.recv(4096)
        assert received.startswith(b"HTTP/1.1 200")
    # The generation stopped in the engine, not only in the frontend.
    [(generated, requested)] = cancelled_generations(server, before)
    # A chunk carries one token or more (the frontend takes multi-token responses): chunks err short.
    assert requested == CANCEL_MAX_TOKENS and generated <= received.count(b"data: ") + cancel_slack_tokens
    assert generated < CANCEL_MAX_TOKENS
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{frontend.port}/metrics").read().decode()
        if 'status="499"' in metrics and 'tritonize_openai_requests_in_flight{model="tiny_llm"} 0.0' in metrics:
            break
        time.sleep(0.2)
    assert 'tritonize_openai_requests_total{endpoint="completions",model="tiny_llm",status="499"}' in metrics
    assert 'tritonize_openai_requests_in_flight{model="tiny_llm"} 0.0' in metrics
    # A cancelled stream's tokens count in the latency histograms too.
    for histogram in ("time_to_first_token_seconds", "inter_token_latency_seconds", "tokens_per_second"):
        assert f'tritonize_openai_{histogram}_count{{model="tiny_llm"}}' in metrics


# -- the ensemble's Triton contract with Triton-native clients -------------------------------

async def cancel_stream_after(grpc_url: str, model: str, responses: int = 3) -> int:
    """A tritonclient gRPC stream of a CANCEL_MAX_TOKENS generation, cancelled after `responses`
    responses; how many it received."""
    import tritonclient.grpc.aio as grpc_aio

    client = grpc_aio.InferenceServerClient(grpc_url)
    inputs = []
    for name, array, datatype in [("text_input", np.array([[PROMPT.encode()]], dtype=object), "BYTES"),
                                  ("max_tokens", np.array([[CANCEL_MAX_TOKENS]], dtype=np.int32), "INT32"),
                                  ("stream", np.array([[True]]), "BOOL")]:
        inputs.append(grpc_aio.InferInput(name, list(array.shape), datatype))
        inputs[-1].set_data_from_numpy(array)

    async def requests_():
        yield {"model_name": model, "inputs": inputs}
        await asyncio.sleep(60)  # keep the stream open until it is cancelled

    stream = client.stream_infer(requests_())
    received = 0
    async for _result, error in stream:
        assert error is None
        received += 1
        if received == responses:
            stream.cancel()
            break
    await client.close()
    return received


@pytest.mark.parametrize("model", ["tiny_llm", "tiny_llm_2607", "tiny_llm_bls"])
def test_grpc_stream_cancel_stops_the_engine(server, model, cancel_slack_tokens):
    """A tritonclient gRPC stream cancelled after 3 responses: the engine behind the ensemble (or
    the BLS model) stops."""
    before = len(server.log_text())
    received = asyncio.run(cancel_stream_after(server.grpc_url, model))
    [(generated, requested)] = cancelled_generations(server, before)
    assert requested == CANCEL_MAX_TOKENS and generated <= received + cancel_slack_tokens
    assert generated < CANCEL_MAX_TOKENS


def test_tritonclient_streaming_gets_flat_text_output(server):
    from tritonize.triton.client import stream

    responses = stream(server.grpc_url, "tiny_llm", {
        "text_input": np.array([[PROMPT.encode()]], dtype=object), "max_tokens": np.array([[6]], dtype=np.int32),
        "stream": np.array([[True]])}, outputs=["text_output"])
    texts = [r.as_numpy("text_output") for r in responses]
    assert all(t.shape == (1,) for t in texts)  # flat [batch * beams], as upstream's postprocessing
    assert b"".join(t[0] for t in texts).decode() == ensemble_answer(server, "tiny_llm", PROMPT, 6)["text_output"]


def test_llamaindex_nvidia_triton(server):
    from llama_index.llms.nvidia_triton import NvidiaTriton

    llm = NvidiaTriton(server_url=server.grpc_url, model_name="tiny_llm", tokens=MAX_TOKENS)
    # The client stops reading after tokens - 1 responses (llama-index-llms-nvidia-triton 0.6.0,
    # utils.py StreamingResponseGenerator.__next__), so its answer is the greedy prefix of that length.
    expected = ensemble_answer(server, "tiny_llm", PROMPT, MAX_TOKENS - 1)["text_output"]
    assert llm.complete(PROMPT).text == expected
    assert "".join(r.delta for r in llm.stream_complete(PROMPT)) == expected


@pytest.mark.parametrize(("model", "seed", "min_tokens"), [("tiny_llm", "random_seed", "min_length"),
                                                           ("tiny_llm_2607", "seed", "min_tokens")])
def test_upstream_inputs_are_honoured_or_refused_by_name(server, model, seed, min_tokens):
    plain = ensemble_answer(server, model, PROMPT, 24)["text_output"]
    defaults = {"length_penalty": 1.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "beam_width": 1, "num_return_sequences": 1, "return_context_logits": False, seed: 3, min_tokens: 1,
                "exclude_input_in_output": True}
    assert ensemble_answer(server, model, PROMPT, 24, **defaults)["text_output"] == plain
    assert ensemble_answer(server, model, PROMPT, 24, exclude_input_in_output=False)["text_output"] == PROMPT + plain
    # Penalties change a greedy answer once it would repeat a token (this prompt's repeats " a"
    # within 40). The tiny model's top logits are several units apart, so the additive penalties
    # need a large value to flip a choice.
    repeating = ensemble_answer(server, model, "A doctor listens to", 40)["text_output"]
    for penalty in ({"repetition_penalty": 3.0}, {"frequency_penalty": 20.0}, {"presence_penalty": 20.0}):
        assert ensemble_answer(server, model, "A doctor listens to", 40, **penalty)["text_output"] != repeating
    logged = ensemble_answer(server, model, PROMPT, 24, return_log_probs=True)
    log_probs = np.array(logged["output_log_probs"]).reshape(-1)
    assert len(log_probs) == 24 and (log_probs <= 0).all()
    # cum_log_probs is their sum (float32 sums of 24 terms: 1e-4 is far above rounding).
    assert abs(float(np.array(logged["cum_log_probs"]).reshape(-1)[0]) - log_probs.sum()) < 1e-4
    for name, value in [("beam_width", 2), ("return_generation_logits", True), ("num_return_sequences", 2)]:
        response = requests.post(f"http://{server.http_url}/v2/models/{model}/generate",
                                 json={"text_input": PROMPT, "max_tokens": 4, name: value}, timeout=60)
        assert response.status_code == 400 and name in response.json()["error"], response.text
    response = requests.post(f"http://{server.http_url}/v2/models/{model}/generate",
                             json={"text_input": PROMPT, "max_tokens": 4, "embedding_bias_words": ["x"],
                                   "embedding_bias_weights": [1.0]}, timeout=60)
    assert response.status_code == 400 and "embedding_bias_words" in response.json()["error"]


def test_bls_model_takes_the_upstream_contract(server):
    """The BLS model answers like the ensemble, passes the engine's log probs on under the
    ensemble's names, and refuses what it does not build (a draft model) by name."""
    plain = ensemble_answer(server, "tiny_llm", PROMPT, 24)
    logged = ensemble_answer(server, "tiny_llm_bls", PROMPT, 24, return_log_probs=True, min_length=1,
                             exclude_input_in_output=True, num_draft_tokens=0)
    assert logged["text_output"] == plain["text_output"]
    expected = ensemble_answer(server, "tiny_llm", PROMPT, 24, return_log_probs=True)
    # The same engine computes both: equal up to float32 rounding of the same sums.
    np.testing.assert_allclose(np.array(logged["output_log_probs"]).reshape(-1),
                               np.array(expected["output_log_probs"]).reshape(-1), atol=1e-5)
    for name, value in [("num_draft_tokens", 2), ("use_draft_logits", True), ("beam_width", 2)]:
        response = requests.post(f"http://{server.http_url}/v2/models/tiny_llm_bls/generate",
                                 json={"text_input": PROMPT, "max_tokens": 4, name: value}, timeout=60)
        assert response.status_code == 400 and name in response.json()["error"], response.text


def test_tritonize_openai_serves_the_frontend_alone(server, built, tmp_path):
    """`tritonize openai` (the deployment's frontend container): for a server running elsewhere,
    with the gateway's key file; SIGTERM stops it with 0."""
    import signal
    import subprocess
    import sys

    keys = tmp_path / "api-keys.map"
    keys.write_text('"Bearer k1" client-one;\n')
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tritonize", "openai", str(built.repository), "--grpc-url",
                                server.grpc_url, "--port", str(port), "--api-keys", str(keys)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/v1"
        body = {"model": "tiny_llm", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
        assert requests.post(f"{url}/completions", json=body, timeout=60).status_code == 401
        answer = requests.post(f"{url}/completions", json=body, headers={"Authorization": "Bearer k1"}, timeout=60)
        assert answer.json()["choices"][0]["text"] == ensemble_answer(server, "tiny_llm", PROMPT)["text_output"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_pooled_streams_carry_one_generation_after_another_and_outlive_a_server_restart(triton_server, built):
    """The frontend's gRPC streams carry a generation each, one after another; an idle one is ended
    (serve's stop, the idle timer) so that it does not keep tritonserver from stopping; a server
    started again (same port) after a crash leaves a pooled stream dead, and the next request goes
    out again on a new one: the same answer, not a 500."""
    from tritonize.triton.server import free_ports

    def until(condition) -> bool:
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        return condition()

    http, grpc, metrics = free_ports(3)
    server = triton_server(built.repository, http_port=http, grpc_port=grpc, metrics_port=metrics)
    expected = ensemble_answer(server, "tiny_llm", PROMPT)["text_output"]
    body = {"model": "tiny_llm", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    with Frontend(built.repository, server.grpc_url, host="127.0.0.1", port=free_port()) as frontend:
        backend = frontend.backend
        backend.idle_stream_s = 600  # no idle timer in the steps below but the last
        for stream in (False, True, False):
            answer = post(frontend, "/completions", {**body, "stream": stream})
            assert answer.status_code == 200, answer.text
        assert (backend.streams_opened, backend.idle_streams) == (1, 1)  # the three went out on one stream
        # Generations cancelled mid-stream, on each kind of model: nothing of them may stay in
        # flight (tritonserver 2.51 kept a cancelled ensemble's request in flight for good when its
        # postprocessing answered the cancel with an error: the stop below waited out its exit
        # timeout and failed).
        for model in ("tiny_llm", "tiny_llm_2607", "tiny_llm_bls"):
            assert asyncio.run(cancel_stream_after(server.grpc_url, model)) == 3
        backend.release_idle_streams()  # what serve does before it stops the server
        assert until(lambda: backend.idle_streams == 0)
        # An idle stream keeps its model loaded in Triton 2.51 (it would wait its exit timeout,
        # "Found 1 live models", and end -9): with it ended the server stops cleanly.
        assert server.stop() == 0, server.log_text()[-2000:]
        server.start()
        server.wait_ready()
        assert post(frontend, "/completions", body).status_code == 200
        assert (backend.streams_opened, backend.idle_streams) == (2, 1)
        os.killpg(os.getpgid(server.pid), signal.SIGKILL)  # a crash: the pooled stream dies with it
        server.stop()
        server.start()
        server.wait_ready()
        answer = post(frontend, "/completions", body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["text"] == expected
        assert (backend.streams_opened, backend.idle_streams) == (3, 1)  # the dead one tried, then a new one
        backend.idle_stream_s = 0.2
        assert post(frontend, "/completions", body).status_code == 200
        assert until(lambda: backend.idle_streams == 0)  # the idle timer ended it
