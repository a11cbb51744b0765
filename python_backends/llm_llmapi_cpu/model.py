"""Triton python backend: a CPU stand-in for TensorRT-LLM's `llmapi` model (NVIDIA/TensorRT-LLM
triton_backend/all_models/llmapi/tensorrt_llm/), with its tensors, text in and text out:

Inputs:  text_input STRING[-1] (one prompt), optional streaming BOOL[1], sampling_param_temperature /
         top_p / frequency_penalty / presence_penalty FP32[1], sampling_param_top_k /
         sampling_param_max_tokens INT32[1], sampling_param_seed UINT64[1], sampling_param_stop
         STRING[-1], sampling_param_exclude_input_from_output, return_finish_reason,
         return_stop_reason, return_cumulative_logprob BOOL[1].
Outputs: text_output STRING[-1]; finish_reason ('stop' | 'length' | 'cancelled'), stop_reason
         STRING[-1] and cumulative_logprob FP32[-1] when asked for (return_*).

As the LLM API does: text_output is the generated text only (RequestOutput.outputs[].text); a
streamed response carries the text generated so far, not the new piece (CompletionOutput.text
is cumulative, text_diff the piece: NVIDIA/TensorRT-LLM tensorrt_llm/executor/result.py), held
back at an unfinished UTF-8 character, so the last response of a stream is the one-shot answer;
a stop string ends the answer and is not part of it; max_tokens defaults to 32 (SamplingParams).
The spec's sampling defaults apply where a request gives none.

The model is the checkpoint model.yaml's `model` names (a HF export, hf_checkpoint.py: built from
it alone, FP8 dequantized), decoded by the CPU engine's in-flight batching (cpu_engine.py, the
engine target's CPU engine, shipped next to this file); max_input_len and the in-flight batch
size come from model.yaml too. Parameters: default_end_id, default_pad_id, add_bos_token, bos_id,
max_output_len, default_temperature, default_top_k, default_top_p, default_seed.
A request the client got wrong answers 400 / INVALID_ARGUMENT naming the input.
"""
import json
import math
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cpu_engine  # noqa: E402  (ship next to this file)
import hf_checkpoint  # noqa: E402
from detokenize import stable_text  # noqa: E402

DEFAULT_MAX_TOKENS = 32  # tensorrt_llm SamplingParams.max_tokens


class Request:
    """One llmapi request, with the attributes the CPU engine's decoding loop reads."""

    def __init__(self, request, engine):
        def tensor(name):
            found = pb_utils.get_input_tensor_by_name(request, name)
            return None if found is None else found.as_numpy().reshape(-1)

        def scalar(name, default, cast):
            value = tensor(name)
            if value is None:
                return default
            if value.size != 1:
                raise cpu_engine.ClientError(f"{name} must hold one value, got {value.size}")
            return cast(value[0])

        text = tensor("text_input")
        if text is None or text.size != 1:
            raise cpu_engine.ClientError("text_input must hold one prompt")
        prompt = text[0]
        try:
            prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
        except UnicodeDecodeError:
            raise cpu_engine.ClientError("text_input is not UTF-8 text") from None
        defaults = engine.defaults
        self.text = prompt
        self.prompt = engine.encode(prompt)
        self.max_new = scalar("sampling_param_max_tokens", min(DEFAULT_MAX_TOKENS, engine.max_output_len), int)
        self.end_id, self.pad_id = defaults["end_id"], defaults["pad_id"]
        self.top_k = scalar("sampling_param_top_k", defaults["top_k"], int)
        self.top_p = scalar("sampling_param_top_p", defaults["top_p"], float)
        self.temperature = scalar("sampling_param_temperature", defaults["temperature"], float)
        self.seed = scalar("sampling_param_seed", defaults["seed"], int)
        self.streaming = scalar("streaming", False, bool)
        self.repetition_penalty, self.min_tokens = 1.0, 0
        self.presence_penalty = scalar("sampling_param_presence_penalty", 0.0, float)
        self.frequency_penalty = scalar("sampling_param_frequency_penalty", 0.0, float)
        scalar("sampling_param_exclude_input_from_output", False, bool)  # text_output never has the prompt
        self.return_finish_reason = scalar("return_finish_reason", False, bool)
        self.return_stop_reason = scalar("return_stop_reason", False, bool)
        self.return_log_probs = scalar("return_cumulative_logprob", False, bool)
        stops = tensor("sampling_param_stop")
        self.stop_strings = [] if stops is None else [
            s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in stops]
        self.stop_strings = [s for s in self.stop_strings if s]
        self.stop_words, self.bad_words = [], []
        self.log_probs, self.generated = [], []
        self.done, self.failure, self.finish_reason, self.stop_reason = False, None, None, None
        self.triton = request
        self.next_cancel_check, self.client_left = 0.0, False  # cpu_engine's _client_left

    @property
    def greedy(self):
        return self.temperature == 0 or self.top_k == 1 or (self.top_k == 0 and self.top_p == 0)


