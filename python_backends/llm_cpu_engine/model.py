"""Triton python backend: a CPU stand-in for the `tensorrt_llm` model of the TensorRT-LLM ensemble,
with the same tensor contract (tensorrtllm_backend inflight_batcher_llm/tensorrt_llm), running the
model with transformers.

Inputs:  input_ids INT32[-1], input_lengths INT32[1], request_output_len INT32[1]; optional
         end_id, pad_id, runtime_top_k INT32[1], runtime_top_p, temperature FP32[1],
         random_seed UINT64[1], streaming BOOL[1], stop_words_list / bad_words_list INT32[2,-1].
Outputs: output_ids INT32[-1,-1] (beam x tokens), sequence_length INT32[-1] (per beam).

Decoupled (model_transaction_policy.decoupled) the model streams: execute() hands requests to a
generation thread and returns; the thread gathers every request waiting at that moment into one
batch, decodes them together with a KV cache, and sends one response per token to requests that
asked for streaming, one response with all tokens to the others, each closed with a final flag.
Not decoupled, execute() generates the batch Triton's dynamic batcher gathered and returns.

Parameters (strings): hf_model_dir, checkpoint_dir (optional TRT-LLM checkpoint, see
trtllm_checkpoint.py; both relative to this version directory), max_input_len, max_output_len,
exclude_input_in_output, default_temperature, default_top_k, default_top_p, default_seed,
cpu_threads (0: torch's default).
"""
import json
import os
import queue
import sys
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trtllm_checkpoint  # noqa: E402  (ships next to this file)


