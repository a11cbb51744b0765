"""The LLM ensemble on the real tritonserver (embedded runtime, CPU engine).

One repository holds the tiny Llama three times: unquantized and streaming (`tiny_llm`, decoupled
engine with in-flight batching), unquantized without streaming and with sampling defaults (`tiny_llm_sync`,
Triton's dynamic batcher) and FP8 with an FP8 KV cache (`tiny_llm_fp8`), so one server serves the whole module. Greedy text is compared exactly: the CPU
engine runs the same float32 forward pass as transformers' generate, and the tiny model is trained
so its top logits are far apart (margins of several units), so batching/padding cannot flip a token.
"""
from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tritonize.resources import back_channel
from tritonize.terminal import Terminal

pytestmark = pytest.mark.server

PROMPTS = ["The river runs", "A doctor listens to", "The train leaves"]
MAX_TOKENS = 20

SPEC = """\
repository: model_repo
models:
  - name: tiny_llm
    source: {framework: huggingface, path: tiny}
    llm:
      streaming: true
      bls: true
      limits: {max_batch_size: 4, max_input_len: 64, max_output_len: 48}
  - name: tiny_llm_sync
    source: {framework: huggingface, path: tiny}
    llm:
      streaming: false
      sampling: {temperature: 1.5, top_k: 0, top_p: 0.95, seed: 7}
      limits: {max_batch_size: 4, max_input_len: 64, max_output_len: 48}
  - name: tiny_llm_fp8
    source: {framework: huggingface, path: tiny}
    llm:
      streaming: true
      quantization: {mode: fp8, kv_cache_fp8: true, max_logit_error: 2.0, min_token_agreement: 0.9}
      limits: {max_batch_size: 4, max_input_len: 64, max_output_len: 48}
"""


def load_tiny_llm_factory(repo_root):
    """examples/tiny_llm/make_model.py, imported by path (examples/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_llm_make_model",
                                                  repo_root / "examples" / "tiny_llm" / "make_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.create


def shared_tiny_llm(tmp_path_factory, repo_root) -> Path:
    """The tiny model, created once per test session (training it takes seconds) and copied into
    a fresh directory for each module's spec."""
    import shutil

    model = load_tiny_llm_factory(repo_root)(tmp_path_factory.getbasetemp() / "tiny_llm_shared")
    target = tmp_path_factory.mktemp("llm") / "tiny"
    shutil.copytree(model, target)
    return target


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, repo_root):
    return shared_tiny_llm(tmp_path_factory, repo_root)


@pytest.fixture(scope="module")
def built(tiny_dir):
    from tritonize import build

    spec = tiny_dir.parent / "model.yaml"
    spec.write_text(SPEC)
    return build(spec, terminal=Terminal(quiet=True, stderr=True))


@pytest.fixture(scope="module")
def server(triton_server, built):
    return triton_server(built.repository)


@pytest.fixture(scope="module")
def reference(tiny_dir, built, repo_root):
    """Direct transformers greedy generation: token ids and text per prompt, by the source model's
    config with the weights the CPU engine serves: the exported (float16, unquantized) checkpoint's,
    as a GPU would load them."""
    import importlib.util

    import torch
    from transformers import AutoConfig, AutoTokenizer

    path = repo_root / "python_backends" / "llm_cpu_engine" / "trtllm_checkpoint.py"
    module_spec = importlib.util.spec_from_file_location("trtllm_checkpoint", path)
    loader = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(loader)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = loader.load_model(str(built.repository / "tiny_llm_tensorrt_llm" / "1" / "checkpoint"),
                              config=AutoConfig.from_pretrained(tiny_dir))
    out = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            generated = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=MAX_TOKENS, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        out[prompt] = (generated, tokenizer.decode(generated, skip_special_tokens=True))
    return tokenizer, out


