"""OpenAI request bodies -> the ensemble's inputs (renamed for an LLM API model by the backend,
models.LLMAPI_INPUTS), and OpenAI's error shape.

A parameter the frontend cannot honour is refused with a 400 naming it, never ignored silently
(OpenAI API reference: https://platform.openai.com/docs/api-reference, completions and chat).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .models import LlmModel

MAX_STOP_SEQUENCES = 4  # as OpenAI
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
# A prompt longer than this many characters per token of max_input_len is refused before it is
# tokenized (tokenizing megabytes held the event loop for seconds): no token of the model's
# vocabulary is longer than LlmModel.max_token_chars, so such a prompt cannot fit; the factor 2
# leaves room for normalizers that drop characters (accents).
PROMPT_CHARS_PER_TOKEN_SLACK = 2


class ApiError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def shown(value: Any, limit: int = 40) -> str:
    """repr(value), cut to `limit` characters: a client's value in an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class Generation:
    """One request as the ensemble sees it, plus what the frontend itself does (stop strings)."""

    prompt: str
    max_tokens: int
    stream: bool
    include_usage: bool
    stop: list[str]
    prompt_tokens: int = 0       # counted once, when the request is checked (usage reports it)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)   # optional ensemble inputs


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(name, f"{name} must be a number, got {shown(value)}")
    if not low <= value <= high:
        raise bad(name, f"{name} {shown(value)} is outside {low}..{high}")
    return float(value)


def _integer(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"{name} must be an integer, got {shown(value)}")
    if value < low or (high is not None and value > high):
        raise bad(name, f"{name} {shown(value)} is outside {low}..{high if high is not None else 'inf'}")
    return value


def _refuse_unless(body: dict, name: str, allowed: tuple, why: str) -> None:
    if name in body and body[name] not in allowed:
        raise bad(name, f"{name}={shown(body[name])} is not supported: {why}")


def check_prompt_size(model: LlmModel, prompt: str, prompt_param: str) -> None:
    """Refuse, without tokenizing it, a prompt too long in characters to fit max_input_len."""
    limit = model.max_input_len * model.max_token_chars * PROMPT_CHARS_PER_TOKEN_SLACK
    if len(prompt) > limit:
        raise bad(prompt_param, f"the prompt has {len(prompt)} characters, more than the max_input_len of "
                                f"{model.max_input_len} tokens of model '{model.name}' can hold (at most {limit}); "
                                "shorten it")


def _refuse_unsupported(body: dict[str, Any]) -> None:
    _refuse_unless(body, "n", (None, 1), "this frontend returns one choice per request (n=1)")
    _refuse_unless(body, "best_of", (None, 1), "this frontend returns one choice per request")
    _refuse_unless(body, "logprobs", (None, False, 0), "this frontend does not return log probabilities")
    _refuse_unless(body, "top_logprobs", (None, 0), "this frontend does not return log probabilities")
    _refuse_unless(body, "echo", (None, False), "the prompt is not echoed")
    _refuse_unless(body, "suffix", (None, ""), "insertion (suffix) is not supported")
    _refuse_unless(body, "logit_bias", (None, {}), "logit_bias is not supported")
    _refuse_unless(body, "tools", (None, []), "tool calls are not supported")
    _refuse_unless(body, "response_format", (None, {"type": "text"}), "only text responses are supported")
    _refuse_unless(body, "functions", (None, []), "function calls are not supported")
    _refuse_unless(body, "function_call", (None, "none", "auto"), "function calls are not supported")
    _refuse_unless(body, "tool_choice", (None, "none", "auto"), "tool calls are not supported")
    _refuse_unless(body, "modalities", (None, ["text"]), "only text output is supported")
    _refuse_unless(body, "audio", (None,), "audio output is not supported")
    _refuse_unless(body, "prediction", (None,), "predicted outputs are not supported")
    _refuse_unless(body, "reasoning_effort", (None,), "the model is not a reasoning model")


def parse_generation(body: dict[str, Any], model: LlmModel, prompt: str, prompt_param: str,
                     prompt_tokens: int) -> Generation:
    """Validate the sampling parameters of a completions or chat request against the model
    (prompt_tokens: the prompt's, LlmModel.count_prompt_tokens after check_prompt_size)."""
    _refuse_unsupported(body)
    if prompt_tokens > model.max_input_len:
        raise bad(prompt_param, f"the prompt has {prompt_tokens} tokens, above the max_input_len of "
                                f"{model.max_input_len} tokens of model '{model.name}'; shorten it")
    if prompt_tokens == 0:
        raise bad(prompt_param, "the prompt is empty")

    max_tokens = _integer(body, "max_completion_tokens", 1)
    name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, name = _integer(body, "max_tokens", 1), "max_tokens"
    if max_tokens is None:
        max_tokens = model.max_output_len
    elif max_tokens > model.max_output_len:
        raise bad(name, f"{name} {max_tokens} is above the max_output_len of {model.max_output_len} "
                        f"of model '{model.name}'")

    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP_SEQUENCES:
        raise bad("stop", f"stop must be a string or a list of at most {MAX_STOP_SEQUENCES} strings")
    stops = [s for s in stops if s]

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream", "stream must be true or false")
    options = body.get("stream_options") or {}
    if options and not stream:
        raise bad("stream_options", "stream_options is only allowed with stream: true")
    if not isinstance(options, dict):
        raise bad("stream_options", "stream_options must be an object")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad("stream_options.include_usage", "stream_options.include_usage must be true or false")

    generation = Generation(prompt, max_tokens, stream, include_usage, stops, prompt_tokens)
    generation.inputs.update(_sampling_inputs(body, model))
    if stops:
        generation.inputs["stop_words"] = np.array([[s.encode() for s in stops]], dtype=np.object_)
    return generation