class Request:
    """One generation request, decoded from Triton tensors."""

    def __init__(self, request, defaults):
        def scalar(name, default, cast):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            return default if tensor is None else cast(tensor.as_numpy().reshape(-1)[0])

        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1)
        length = scalar("input_lengths", len(ids), int)
        self.prompt = [int(t) for t in ids[:length]]
        self.max_new = scalar("request_output_len", 16, int)
        self.end_id = scalar("end_id", defaults["end_id"], int)
        self.pad_id = scalar("pad_id", defaults["pad_id"], int)
        self.top_k = scalar("runtime_top_k", defaults["top_k"], int)
        self.top_p = scalar("runtime_top_p", defaults["top_p"], float)
        self.temperature = scalar("temperature", defaults["temperature"], float)
        self.seed = scalar("random_seed", defaults["seed"], int)
        self.streaming = scalar("streaming", False, bool)
        self.stop_words = _word_list(pb_utils.get_input_tensor_by_name(request, "stop_words_list"))
        self.bad_words = _word_list(pb_utils.get_input_tensor_by_name(request, "bad_words_list"))
        self.generated = []
        self.done = False
        self.triton = request

    @property
    def greedy(self):
        # TRT-LLM semantics: top_k 1, or neither top_k nor top_p set, is greedy.
        return self.temperature == 0 or self.top_k == 1 or (self.top_k == 0 and self.top_p == 0)


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
        checkpoint = params.get("checkpoint_dir") or None
        self.model = trtllm_checkpoint.load_model(
            os.path.join(version_dir, params["hf_model_dir"]),
            os.path.join(version_dir, checkpoint) if checkpoint else None)
        generation = self.model.generation_config
        eos = generation.eos_token_id if generation.eos_token_id is not None else self.model.config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        pad = self.model.config.pad_token_id
        self.defaults = {
            "end_id": int(eos), "pad_id": int(pad if pad is not None else eos),
            "temperature": float(params.get("default_temperature", "1.0")),
            "top_k": int(params.get("default_top_k", "1")),
            "top_p": float(params.get("default_top_p", "0.0")),
            "seed": int(params.get("default_seed", "0")),
        }
        self.max_input_len = int(params["max_input_len"])
        self.max_output_len = int(params["max_output_len"])
        self.exclude_input = params.get("exclude_input_in_output", "true").lower() == "true"
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        if self.decoupled:
            self.pending = queue.Queue()
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
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(error))
            else:
                batch.append((i, parsed))
        if batch:
            self._generate([r for _, r in batch])
            for i, r in batch:
                responses[i] = self._response(r, r.generated)
        return [responses[i] for i in range(len(requests))]

    def finalize(self):
        if self.decoupled:
            self.pending.put(None)
            self.worker.join(timeout=10)

    # -- decoupled serving loop -------------------------------------------------------------

    def _serve(self):
        while True:
            first = self.pending.get()
            if first is None:
                return
            raw = [first]
            while True:  # everything that arrived meanwhile joins this batch
                try:
                    item = self.pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.pending.put(None)
                    break
                raw.append(item)
            batch = []
            for request in raw:
                parsed, error = self._parse(request)
                if error is not None:
                    request.get_response_sender().send(
                        pb_utils.InferenceResponse(error=pb_utils.TritonError(error)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                else:
                    parsed.sender = request.get_response_sender()
                    batch.append(parsed)
            if not batch:
                continue
            try:
                self._generate(batch, on_token=self._stream_token)
                for r in batch:
                    if r.streaming:
                        r.sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    else:
                        r.sender.send(self._response(r, r.generated),
                                      flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # report to every client instead of hanging them
                for r in batch:
                    r.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"generation failed: {exc}")),
                                  flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _stream_token(self, r, token):
        if r.streaming:
            r.sender.send(self._response(r, [token], streamed=True))

    # -- generation -------------------------------------------------------------------------

    def _parse(self, request):
        try:
            r = Request(request, self.defaults)
        except Exception as exc:
            return None, f"bad request: {exc}"
        if not r.prompt:
            return None, "input_ids is empty"
        if len(r.prompt) > self.max_input_len:
            return None, f"prompt has {len(r.prompt)} tokens, above max_input_len {self.max_input_len}"
        if not 1 <= r.max_new <= self.max_output_len:
            return None, f"request_output_len {r.max_new} is outside 1..max_output_len {self.max_output_len}"
        return r, None

    def _generate(self, batch, on_token=None):
        """Decode a batch together: left-padded prompts, one KV cache, each request stops on its
        own (end_id, stop words, max tokens, cancellation)."""
        torch = self.torch
        width = max(len(r.prompt) for r in batch)
        ids = torch.full((len(batch), width), self.defaults["pad_id"], dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):
            ids[row, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[row, width - len(r.prompt):] = 1
            r.generator = torch.Generator().manual_seed(r.seed)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = None
        with torch.inference_mode():
            while not all(r.done for r in batch):
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                 past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                logits = out.logits[:, -1, :].float()
                next_ids = torch.full((len(batch),), self.defaults["pad_id"], dtype=torch.long)
                for row, r in enumerate(batch):
                    if r.done:
                        continue
                    token = self._choose(r, logits[row])
                    next_ids[row] = token
                    self._advance(r, token, on_token)
                ids = next_ids[:, None]
                mask = torch.cat([mask, torch.ones((len(batch), 1), dtype=torch.long)], dim=1)
                positions = positions[:, -1:] + 1

    def _choose(self, r, logits):
        torch = self.torch
        for word in r.bad_words:
            # Ban the token that would complete a bad word.
            if len(word) == 1 or tuple(r.generated[-(len(word) - 1):]) == word[:-1]:
                logits[word[-1]] = float("-inf")
        if r.greedy:
            return int(torch.argmax(logits))
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
        return int(torch.multinomial(probs, 1, generator=r.generator))

    def _advance(self, r, token, on_token):
        if token == r.end_id:  # end_id ends the sequence and is not part of the output
            r.done = True
            return
        r.generated.append(token)
        if on_token is not None:
            on_token(r, token)
        # A stop word is kept in the output, as TensorRT-LLM does.
        hit_stop = any(tuple(r.generated[-len(w):]) == w for w in r.stop_words)
        cancelled = getattr(r.triton, "is_cancelled", None) is not None and r.triton.is_cancelled()
        if hit_stop or cancelled or len(r.generated) >= r.max_new:
            r.done = True

    def _response(self, r, tokens, streamed=False):
        tokens = list(tokens) if (streamed or self.exclude_input) else r.prompt + list(tokens)
        output_ids = np.array([[tokens]], dtype=np.int32).reshape(1, 1, len(tokens))
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("output_ids", output_ids),
            pb_utils.Tensor("sequence_length", np.array([[len(tokens)]], dtype=np.int32)),
        ])
