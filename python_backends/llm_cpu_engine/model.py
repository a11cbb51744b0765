"""Triton python backend: a CPU stand-in for the `tensorrt_llm` model of the TensorRT-LLM ensemble,
with the same tensor contract (tensorrtllm_backend inflight_batcher_llm/tensorrt_llm), running the
model with transformers.

Inputs:  input_ids INT32[-1], input_lengths INT32[1], request_output_len INT32[1]; optional
         end_id, pad_id, runtime_top_k INT32[1], runtime_top_p, temperature FP32[1],
         random_seed (TRT-LLM < 1.0) or seed (1.x) UINT64[1], streaming BOOL[1],
         stop_words_list / bad_words_list INT32[2,-1].
Outputs: output_ids INT32[-1,-1] (beam x tokens), sequence_length INT32[-1] (per beam).

Decoupled (model_transaction_policy.decoupled) the model streams: execute() hands requests to a
generation thread and returns; the thread batches in flight (RunningBatch): requests join the
running batch at the next decoding step, up to max_batch_size, and leave it when they finish. It
sends one response per token to requests that asked for streaming (the tokens of several when the
postprocessing has not yet acknowledged the stream's last responses, see back_channel.py), one
response with all tokens to the others, each closed with a final flag. Not decoupled, execute() decodes the batch Triton's
dynamic batcher gathered and returns.

The rest of upstream's engine inputs (repository.contract_inputs): repetition_penalty,
presence_penalty, frequency_penalty (over the prompt and the generated tokens), min_length /
min_tokens (end_id is banned until then), exclude_input_in_output, return_log_probs
(cum_log_probs, output_log_probs: log-softmax of the logits the token was chosen from),
return_num_input_tokens / return_num_output_tokens and len_penalty (beam search only: no effect
at beam width 1) are honoured; a request that sets another (beam_width or num_return_sequences
above 1, logits, perf metrics, p-tuning, LoRA, guided decoding) is rejected with INVALID_ARG
naming the input.

Parameters (strings): checkpoint_dir (TRT-LLM checkpoint, quantized or not, see
trtllm_checkpoint.py: the model is built from it alone), relative to this version directory;
max_input_len, max_output_len, exclude_input_in_output,
default_temperature, default_top_k, default_top_p, default_seed, default_end_id, default_pad_id,
cpu_threads (0: torch's default).
Besides the tensorrt_llm outputs: stream_offset INT32[1], -1 for a whole answer; in a stream, the
responses carry every token generated so far (TensorRT-LLM's returnAllGeneratedTokens) and
stream_offset says how many of them earlier responses carried, so the stateless postprocessing
model can detokenize incrementally; cancel_key STRING[1] (decoupled; empty otherwise), the key
the postprocessing or BLS model sends back when the client went away (back_channel.py).

A cancelled request (its key sent back, or, called directly, Triton's cancellation) leaves the
batch before the next decoding step, logs how many tokens it got and ends: decoupled, with a plain
final response (see _finish), else with a CANCELLED error.

Each request is checked on its own (prompt and output lengths, sampling values: temperature finite
and >= 0, top_k >= 0, top_p in [0, 1]): a bad one answers 400 / INVALID_ARGUMENT naming the input,
and a request whose generation fails anyway leaves the batch alone; the others go on.
"""
import collections
import json
import math
import os
import queue
import sys
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import back_channel  # noqa: E402  (ships next to this file)
import trtllm_checkpoint  # noqa: E402  (ships next to this file)

CANCELLED_LOG = "generation cancelled by the client"
_ASK_CANCELLED = object()  # an outbox item: ask whether a request's client went away