def generate(server, model, **body):
    response = requests.post(f"http://{server.http_url}/v2/models/{model}/generate",
                             json={"max_tokens": MAX_TOKENS, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["text_output"]


def generate_concurrently(server, model, prompts, **body) -> list[str]:
    """One generate request per prompt, all in flight at once; the answers in prompt order."""
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        return list(pool.map(lambda prompt: generate(server, model, text_input=prompt, **body), prompts))


def sse_pieces(server, model, **body):
    response = requests.post(f"http://{server.http_url}/v2/models/{model}/generate_stream",
                             json={"max_tokens": MAX_TOKENS, "stream": True, **body}, timeout=60, stream=True)
    assert response.status_code == 200, response.text
    return [json.loads(line[len("data:"):])["text_output"] for line in response.iter_lines(decode_unicode=True)
            if line and line.startswith("data:")]


def stream_request(prompt, stream=True) -> dict:
    return {"text_input": np.array([[prompt]], dtype=object),
            "max_tokens": np.array([[MAX_TOKENS]], dtype=np.int32), "stream": np.array([[stream]], dtype=bool)}


def text_of(response) -> str:
    return response.as_numpy("text_output").reshape(-1)[0].decode()


def grpc_stream(server, model, prompt, stream=True):
    from tritonize.triton.client import stream as stream_responses

    return [text_of(r) for r in stream_responses(server.grpc_url, model, stream_request(prompt, stream))]


def test_ensemble_text_equals_transformers_greedy(server, reference):
    _, expected = reference
    for prompt in PROMPTS:
        assert generate(server, "tiny_llm", text_input=prompt) == expected[prompt][1]


def test_concurrent_requests_are_batched_and_still_exact(server, reference):
    """Concurrent prompts of different lengths decode together (left padding, one KV cache)."""
    _, expected = reference
    prompts = PROMPTS * 2
    assert generate_concurrently(server, "tiny_llm", prompts) == [expected[p][1] for p in prompts]


def test_request_joining_a_running_generation_gets_the_same_text(server, reference):
    """A request arriving while another is mid-generation joins the running batch (its KV cache
    is merged in, left-padded); both answers stay exactly the greedy ones."""
    from tritonize.triton.client import stream

    _, expected = reference
    responses = stream(server.grpc_url, "tiny_llm", stream_request(PROMPTS[0]))
    pieces = [text_of(next(responses))]
    joined = generate(server, "tiny_llm", text_input=PROMPTS[2])  # while the stream runs
    pieces += [text_of(r) for r in responses]
    assert "".join(pieces) == expected[PROMPTS[0]][1]
    assert joined == expected[PROMPTS[2]][1]


def test_non_streaming_engine_batches_through_the_dynamic_batcher(server, reference):
    _, expected = reference
    # top_k 1 in the request overrides the model's sampling defaults.
    answers = generate_concurrently(server, "tiny_llm_sync", PROMPTS, top_k=1)
    assert answers == [expected[p][1] for p in PROMPTS]


def test_grpc_streaming_delivers_tokens_that_join_to_the_full_text(server, reference):
    _, expected = reference
    pieces = grpc_stream(server, "tiny_llm", PROMPTS[0])
    assert len(pieces) > 1
    assert "".join(pieces) == expected[PROMPTS[0]][1]


def test_http_generate_stream_sse_delivers_tokens_that_join_to_the_full_text(server, reference):
    _, expected = reference
    pieces = sse_pieces(server, "tiny_llm", text_input=PROMPTS[1])
    assert len(pieces) > 1
    assert "".join(pieces) == expected[PROMPTS[1]][1]


def test_non_streaming_request_to_the_decoupled_ensemble_gets_one_response(server, reference):
    _, expected = reference
    pieces = grpc_stream(server, "tiny_llm", PROMPTS[2], stream=False)
    assert pieces == [expected[PROMPTS[2]][1]]


def test_bls_model_streams_and_answers_like_the_ensemble(server, reference):
    _, expected = reference
    pieces = sse_pieces(server, "tiny_llm_bls", text_input=PROMPTS[0])
    assert len(pieces) > 1
    assert "".join(pieces) == expected[PROMPTS[0]][1]
    assert generate(server, "tiny_llm_bls", text_input=PROMPTS[1]) == expected[PROMPTS[1]][1]


MULTI_TOKEN_PARAMETER = back_channel().MULTI_TOKEN_PARAMETER
STREAMS = 4  # the models' max_batch_size: the streams decode together
PACED_TOKENS = 48  # max_output_len: enough decoding steps for pacing to show


def _streams_at_once(server, model, inputs, parameters=None) -> list[list]:
    """STREAMS gRPC streams of the same request, all in flight at once: each one's responses."""
    from tritonize.triton.client import stream as stream_responses

    with ThreadPoolExecutor(max_workers=STREAMS) as pool:
        return list(pool.map(lambda _: list(stream_responses(server.grpc_url, model, inputs, parameters=parameters)),
                             range(STREAMS)))


def _ensemble_stream_request():
    return {**stream_request(PROMPTS[0]), "max_tokens": np.array([[PACED_TOKENS]], dtype=np.int32),
            "end_id": np.array([[-1]], dtype=np.int32)}  # no early stop: PACED_TOKENS tokens each


@pytest.fixture(scope="module")
def paced_whole_text(server):
    from tritonize.triton.client import stream as stream_responses

    request = {**_ensemble_stream_request(), "stream": np.array([[False]])}
    [whole] = [text_of(r) for r in stream_responses(server.grpc_url, "tiny_llm", request)]
    return whole


@pytest.mark.parametrize("model", ["tiny_llm", "tiny_llm_bls"])
def test_concurrent_streams_that_take_multi_token_responses_are_paced_and_join_to_the_one_shot_text(
        server, paced_whole_text, model):
    """4 streams through the ensemble (or the BLS model, which passes the request's parameters on)
    whose client sets the request parameter multi_token_responses: the engine sends a stream
    several tokens a response once the postprocessing acknowledges it
    (python_backends/llm_cpu_engine/back_channel.py: at most 100 responses a second per CPU
    together, i.e. one per >= 20 ms a stream with 4 streams on this 2-CPU machine, several
    decoding steps), and the pieces still join to the one-shot text."""
    streams = _streams_at_once(server, model, _ensemble_stream_request(), {MULTI_TOKEN_PARAMETER: True})
    assert all("".join(text_of(r) for r in responses) == paced_whole_text for responses in streams)
    # One response per token would be STREAMS * PACED_TOKENS; paced, fewer.
    assert sum(len(responses) for responses in streams) < STREAMS * PACED_TOKENS, [len(r) for r in streams]


def test_concurrent_streams_through_the_ensemble_get_one_response_per_token_by_default(server, paced_whole_text):
    """Upstream's clients count responses as tokens (llama-index's NvidiaTriton): unless the
    client asks, each response carries one token, under load too."""
    streams = _streams_at_once(server, "tiny_llm", _ensemble_stream_request())
    assert [len(responses) for responses in streams] == [PACED_TOKENS] * STREAMS
    assert all("".join(text_of(r) for r in responses) == paced_whole_text for responses in streams)


def test_a_multi_token_responses_parameter_that_is_not_a_bool_is_refused_naming_it(server):
    from tritonclient.utils import InferenceServerException

    from tritonize.triton.client import stream as stream_responses

    with pytest.raises(InferenceServerException, match=f"request parameter {MULTI_TOKEN_PARAMETER} must be a bool"):
        list(stream_responses(server.grpc_url, "tiny_llm", _ensemble_stream_request(),
                              parameters={MULTI_TOKEN_PARAMETER: "yes"}))


def test_concurrent_streams_of_the_engine_called_directly_get_one_response_per_token(server, built):
    """Nothing acknowledges a direct caller's stream: it is not paced."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(built.repository / "tiny_llm_preprocessing" / "1" / "tokenizer" / "tokenizer.json"))
    ids = tokenizer.encode(PROMPTS[0], add_special_tokens=False).ids
    request = {"input_ids": np.array([ids], dtype=np.int32), "input_lengths": np.array([[len(ids)]], dtype=np.int32),
               "request_output_len": np.array([[PACED_TOKENS]], dtype=np.int32),
               "end_id": np.array([[-1]], dtype=np.int32), "streaming": np.array([[True]])}
    streams = _streams_at_once(server, "tiny_llm_tensorrt_llm", request)
    assert [len(responses) for responses in streams] == [PACED_TOKENS] * STREAMS
    # Each response carries every token so far and how many the earlier ones carried.
    assert all([int(r.as_numpy("stream_offset").reshape(-1)[0]) for r in responses] == list(range(PACED_TOKENS))
               for responses in streams)


def test_generation_stops_at_end_id(server, reference):
    tokenizer, expected = reference
    ids, _ = expected[PROMPTS[0]]
    cut = 5
    end_id = ids[cut]
    assert end_id not in ids[:cut]  # the first occurrence ends it
    text = generate(server, "tiny_llm", text_input=PROMPTS[0], end_id=end_id)
    assert text == tokenizer.decode(ids[:cut])


def test_generation_stops_after_a_stop_word(server, reference):
    tokenizer, expected = reference
    ids, _ = expected[PROMPTS[1]]
    # A stop word that tokenizes on its own to exactly one generated token, past the first few.
    position = next(i for i in range(3, len(ids))
                    if tokenizer.encode(tokenizer.decode([ids[i]]), add_special_tokens=False) == [ids[i]]
                    and ids[i] not in ids[:i])
    word = tokenizer.decode([ids[position]])
    text = generate(server, "tiny_llm", text_input=PROMPTS[1], stop_words=[word])
    assert text == tokenizer.decode(ids[:position + 1])  # the stop word is kept, as TRT-LLM does
    assert text.endswith(word)


def test_max_tokens_is_honoured(server, reference):
    tokenizer, expected = reference
    ids, _ = expected[PROMPTS[2]]
    assert generate(server, "tiny_llm", text_input=PROMPTS[2], max_tokens=3) == tokenizer.decode(ids[:3])


def test_sampling_with_a_seed_is_reproducible(server):
    body = {"text_input": PROMPTS[0], "top_k": 0, "top_p": 0.95, "temperature": 1.5}
    first = generate(server, "tiny_llm", random_seed=7, **body)
    assert generate(server, "tiny_llm", random_seed=7, **body) == first
    others = {generate(server, "tiny_llm", random_seed=seed, **body) for seed in (1, 2, 3)}
    assert len(others | {first}) > 1  # sampling at temperature 1.5 over 20 tokens varies with the seed


def test_spec_sampling_defaults_apply_when_the_request_has_none(server):
    explicit = generate(server, "tiny_llm", text_input=PROMPTS[0], temperature=1.5, top_k=0, top_p=0.95,
                        random_seed=7)
    assert generate(server, "tiny_llm_sync", text_input=PROMPTS[0]) == explicit


def test_request_above_the_output_limit_is_refused(server):
    response = requests.post(f"http://{server.http_url}/v2/models/tiny_llm/generate",
                             json={"text_input": PROMPTS[0], "max_tokens": 49}, timeout=60)
    assert response.status_code != 200
    assert "max_output_len 48" in response.text


def test_fp8_model_serves_its_quantized_greedy_text_within_budget(server, built):
    models = built.manifest.models
    report = models["tiny_llm_fp8_tensorrt_llm"].quantization
    assert report["mode"] == "fp8" and report["kv_cache_fp8"]
    assert report["max_logit_error"] <= report["budget"]["max_logit_error"]
    assert report["token_agreement"] >= report["budget"]["min_token_agreement"]
    sample = models["tiny_llm_fp8"].samples
    prompt = sample.inputs["text_input"].data[0][0]
    max_tokens = sample.inputs["max_tokens"].data[0][0]
    # The expected text was generated at build time from the dequantized checkpoint (what is served).
    assert generate(server, "tiny_llm_fp8", text_input=prompt, max_tokens=max_tokens) == \
        sample.outputs["text_output"].data[0]  # flat, as text_output is


def test_tritonize_check_passes_on_the_llm_ensembles(server, built):
    from tritonize.check import check_deployment

    report = check_deployment(built.repository, server.http_url, protocol="both", grpc_url=server.grpc_url,
                              terminal=Terminal(quiet=True, stderr=True))
    assert report.passed, [m.detail for m in report.failures]


BAD_SAMPLING = {"temperature": {"temperature": float("nan"), "top_k": 5}, "runtime_top_k": {"top_k": -1},
                "runtime_top_p": {"top_p": 1.5}, "temperature ": {"temperature": -0.5}}
SAMPLING_DTYPES = {"top_k": np.int32, "top_p": np.float32, "temperature": np.float32, "random_seed": np.uint64}


def sampling_request(prompt, stream, **sampling) -> dict:
    return {**stream_request(prompt, stream),
            **{name: np.array([[value]], dtype=SAMPLING_DTYPES[name]) for name, value in sampling.items()}}


@pytest.mark.parametrize("model", ["tiny_llm_sync", "tiny_llm"])
def test_each_bad_sampling_parameter_gets_400_and_its_batch_neighbours_are_exact(server, reference, model):
    """Bad values sent together with greedy requests (batched together: the dynamic batcher of
    the sync engine, in-flight batching of the streaming one) fail alone, as INVALID_ARGUMENT."""
    from tritonclient.utils import InferenceServerException

    from tritonize.triton.client import GrpcClient, stream

    _, expected = reference

    def run(case):
        prompt, sampling = case
        try:
            if model == "tiny_llm_sync":
                with GrpcClient(server.grpc_url) as client:
                    out = client.infer(model, sampling_request(prompt, False, **sampling), ["text_output"])
                return out["text_output"][1].reshape(-1)[0].decode()
            return "".join(text_of(r) for r in stream(server.grpc_url, model, sampling_request(prompt, True, **sampling)))
        except InferenceServerException as error:
            return error

    cases = [(PROMPTS[i % 3], {"top_k": 1}) for i in range(3)] + [(PROMPTS[0], bad) for bad in BAD_SAMPLING.values()]
    with ThreadPoolExecutor(len(cases)) as pool:
        answers = list(pool.map(run, cases))
    for (prompt, _), answer in zip(cases[:3], answers[:3]):
        assert answer == expected[prompt][1]
    for name, answer in zip(BAD_SAMPLING, answers[3:]):
        assert isinstance(answer, InferenceServerException), (name, answer)
        # A gRPC stream carries an error as a message without a status code (ModelStreamInferResponse
        # error_message); unary calls and HTTP carry the code, checked below and for the sync model.
        status = "StatusCode.INVALID_ARGUMENT" if model == "tiny_llm_sync" else None
        assert answer.status() == status and name.strip() in answer.message(), (name, answer.status(), answer.message())
    http = requests.post(f"http://{server.http_url}/v2/models/{model}/generate", timeout=60,
                         json={"text_input": PROMPTS[0], "max_tokens": 4, "top_k": -3})
    assert http.status_code == 400 and "runtime_top_k -3" in http.text


def test_bls_passes_on_a_client_error_as_400(server):
    response = requests.post(f"http://{server.http_url}/v2/models/tiny_llm_bls/generate", timeout=60,
                             json={"text_input": PROMPTS[0], "max_tokens": 4, "top_p": 2.0})
    assert response.status_code == 400 and "runtime_top_p 2.0" in response.text


def test_postprocessing_called_directly_decodes_and_refuses_token_tensors_that_do_not_fit(server, reference):
    tokenizer, expected = reference
    ids = expected[PROMPTS[0]][0][:6]

    def infer(tokens, lengths, offset=None):
        inputs = [{"name": "TOKENS_BATCH", "datatype": "INT32", "shape": list(np.shape(tokens)),
                   "data": np.ravel(tokens).tolist()},
                  {"name": "SEQUENCE_LENGTH", "datatype": "INT32", "shape": list(np.shape(lengths)),
                   "data": np.ravel(lengths).tolist()}]
        if offset is not None:
            inputs.append({"name": "STREAM_OFFSET", "datatype": "INT32", "shape": [1, 1], "data": [offset]})
        return requests.post(f"http://{server.http_url}/v2/models/tiny_llm_postprocessing/infer",
                             json={"inputs": inputs}, timeout=60)

    def text(response):
        assert response.status_code == 200, response.text
        return response.json()["outputs"][0]["data"]

    assert text(infer([[ids]], [[4]])) == [tokenizer.decode(ids[:4], skip_special_tokens=True)]
    # A length beyond its row takes the row (upstream slices tokens[:seq_len]).
    assert text(infer([[ids]], [[99]])) == [tokenizer.decode(ids, skip_special_tokens=True)]
    whole, head = (tokenizer.decode(ids[:n], skip_special_tokens=True) for n in (6, 4))
    assert text(infer([[ids]], [[6]], offset=4)) == [whole[len(head):]]
    for tokens, lengths, message in (([[ids[:5] + [10 ** 6]]], [[6]], "ids outside 0.."),
                                     ([[ids]], [[-1]], "SEQUENCE_LENGTH is negative"),
                                     ([[ids]], [[6, 6]], "do not match")):
        response = infer(tokens, lengths)
        assert response.status_code == 400 and message in response.text, response.text


# Four times the engine's batch: on a fast machine a batch of 48 tokens is done in ~0.1 s (seen:
# all of 8 streams finished before the kill), and the killed-engine tests need streams still
# running or queued when the engine dies.
KILL_STREAMS = 16


def engine_stub(serving, built) -> int:
    """The pid of the streaming engine's python stub under `tritonize serve`."""
    from tritonize.triton.server.supervisor import python_stubs

    engine = [s.pid for s in python_stubs(serving.server_pid(), built.repository.resolve()).values()
              if s.model == "tiny_llm_tensorrt_llm" and not s.zombie]
    assert len(engine) == 1
    return engine[0]


def kill_after_the_first_token(engine: int, first, done: list, streams: list, serving) -> float:
    """kill -9 the engine's stub once a stream has its first token; every stream must end within
    15 s (none hangs). Returns when it was killed."""
    import time

    assert first.wait(60)
    os.kill(engine, signal.SIGKILL)
    killed = time.monotonic()
    hanging = [index for index, event in enumerate(done) if not event.wait(15)]
    assert not hanging, (f"streams {hanging} of the killed engine hang: {[streams[i] for i in hanging]}\n"
                         f"serve's output:\n{serving.out.read_text()[-3000:]}")
    return killed


def test_openai_under_serve_ends_the_streams_of_a_killed_engine_and_serves_again(built, reference, tmp_path):
    """`tritonize serve --openai`: the frontend talks to tritonserver's private gRPC port, so it
    ends the streams of an engine whose stub was killed itself (503 in the stream), refuses new
    requests while the model reloads, then answers the ensemble's greedy text again."""
    import threading
    import time

    from test_serve_supervisor import Serve
    from tritonize.triton.server import free_port

    _, expected = reference
    api = free_port()
    serving = Serve(built.repository, tmp_path / "serve.out", "--openai", "--openai-port", str(api))
    url = f"http://127.0.0.1:{api}/v1"
    greedy = {"model": "tiny_llm", "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0}
    try:
        serving.wait_ready(timeout_s=240)
        answer = requests.post(url + "/completions", json=greedy, timeout=60)
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == expected[PROMPTS[0]][1]
        engine = engine_stub(serving, built)  # looked up first: the kill follows the first token at once
        events: list[list[dict]] = [[] for _ in range(KILL_STREAMS)]
        done = [threading.Event() for _ in events]
        first = threading.Event()

        def consume(index: int) -> None:
            body = {**greedy, "prompt": PROMPTS[index % 3], "max_tokens": 48, "stream": True}
            try:
                with requests.post(url + "/completions", json=body, stream=True, timeout=30) as answer:
                    if answer.status_code != 200:  # waiting in the queue when the engine died
                        events[index].append({"status": answer.status_code, **answer.json()})
                        return
                    for line in answer.iter_lines(decode_unicode=True):
                        if line.startswith("data: ") and line != "data: [DONE]":
                            events[index].append(json.loads(line[6:]))
                            first.set()
            except requests.RequestException as error:
                events[index].append({"connection": str(error)})
            finally:
                done[index].set()

        for index in range(len(events)):
            threading.Thread(target=consume, args=(index,), daemon=True).start()
        killed = kill_after_the_first_token(engine, first, done, events, serving)
        cut = [stream[-1] for stream in events if stream and "error" in stream[-1]]
        assert cut, events  # at least one was generating (or waiting) when the engine died
        # 503 server_busy for each: "being reloaded" from serve's supervisor, or a closed connection
        # if tritonserver itself went down meanwhile (it is restarted; serve's output says so).
        assert all(end["error"]["code"] == "server_busy" for end in cut), (cut, serving.out.read_text()[-3000:])
        assert any("being reloaded" in end["error"]["message"] for end in cut) or \
            "tritonserver exited unexpectedly" in serving.out.read_text(), (cut, serving.out.read_text()[-3000:])
        assert all("error" in stream[-1] or stream[-1]["choices"][0]["finish_reason"] == "length"
                   for stream in events), events
        while True:  # 503 while the engine reloads, then its greedy answer again
            answer = requests.post(url + "/completions", json=greedy, timeout=60)
            if answer.status_code == 200 or time.monotonic() - killed > 60:
                break
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "server_busy", answer.text
            time.sleep(0.2)
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == expected[PROMPTS[0]][1], \
            (answer.text, serving.out.read_text()[-3000:])
    finally:
        serving.stop()
    assert serving.process.returncode == 0, serving.out.read_text()[-3000:]


def test_streams_of_a_killed_engine_end_with_an_error_and_the_engine_serves_again(built, reference, tmp_path):
    """Under `tritonize serve`: kill -9 of the streaming engine's stub mid-generation."""
    import threading
    import time

    from test_serve_supervisor import Serve

    _, expected = reference
    serving = Serve(built.repository, tmp_path / "serve.out")
    try:
        serving.wait_ready(timeout_s=240)
        engine = engine_stub(serving, built)  # looked up first: the kill follows the first token at once
        results: list[list[dict]] = [[] for _ in range(KILL_STREAMS)]  # and 4 gRPC streams
        done = [threading.Event() for _ in results]
        first = threading.Event()

        def consume(index: int) -> None:
            try:
                with requests.post(serving.url + "/v2/models/tiny_llm/generate_stream", stream=True, timeout=30,
                                   json={"text_input": PROMPTS[index % 3], "max_tokens": 48, "stream": True}) as answer:
                    if answer.status_code != 200:  # e.g. 503 from the guard while the engine reloads
                        results[index].append({"error": f"HTTP {answer.status_code}: {answer.text}"})
                    for line in answer.iter_lines(decode_unicode=True):
                        if line.startswith("data:"):
                            results[index].append(json.loads(line[5:]))
                            first.set()
            except requests.RequestException as error:
                results[index].append({"error": f"connection: {error}"})
            finally:
                done[index].set()

        # And over gRPC through serve's relay (tritonserver 2.51 never ends these streams itself).
        from tritonclient.utils import InferenceServerException

        from tritonize.triton.client import stream as stream_responses

        grpc_results: list[list[str]] = [[] for _ in range(4)]
        grpc_ends: list[BaseException | None] = [None] * len(grpc_results)
        grpc_done = [threading.Event() for _ in grpc_results]

        def consume_grpc(index: int) -> None:
            try:  # a hang would end in TimeoutError after 20 s without a response
                for response in stream_responses(f"127.0.0.1:{serving.grpc_port}", "tiny_llm",
                                                  stream_request(PROMPTS[index % 3]), timeout_s=20):
                    grpc_results[index].append(text_of(response))
            except (InferenceServerException, TimeoutError) as error:
                grpc_ends[index] = error
            finally:
                grpc_done[index].set()

        for index in range(len(results)):
            threading.Thread(target=consume, args=(index,), daemon=True).start()
        for index in range(len(grpc_results)):
            threading.Thread(target=consume_grpc, args=(index,), daemon=True).start()
        killed = kill_after_the_first_token(engine, first, done, results, serving)
        cut = [events for events in results if events and "error" in events[-1]]
        assert cut, results  # at least one stream was still running when its engine died
        assert all("error" in events[-1] or "text_output" in events[-1] for events in results)
        assert all(event.wait(30) for event in grpc_done), "a gRPC stream of the killed engine hangs"
        assert not any(isinstance(end, TimeoutError) for end in grpc_ends), (grpc_ends, grpc_results)
        grpc_cut = [end for end in grpc_ends if end is not None]
        assert grpc_cut, grpc_results  # at least one was running (or waiting) when the engine died
        # UNAVAILABLE "being reloaded" from the supervisor; any UNAVAILABLE if tritonserver itself
        # went down meanwhile (seen: the python backend's abort while the dead stub's model reloads;
        # serve restarts the server and says so).
        restarted = "tritonserver exited unexpectedly" in serving.out.read_text()
        assert all(end.status() == "StatusCode.UNAVAILABLE" and ("being reloaded" in end.message() or restarted)
                   for end in grpc_cut), ([(end.status(), end.message()) for end in grpc_cut],
                                          serving.out.read_text()[-3000:])
        # The others ran to their final response before the kill: the full greedy text.
        assert all("".join(pieces) == expected[PROMPTS[index % 3]][1]
                   for index, (pieces, end) in enumerate(zip(grpc_results, grpc_ends)) if end is None)
        while time.monotonic() - killed < 60:
            if requests.get(serving.url + "/v2/models/tiny_llm/ready", timeout=5).status_code == 200 and \
                    requests.get(serving.url + "/v2/models/tiny_llm_tensorrt_llm/ready", timeout=5).status_code == 200:
                break
            time.sleep(0.2)
        answer = requests.post(serving.url + "/v2/models/tiny_llm/generate", timeout=60,
                               json={"text_input": PROMPTS[0], "max_tokens": MAX_TOKENS})
        assert answer.status_code == 200 and answer.json()["text_output"] == expected[PROMPTS[0]][1], \
            (answer.text, serving.out.read_text()[-3000:])
        assert time.monotonic() - killed < 60
    finally:
        serving.stop()


def test_paced_streams_share_the_response_budget_and_each_still_streams():
    """stream_interval: the streams together send at most RESPONSES_PER_S_PER_CPU responses a second
    per CPU, but each one at least every MAX_STREAM_INTERVAL_S."""
    channel, cpus = back_channel(), len(os.sched_getaffinity(0))
    for streams in (1, 4, 8):
        assert streams / channel.stream_interval(streams) <= channel.RESPONSES_PER_S_PER_CPU * cpus + 1e-6
    assert channel.stream_interval(10_000) == channel.MAX_STREAM_INTERVAL_S
    assert channel.multi_token('{"multi_token_responses": true}') and not channel.multi_token("{}")
    with pytest.raises(ValueError, match="multi_token_responses must be a bool"):
        channel.multi_token('{"multi_token_responses": 1}')