def _sampling_inputs(body: dict[str, Any], model: LlmModel) -> dict[str, np.ndarray]:
    """The ensemble inputs of the sampling parameters the request sets."""
    inputs: dict[str, np.ndarray] = {}
    values = {  # ensemble input -> (OpenAI parameter, value, dtype)
        "temperature": ("temperature", _number(body, "temperature", 0, 2), np.float32),
        "top_p": ("top_p", _number(body, "top_p", 0, 1), np.float32),
        "top_k": ("top_k", _integer(body, "top_k", 0), np.int32),            # extension (vLLM, TGI)
        model.seed_input: ("seed", _integer(body, "seed", 0, 2**63 - 1), np.uint64),
        "presence_penalty": ("presence_penalty", _number(body, "presence_penalty", -2, 2), np.float32),
        "frequency_penalty": ("frequency_penalty", _number(body, "frequency_penalty", -2, 2), np.float32),
        "repetition_penalty": ("repetition_penalty", _number(body, "repetition_penalty", 0.01, 100),  # extension
                               np.float32),
    }
    for tensor, (param, value, dtype) in values.items():
        if value is None:
            continue
        if model.input_name(tensor) is None:
            raise bad(param, f"model '{model.name}' takes no {param} (its Triton model has no input for it)")
        inputs[tensor] = np.array([[value]], dtype=dtype)
    temperature = inputs.get("temperature")
    if temperature is not None and float(temperature[0, 0]) == 0.0:
        # OpenAI's temperature 0 is greedy; TRT-LLM reads greedy from top_k 1.
        inputs["top_k"] = np.array([[1]], dtype=np.int32)
    elif temperature is not None and model.greedy_defaults:
        # OpenAI's temperature > 0 samples from the whole distribution (its top_p defaults to 1).
        # TRT-LLM samples only when top_k or top_p says so (top_k 0 with top_p 0 is greedy): where the
        # spec's request defaults are greedy (the demo's top_k 1), what the client left out is set to
        # OpenAI's; sampling defaults the spec sets (top_k 40, ...) stay.
        if "top_k" not in inputs and model.input_name("top_k") is not None:
            inputs["top_k"] = np.array([[0]], dtype=np.int32)
        if "top_p" not in inputs and model.input_name("top_p") is not None:
            inputs["top_p"] = np.array([[1.0]], dtype=np.float32)
    return inputs


def prompt_of_completion(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad("prompt", "prompt must be a string (one prompt per request; token-id prompts are not supported)")
    return prompt


def messages_of_chat(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "messages must be a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad(f"messages[{i}]", "each message needs a string role")
        role = message["role"]
        if role not in CHAT_ROLES:
            raise bad(f"messages[{i}].role", f"role {shown(role)} is not one of {', '.join(CHAT_ROLES)}")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text ones
            if not content:
                raise bad(f"messages[{i}].content", "content must not be an empty list")
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise bad(f"messages[{i}].content", "only text content parts are supported")
                if not isinstance(part.get("text"), str):
                    raise bad(f"messages[{i}].content[{j}].text", "a text part's text must be a string")
            content = "".join(part["text"] for part in content)
        if content is None:
            if role != "assistant":  # an assistant turn may carry tool_calls instead
                raise bad(f"messages[{i}].content", f"a {role} message needs content")
            content = ""
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content", "content must be a string or a list of text parts")
        rendered = {"role": role, "content": content}
        if isinstance(message.get("name"), str):  # chat templates may use it
            rendered["name"] = message["name"]
        out.append(rendered)
    return out


class StopScanner:
    """Cuts the streamed text at the first stop string, holding back a tail that may start one.

    The engine's stop_words end generation at the token level, but a stop string may tokenize
    differently inside the text; matching on text here is what OpenAI's `stop` means (the stop
    string itself is not returned)."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""
        self.stopped = False
        self.hit = ""  # the stop string found: generated, so counted in usage, but not returned

    def feed(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.pending += piece
        hits = [(i, s) for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            at, self.hit = min(hits)
            out, self.pending, self.stopped = self.pending[:at], "", True
            return out
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