class TritonPythonModel(cpu_engine.TritonPythonModel):
    def initialize(self, args):
        import torch
        import yaml
        from tokenizers import Tokenizer

        self.torch = torch
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "model.yaml")) as f:
            llm_args = yaml.safe_load(f)
        checkpoint = os.path.join(version_dir, llm_args["model"])
        self.model = hf_checkpoint.load_model(checkpoint)
        self.tokenizer = Tokenizer.from_file(os.path.join(checkpoint, "tokenizer.json"))
        self.add_bos = params.get("add_bos_token", "false") == "true"
        self.bos_id = int(params.get("bos_id", "-1"))
        self.defaults = {
            "end_id": int(params["default_end_id"]), "pad_id": int(params["default_pad_id"]),
            "temperature": float(params.get("default_temperature", "1.0")),
            "top_k": int(params.get("default_top_k", "1")), "top_p": float(params.get("default_top_p", "0.0")),
            "seed": int(params.get("default_seed", "0")), "exclude_input": True,
        }
        self.max_input_len = int(llm_args["max_input_len"])
        self.max_output_len = int(params["max_output_len"])
        self.max_batch_size = max(1, int(llm_args.get("max_batch_size", 1)))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        if self.decoupled:
            self._start_serving()

    def encode(self, text):
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if self.add_bos else []) + list(ids)

    def decode(self, ids):
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _parse(self, request):
        try:
            r = Request(request, self)
        except cpu_engine.ClientError as exc:
            return None, str(exc)
        except Exception as exc:
            return None, f"bad request: {exc}"
        if not r.prompt:
            return None, "text_input is empty"
        if r.streaming and not self.decoupled:
            return None, "streaming needs the model built with llm.streaming: true (decoupled)"
        if len(r.prompt) > self.max_input_len:
            return None, f"text_input has {len(r.prompt)} tokens, above max_input_len {self.max_input_len}"
        if not 1 <= r.max_new <= self.max_output_len:
            return None, f"sampling_param_max_tokens {r.max_new} is outside 1..{self.max_output_len}"
        if not (math.isfinite(r.temperature) and r.temperature >= 0):
            return None, f"sampling_param_temperature {r.temperature} must be a finite number >= 0"
        if r.top_k < 0:
            return None, f"sampling_param_top_k {r.top_k} must be >= 0"
        if not (math.isfinite(r.top_p) and 0 <= r.top_p <= 1):
            return None, f"sampling_param_top_p {r.top_p} must be within 0..1"
        return r, None

    def _advance(self, r, token, on_token):
        """One token: end_id or a stop string ends with 'stop', max_tokens with 'length'; a
        streaming request gets the text so far, except for the last token, whose text the final
        response carries."""
        if token == r.end_id:
            if r.return_log_probs:
                r.log_probs.pop()
            r.done, r.finish_reason = True, "stop"
            return
        r.generated.append(token)
        text = self.decode(r.generated)
        for stop in r.stop_strings:
            if stop in text:
                r.done, r.finish_reason, r.stop_reason = True, "stop", stop
                return
        if self._client_left(r):
            r.done, r.finish_reason = True, "cancelled"
        elif len(r.generated) >= r.max_new:
            r.done, r.finish_reason = True, "length"
        elif r.streaming and self.decoupled:
            self._send(r.sender, self._response(r, r.generated, streamed=True))

    def _stream_token(self, r, token):
        pass  # _advance streams

    def _finish(self, r):
        if r.failure:
            self._send(r.sender, pb_utils.InferenceResponse(error=pb_utils.TritonError(r.failure)),
                       pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        else:
            self._send(r.sender, self._response(r, r.generated), pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _response(self, r, tokens, streamed=False):
        text = stable_text(self.decode, list(tokens)) if streamed else self.decode(tokens)
        if r.stop_reason is not None:
            text = text[:text.index(r.stop_reason)]
        outputs = [pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))]
        if r.return_finish_reason:
            outputs.append(pb_utils.Tensor("finish_reason", np.array([str(r.finish_reason).encode()], dtype=np.object_)))
        if r.return_stop_reason:
            outputs.append(pb_utils.Tensor("stop_reason", np.array([str(r.stop_reason).encode()], dtype=np.object_)))
        if r.return_log_probs:
            outputs.append(pb_utils.Tensor("cumulative_logprob", np.array([sum(r.log_probs)], dtype=np.float32)))
        return pb_utils.InferenceResponse(output_tensors=outputs)