class Request:
    """One generation request, decoded from Triton tensors."""

    def __init__(self, request, defaults):
        # One pass over the request's tensors: pb_utils.get_input_tensor_by_name walks them (and
        # builds their list) once per name, and a request is read by ~25 names.
        tensors = {tensor.name(): tensor for tensor in request.inputs()}

        def scalar(name, default, cast):
            tensor = tensors.get(name)
            return default if tensor is None else cast(tensor.as_numpy().reshape(-1)[0])

        ids = tensors["input_ids"].as_numpy()
        if ids.ndim == 2 and ids.shape[0] != 1:
            # As the tensorrtllm backend: one sequence per request; batching happens across requests.
            raise ValueError(f"a request carries {ids.shape[0]} sequences; send one per request")
        ids = ids.reshape(-1)
        length = scalar("input_lengths", len(ids), int)
        self.prompt = [int(t) for t in ids[:length]]
        self.max_new = scalar("request_output_len", 16, int)
        self.end_id = scalar("end_id", defaults["end_id"], int)
        self.pad_id = scalar("pad_id", defaults["pad_id"], int)
        self.top_k = scalar("runtime_top_k", defaults["top_k"], int)
        self.top_p = scalar("runtime_top_p", defaults["top_p"], float)
        self.temperature = scalar("temperature", defaults["temperature"], float)
        self.seed = scalar("seed", scalar("random_seed", defaults["seed"], int), int)
        self.streaming = scalar("streaming", False, bool)
        try:  # paced only if the client counts tokens (back_channel.py)
            self.paced = back_channel.multi_token(request.parameters()) and self.streaming
        except ValueError as exc:
            raise ClientError(str(exc)) from None
        self.seed = scalar("seed", self.seed, int)  # the name after tensorrtllm_backend v0.19.0
        self.repetition_penalty = scalar("repetition_penalty", 1.0, float)
        self.presence_penalty = scalar("presence_penalty", 0.0, float)
        self.frequency_penalty = scalar("frequency_penalty", 0.0, float)
        self.min_tokens = scalar("min_tokens", scalar("min_length", 0, int), int)
        self.exclude_input = scalar("exclude_input_in_output", defaults["exclude_input"], bool)
        self.return_log_probs = scalar("return_log_probs", False, bool)
        self.return_num_input_tokens = scalar("return_num_input_tokens", False, bool)
        self.return_num_output_tokens = scalar("return_num_output_tokens", False, bool)
        _reject_unsupported(tensors, scalar)
        self.log_probs = []
        self.stop_words = _word_list(tensors.get("stop_words_list"))
        self.bad_words = _word_list(tensors.get("bad_words_list"))
        self.generated = []
        self.done = False
        self.failure = None  # why this request's generation failed; its batch goes on without it
        self.cancelled = False
        self.next_cancel_check = 0.0  # see _client_left
        self.client_left = False
        self.cancel_key = ""  # decoupled: given by the engine's back_channel.Listener
        # A stream's responses: how many tokens they carried, and those not yet acknowledged
        # (tokens carried, when sent), see back_channel.py.
        self.sent_tokens = 0
        self.last_sent = 0.0
        self.unacknowledged = collections.deque()
        self.triton = request

    @property
    def greedy(self):
        # TRT-LLM semantics: top_k 1, or neither top_k nor top_p set, is greedy.
        return self.temperature == 0 or self.top_k == 1 or (self.top_k == 0 and self.top_p == 0)


class ClientError(ValueError):
    """A request the engine cannot honour: answered with INVALID_ARG (HTTP 400)."""


# Inputs with a value only the default of which this engine implements.
_AT_MOST_ONE = ("beam_width", "num_return_sequences")
_MUST_BE_FALSE = ("return_context_logits", "return_generation_logits", "return_perf_metrics")
_MUST_BE_ABSENT = ("prompt_embedding_table", "prompt_vocab_size", "lora_task_id", "lora_weights", "lora_config",
                   "guided_decoding_guide_type", "guided_decoding_guide")


def _reject_unsupported(tensors, scalar):
    for name in _AT_MOST_ONE:
        if scalar(name, 1, int) > 1:
            raise ClientError(f"{name} {scalar(name, 1, int)} is not supported by the CPU engine (only 1)")
    for name in _MUST_BE_FALSE:
        if scalar(name, False, bool):
            raise ClientError(f"{name} is not supported by the CPU engine (send false or leave it out)")
    for name in _MUST_BE_ABSENT:
        if name in tensors:
            raise ClientError(f"{name} is not supported by the CPU engine (leave it out)")


def _word_list(tensor):
    """[1, 2, L] TRT-LLM word list -> list of token-id tuples."""
    if tensor is None:
        return []
    data = tensor.as_numpy().reshape(2, -1)
    words, start = [], 0
    for end in data[1]:
        if end < 0:
            break
        words.append(tuple(int(t) for t in data[0][start:end]))
        start = int(end)
    return [w for w in words if w]


class TritonPythonModel:
    def initialize(self, args):
        import torch

        self.torch = torch
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        threads = int(params.get("cpu_threads", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        self.model = trtllm_checkpoint.load_model(os.path.join(version_dir, params["checkpoint_dir"]))
        self.defaults = {
            "end_id": int(params["default_end_id"]), "pad_id": int(params["default_pad_id"]),
            "temperature": float(params.get("default_temperature", "1.0")),
            "top_k": int(params.get("default_top_k", "1")),
            "top_p": float(params.get("default_top_p", "0.0")),
            "seed": int(params.get("default_seed", "0")),
            "exclude_input": params.get("exclude_input_in_output", "true").lower() == "true",
        }
        self.max_input_len = int(params["max_input_len"])
        self.max_output_len = int(params["max_output_len"])
        self.max_batch_size = max(1, int(config.get("max_batch_size", 1)))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        if self.decoupled:
            self._start_serving()

    def _start_serving(self):
        """Decoupled: the serving loop, its back channel (back_channel.Listener) and its sender thread (also
        started by the llmapi CPU engine, which builds on this one)."""
        self.back_channel = back_channel.Listener()
        self.stream_interval = 0.0  # see back_channel.stream_interval, set each decoding step
        self.pending = queue.Queue()
        # Responses leave from their own thread: a send waits for the server to take the
        # response (a round trip to the parent process), and the next decoding step need not
        # wait for it. One thread, so each stream's responses stay in order (its first one leaves
        # from the serving loop, before anything of it is queued here: _stream). A streamed token's
        # response is built there too, and the is_cancelled() round trips are made there: at 4
        # streams both cost the decoding loop 0.8-2.7 ms a step (its forward pass: 4.5-5 ms).
        self.outbox = queue.Queue()
        self.sender = threading.Thread(target=self._send_loop, daemon=True)
        self.sender.start()
        self.worker = threading.Thread(target=self._serve, daemon=True)
        self.worker.start()

    def execute(self, requests):
        if self.decoupled:
            for request in requests:
                self.pending.put(request)
            return None
        batch, responses = [], {}
        for i, request in enumerate(requests):
            parsed, error = self._parse(request)
            if error is not None:
                responses[i] = pb_utils.InferenceResponse(error=_client_error(error))
            else:
                batch.append((i, parsed))
        running = RunningBatch(self)
        running.admit([r for _, r in batch])
        while running.rows:
            running.step()
        for i, r in batch:
            if r.cancelled:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    "the request was cancelled", pb_utils.TritonError.CANCELLED))
            elif r.failure:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(r.failure))
            else:
                responses[i] = self._response(r, r.generated)
        return [responses[i] for i in range(len(requests))]

    def finalize(self):
        if self.decoupled:
            self.pending.put(None)
            self.worker.join(timeout=10)
            self.outbox.put(None)
            self.sender.join(timeout=10)
            self.back_channel.close()

    # -- decoupled serving loop: in-flight batching ---------------------------------------------

    def _serve(self):
        """Requests join the running batch at the next step and leave it when they finish, so a
        long generation does not hold back requests that arrive after it started."""
        running = RunningBatch(self, on_token=self._stream_token, on_done=self._ended)
        while True:
            arrived = self._take_pending(block=not running.rows, limit=self.max_batch_size - len(running.rows))
            if arrived is None:
                return
            batch = []
            for request in arrived:
                parsed, error = self._parse(request)
                if error is not None:
                    self._send(request.get_response_sender(), pb_utils.InferenceResponse(error=_client_error(error)),
                               pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                else:
                    parsed.sender = request.get_response_sender()
                    parsed.cancel_key = self.back_channel.new_key()
                    batch.append(parsed)
            try:
                running.admit(batch)
                running.cancel(self.back_channel.cancelled())
                self.stream_interval = back_channel.stream_interval(sum(r.streaming for r in running.rows))
                # Requests that arrived during this prefill are prefilled first, before the next
                # step: a burst's first tokens then wait for no decoding step (up to the batch's size).
                if running.rows and (self.pending.empty() or len(running.rows) >= self.max_batch_size):
                    running.step()
            except Exception as exc:  # report to every client instead of hanging them
                for r in running.rows + [r for r in batch if r not in running.rows and not r.done]:
                    self.back_channel.forget(r.cancel_key)
                    self._send(r.sender, pb_utils.InferenceResponse(error=pb_utils.TritonError(f"generation failed: {exc}")),
                               pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                running = RunningBatch(self, on_token=self._stream_token, on_done=self._ended)

    def _send(self, sender, response, flags=0):
        self.outbox.put((sender, response, flags))

    def _send_loop(self):
        while True:
            item = self.outbox.get()
            if item is None:
                return
            sender, response, flags = item
            try:
                if sender is _ASK_CANCELLED:
                    response.client_left = response.sender.is_cancelled()  # response: the Request
                elif response is None:
                    sender.send(flags=flags)
                else:
                    sender.send(response() if callable(response) else response, flags=flags)
            except Exception as exc:  # e.g. a stream the client closed: the others go on
                pb_utils.Logger.log_warn(f"could not send a response: {exc}")

    def _client_left(self, r):
        """Whether Triton cancelled r: its own client (a direct call of this model) closed the gRPC
        stream or went away. Inside an ensemble this stays false (see back_channel.py).

        Each check is a round trip to the server (0.05-0.9 ms measured), so a request asks at most
        once per back_channel.CHECK_INTERVAL_S. Decoupled, the sender thread asks the request's response sender
        (python backend >= 23.10; the request object may be released once execute() returned)
        and the answer is read at a later token; a request of execute() asks itself."""
        now = time.monotonic()
        if not r.client_left and now >= r.next_cancel_check:
            r.next_cancel_check = now + back_channel.CHECK_INTERVAL_S
            if self.decoupled:
                self.outbox.put((_ASK_CANCELLED, r, 0))
            else:
                r.client_left = r.triton.is_cancelled()
        return r.client_left

    def _take_pending(self, block, limit):
        """Up to limit requests queued now (waiting for the first one when block); None at shutdown."""
        items = []
        if block:
            first = self.pending.get()
            if first is None:
                return None
            items.append(first)
        while len(items) < limit:
            try:
                item = self.pending.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.pending.put(None)  # shut down after this batch
                break
            items.append(item)
        return items

    def _stream_token(self, r, token):
        if r.streaming:
            self._stream(r)

    def _stream(self, r, held=True):
        """Send r the tokens its stream has not had yet, unless (held) the stream is paced
        (back_channel.py) and must wait: then a later token or the end sends them."""
        count, since = len(r.generated), r.sent_tokens
        if count == since:
            return
        now = time.monotonic()
        if r.paced:  # the bookkeeping only paced streams need
            if held and self._must_wait(r, now):
                return
            r.unacknowledged.append((count, now))
        r.sent_tokens, r.last_sent = count, now
        if since == 0:
            # A stream's first token leaves from this thread, before the next decoding step: from
            # the sender thread it waited for the GIL behind that step's Python (time to first
            # token 1.2-3.3 ms longer at c=1-8, perf/README.md). Once a stream, so the steps hardly wait.
            try:
                r.sender.send(self._response(r, r.generated[:count], since=0))
            except Exception as exc:  # as in _send_loop: this stream's client left, the others go on
                pb_utils.Logger.log_warn(f"could not send a response: {exc}")
            return
        # Built in the sender thread, from the tokens of now.
        self._send(r.sender, lambda: self._response(r, r.generated[:count], since=since))

    def _must_wait(self, r, now):
        """Whether a paced stream's next response waits: once something acknowledged the stream
        (nothing does when the engine is called directly), while STREAM_WINDOW of its responses
        are unacknowledged or its interval has not passed."""
        acknowledged = self.back_channel.acknowledged(r.cancel_key)
        while r.unacknowledged and (r.unacknowledged[0][0] <= acknowledged
                                    or now - r.unacknowledged[0][1] > back_channel.ACK_WAIT_S):
            r.unacknowledged.popleft()
        return bool(acknowledged) and (len(r.unacknowledged) >= back_channel.STREAM_WINDOW
                                       or now < r.last_sent + self.stream_interval)

    def _ended(self, r):
        self.back_channel.forget(r.cancel_key)
        self._finish(r)

    def _finish(self, r):
        if r.cancelled:
            # Read by tests/test_openai.py: how far a generation went after its client left.
            pb_utils.Logger.log_info(f"{CANCELLED_LOG} after {len(r.generated)} of {r.max_new} tokens")
            # A plain final response, not a CANCELLED error (no one reads it): in tritonserver 2.51 a
            # step's error ends a streaming ensemble while its postprocessing steps are still in
            # flight, and their completions are then never counted (core's ensemble_scheduler.cc
            # PrepareSteps before triton-inference-server/core 5280db8, #466), so the ensemble's
            # request stayed in flight for good: a stop waited its whole exit timeout and failed.
            self._send(r.sender, None, pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        elif r.failure:
            self._send(r.sender, pb_utils.InferenceResponse(error=pb_utils.TritonError(r.failure)),
                       pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        elif r.streaming:
            self._stream(r, held=False)
            self._send(r.sender, None, pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        else:
            self._send(r.sender, self._response(r, r.generated), pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    # -- generation -------------------------------------------------------------------------

    def _parse(self, request):
        try:
            r = Request(request, self.defaults)
        except ClientError as exc:
            return None, str(exc)
        except Exception as exc:
            return None, f"bad request: {exc}"
        if not r.prompt:
            return None, "input_ids is empty"
        if len(r.prompt) > self.max_input_len:
            return None, f"prompt has {len(r.prompt)} tokens, above max_input_len {self.max_input_len}"
        if not 1 <= r.max_new <= self.max_output_len:
            return None, f"request_output_len {r.max_new} is outside 1..max_output_len {self.max_output_len}"
        if not (math.isfinite(r.temperature) and r.temperature >= 0):
            return None, f"temperature {r.temperature} must be a finite number >= 0"
        if r.top_k < 0:
            return None, f"runtime_top_k {r.top_k} must be >= 0 (0: no top-k filter)"
        if not (math.isfinite(r.top_p) and 0 <= r.top_p <= 1):
            return None, f"runtime_top_p {r.top_p} must be within 0..1"
        if r.seed < 0:
            return None, f"random_seed {r.seed} must be >= 0"
        return r, None

    def _choose(self, r, logits):
        torch = self.torch
        logits = self._penalize(r, logits)
        for word in r.bad_words:
            # Ban the token that would complete a bad word.
            if len(word) == 1 or tuple(r.generated[-(len(word) - 1):]) == word[:-1]:
                logits[word[-1]] = float("-inf")
        if r.greedy:
            return self._chosen(r, logits, int(torch.argmax(logits)))
        logits = logits / max(r.temperature, 1e-5)
        if r.top_k > 0:
            kth = torch.topk(logits, min(r.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if 0 < r.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < r.top_p  # smallest set reaching top_p
            filtered = torch.zeros_like(probs).scatter(0, order, sorted_probs * keep)
            probs = filtered / filtered.sum()
        return self._chosen(r, logits, int(torch.multinomial(probs, 1, generator=r.generator)))

    def _chosen(self, r, logits, token):
        if r.return_log_probs:
            r.log_probs.append(float(self.torch.log_softmax(logits, dim=-1)[token]))
        return token

    def _penalize(self, r, logits):
        """Repetition (divide positive logits, multiply negative ones), presence and frequency
        penalties over the tokens seen so far, and end_id banned before min_length tokens."""
        torch = self.torch
        if r.repetition_penalty == 1.0 and not (r.presence_penalty or r.frequency_penalty or r.bad_words) \
                and len(r.generated) >= r.min_tokens:
            return logits
        logits = logits.clone()  # the forward pass's logits are inference tensors: edit a copy
        if r.repetition_penalty != 1.0 or r.presence_penalty or r.frequency_penalty:
            seen = torch.tensor(r.prompt + r.generated)
            counts = torch.bincount(seen, minlength=logits.numel()).to(logits.dtype)[:logits.numel()]
            present = counts > 0
            if r.repetition_penalty != 1.0:
                penalized = torch.where(logits > 0, logits / r.repetition_penalty, logits * r.repetition_penalty)
                logits[present] = penalized[present]
            logits -= r.presence_penalty * present.to(logits.dtype) + r.frequency_penalty * counts
        if len(r.generated) < r.min_tokens:
            logits[r.end_id] = float("-inf")
        return logits

    def _advance(self, r, token, on_token):
        if token == r.end_id:  # end_id ends the sequence and is not part of the output
            if r.return_log_probs:
                r.log_probs.pop()
            r.done = True
            return
        if self._client_left(r):  # no more work, nothing more sent
            r.cancelled = r.done = True
            return
        r.generated.append(token)
        if on_token is not None:
            on_token(r, token)
        # A stop word is kept in the output, as TensorRT-LLM does.
        hit_stop = any(tuple(r.generated[-len(w):]) == w for w in r.stop_words)
        if hit_stop or len(r.generated) >= r.max_new:
            r.done = True

    def _response(self, r, tokens, since=None):
        """The response carrying tokens: a whole answer, or (since: how many of them the stream's
        earlier responses carried) a streamed one."""
        streamed = since is not None
        generated = len(tokens)
        tokens = list(tokens) if (streamed or r.exclude_input) else r.prompt + list(tokens)
        output_ids = np.array([[tokens]], dtype=np.int32).reshape(1, 1, len(tokens))
        offset = since if streamed else -1
        outputs = [
            pb_utils.Tensor("output_ids", output_ids),
            pb_utils.Tensor("sequence_length", np.array([[len(tokens)]], dtype=np.int32)),
            pb_utils.Tensor("stream_offset", np.array([[offset]], dtype=np.int32)),
            pb_utils.Tensor("cancel_key", np.array([[r.cancel_key.encode()]], dtype=np.object_)),
        ]
        if r.return_log_probs:
            # The log probs of the tokens generated up to this response (a streamed one is built
            # in the sender thread, while r.log_probs grows).
            log_probs = r.log_probs[:generated]
            outputs += [pb_utils.Tensor("output_log_probs", np.array(log_probs, dtype=np.float32).reshape(1, 1, -1)),
                        pb_utils.Tensor("cum_log_probs", np.array([[sum(log_probs)]], dtype=np.float32))]
        if r.return_num_input_tokens:
            outputs.append(pb_utils.Tensor("num_input_tokens", np.array([[len(r.prompt)]], dtype=np.int32)))
        if r.return_num_output_tokens:
            outputs.append(pb_utils.Tensor("num_output_tokens", np.array([[generated]], dtype=np.int32)))
        return pb_utils.InferenceResponse(output_tensors=outputs)


class RunningBatch:
    """The sequences being decoded together: one KV cache (batch x heads x time x dim), an
    attention mask that hides each row's left padding, and each row's next position.

    admit() prefills new prompts as their own batch and merges them in (left-padding the shorter
    side's cache and mask); step() decodes one token for every row; finished rows leave at once.
    """

    def __init__(self, engine, on_token=None, on_done=None):
        self.engine, self.torch = engine, engine.torch
        self.on_token, self.on_done = on_token, on_done
        self.rows = []
        self.cache = self.mask = self.positions = self.next_ids = None

    def admit(self, requests):
        if not requests:
            return
        torch, pad = self.torch, self.engine.defaults["pad_id"]
        width = max(len(r.prompt) for r in requests)
        ids = torch.full((len(requests), width), pad, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, r in enumerate(requests):
            ids[row, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[row, width - len(r.prompt):] = 1
            r.generator = torch.Generator().manual_seed(r.seed)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.engine.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        next_ids = self._choose_all(requests, out.logits[:, -1, :].float())
        if self.rows:
            self._merge(out.past_key_values, mask, positions[:, -1:] + 1, next_ids)
        else:
            self.cache, self.mask, self.positions, self.next_ids = out.past_key_values, mask, positions[:, -1:] + 1, next_ids
        self.rows = self.rows + list(requests)
        self._drop_done()

    def step(self):
        torch = self.torch
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        with torch.inference_mode():
            out = self.engine.model(input_ids=self.next_ids, attention_mask=self.mask, position_ids=self.positions,
                                    past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        self.positions = self.positions + 1
        self.next_ids = self._choose_all(self.rows, out.logits[:, -1, :].float())
        self._drop_done()

    def _choose_all(self, rows, logits):
        next_ids = self.torch.full((len(rows), 1), self.engine.defaults["pad_id"], dtype=self.torch.long)
        # One argmax for the whole batch: the rows that need nothing else take theirs from it (the
        # same values as a per-row argmax), the others choose on their own.
        best = logits.argmax(-1).tolist()
        for row, r in enumerate(rows):
            try:
                token = best[row] if _plain_greedy(r) else self.engine._choose(r, logits[row])
            except Exception as exc:  # e.g. sampling on logits of a degenerate row: only this request fails
                r.failure, r.done = f"generation failed: {exc}", True
                continue
            next_ids[row, 0] = token
            self.engine._advance(r, token, self.on_token)
        return next_ids

    def _merge(self, cache, mask, positions, next_ids):
        torch = self.torch
        width = max(self.mask.shape[1], mask.shape[1])

        def left_pad(t, dim):
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([torch.zeros(shape, dtype=t.dtype), t], dim=dim)

        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([left_pad(mine.keys, 2), left_pad(theirs.keys, 2)], dim=0)
            mine.values = torch.cat([left_pad(mine.values, 2), left_pad(theirs.values, 2)], dim=0)
        self.mask = torch.cat([left_pad(self.mask, 1), left_pad(mask, 1)], dim=0)
        self.positions = torch.cat([self.positions, positions], dim=0)
        self.next_ids = torch.cat([self.next_ids, next_ids], dim=0)

    def cancel(self, keys):
        """Drop the rows whose back_channel.Listener key was sent back (their client left)."""
        if not keys:
            return
        for r in self.rows:
            if r.cancel_key in keys:
                r.cancelled = r.done = True
        self._drop_done()

    def _drop_done(self):
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if len(keep) == len(self.rows):
            return
        for r in self.rows:
            if r.done and self.on_done is not None:
                self.on_done(r)
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.positions = self.next_ids = None
            return
        index = self.torch.tensor(keep)
        # Columns that are padding for every remaining row are dropped too.
        mask = self.mask.index_select(0, index)
        first = int((mask.sum(0) > 0).nonzero()[0])
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self.mask = mask[:, first:]
        self.positions = self.positions.index_select(0, index)
        self.next_ids = self.next_ids.index_select(0, index)


def _plain_greedy(r):
    """Whether r's next token is the argmax of its logits and nothing more (_choose's fast case)."""
    return (r.greedy and not r.bad_words and not r.return_log_probs and r.repetition_penalty == 1.0
            and not r.presence_penalty and not r.frequency_penalty and len(r.generated) >= r.min_tokens)


def _client_error(message):
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
