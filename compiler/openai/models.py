"""The repository's LLMs as the frontend serves them: limits, tokenizer, chat template.

Two kinds: the LLM ensembles (preprocessing -> engine -> postprocessing, upstream's tensor names,
`[batch, 1]` inputs) and the LLM API models (TensorRT-LLM's `llmapi` model or its CPU stand-in:
`sampling_param_*` inputs of shape `[1]`, each streamed response the text so far).
Everything is read from the built repository (the manifest names the models and their steps;
the configs and the llmapi model.yaml carry the limits and the tokenizer directory), so the
frontend serves what was built.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import manifest
from ..errors import TritonizeError
from ..optional import optional
from ..triton.config import parse_pbtxt

tokenizers = optional("tokenizers", purpose="counting tokens in the OpenAI frontend", extra="llm")
jinja2_sandbox = optional("jinja2.sandbox", purpose="rendering chat templates", package="jinja2")

CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers >= 4.50 saves the template here


class ChatTemplateMissing(Exception):
    """The model's tokenizer has no chat template (the frontend answers 400 with the fix)."""


# The LLM API model's input for each ensemble input the frontend sets (NVIDIA/TensorRT-LLM
# triton_backend/all_models/llmapi/tensorrt_llm/config.pbtxt; the CPU stand-in declares the same).
LLMAPI_INPUTS = {"temperature": "sampling_param_temperature", "top_p": "sampling_param_top_p",
                 "top_k": "sampling_param_top_k", "seed": "sampling_param_seed",
                 "presence_penalty": "sampling_param_presence_penalty",
                 "frequency_penalty": "sampling_param_frequency_penalty",
                 "stop_words": "sampling_param_stop", "max_tokens": "sampling_param_max_tokens"}
LLMAPI_KINDS = ("llm-llmapi", "llm-llmapi-cpu")
SERVED_KINDS = ("llm-ensemble", *LLMAPI_KINDS)  # the manifest kinds the frontend serves


@dataclass
class LlmModel:
    name: str
    decoupled: bool
    max_input_len: int
    max_output_len: int
    inputs: frozenset[str]            # the model's input names (the seed's name differs by release)
    tokenizer_dir: Path
    add_bos_token: bool               # the preprocessing prepends the tokenizer's bos_token
    special_tokens: dict[str, str] = field(default_factory=dict)
    chat_template: str | None = None
    llmapi: bool = False              # an LLM API model, not an ensemble
    _tokenizer: Any = None
    _template: Any = None             # chat_template compiled once (jinja compiles in ms, per request on the event loop)
    _max_token_chars: int | None = None
    greedy_defaults: bool = True      # the spec's sampling defaults (a request without them) are greedy

    @property
    def seed_input(self) -> str:
        return "seed" if "seed" in self.inputs or self.llmapi else "random_seed"

    def input_name(self, ensemble_input: str) -> str | None:
        """The model's input for an ensemble input name, or None when it has none."""
        name = LLMAPI_INPUTS.get(ensemble_input) if self.llmapi else ensemble_input
        return name if name in self.inputs else None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(self.tokenizer_dir / "tokenizer.json"))
        return self._tokenizer

    @property
    def max_token_chars(self) -> int:
        """The most characters a token of the vocabulary stands for (its entry's length bounds the
        text it decodes to: byte-level entries hold a character per byte, SentencePiece ones one
        for the space)."""
        if self._max_token_chars is None:
            self._max_token_chars = max((len(token) for token in self.tokenizer.get_vocab()), default=1)
        return self._max_token_chars

    def count_prompt_tokens(self, text: str, *, in_thread: bool = False) -> int:
        """Tokens the preprocessing will feed the engine for this prompt (same tokenizer, same BOS rule)."""
        return self.count_tokens(text, in_thread=in_thread) + int(self.add_bos_token)

    def count_tokens(self, text: str, *, in_thread: bool = False) -> int:
        """in_thread: encode_batch, which releases the GIL while it works (tokenizers' encode holds it),
        so that the event loop runs on while a long text is tokenized in another thread."""
        encoding = self.tokenizer.encode_batch([text], add_special_tokens=False)[0] if in_thread else \
            self.tokenizer.encode(text, add_special_tokens=False)
        return len(encoding.ids)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        if not self.chat_template:
            raise ChatTemplateMissing(
                f"model '{self.name}' has no chat template: its tokenizer "
                f"({self.tokenizer_dir / 'tokenizer_config.json'}) defines no `chat_template`; add one to the "
                f"source model's tokenizer_config.json (or {CHAT_TEMPLATE_FILE}) and rebuild, or use /v1/completions")
        if self._template is None:
            # transformers' apply_chat_template environment: sandboxed, trim_blocks, lstrip_blocks.
            env = jinja2_sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

            def raise_exception(message: str) -> None:
                raise ValueError(message)

            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        return self._template.render(
            messages=messages, add_generation_prompt=True, bos_token=self.special_tokens.get("bos_token", ""),
            eos_token=self.special_tokens.get("eos_token", ""))

    def card(self, created: int) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": created, "owned_by": "tritonize",
                "max_model_len": self.max_input_len + self.max_output_len,
                "max_input_len": self.max_input_len, "max_output_len": self.max_output_len}


def discover_models(repository: str | Path) -> dict[str, LlmModel]:
    """Every LLM of the repository: the manifest's `llm-ensemble` entries and its LLM API models."""
    repository = Path(repository)
    built = manifest.load(repository)
    models: dict[str, LlmModel] = {}
    for name, entry in built.models.items():
        if entry.kind in LLMAPI_KINDS:
            models[name] = _llmapi_model(repository, name, bool(entry.decoupled), entry.checkpoint)
        if entry.kind != "llm-ensemble" or not entry.steps:
            continue
        ensemble = parse_pbtxt((repository / name / "config.pbtxt").read_text())
        limits = {k: v.string_value for k, v in ensemble.parameters.items()}
        preprocessing = entry.steps[0]
        pre_config = parse_pbtxt((repository / preprocessing / "config.pbtxt").read_text())
        params = {k: v.string_value for k, v in pre_config.parameters.items()}
        tokenizer_dir = _latest_version(repository / preprocessing) / params["tokenizer_dir"]
        if "max_input_len" not in limits:
            raise TritonizeError(f"ensemble {name} does not record max_input_len (built by an older tritonize)",
                                 file=repository / name / "config.pbtxt", fix="rebuild the repository")
        special, template = _tokenizer_config(tokenizer_dir)
        models[name] = LlmModel(
            name=name, decoupled=bool(entry.decoupled), max_input_len=int(limits["max_input_len"]),
            max_output_len=int(limits["max_output_len"]), inputs=frozenset(t.name for t in ensemble.input),
            tokenizer_dir=tokenizer_dir, add_bos_token=params.get("add_bos_token", "false") == "true",
            special_tokens=special, chat_template=template, greedy_defaults=_greedy(params))
    return models


def _greedy(params: dict[str, str]) -> bool:
    """Whether the default_top_k/default_top_p parameters (the spec's sampling) are greedy, as TRT-LLM
    reads them: top_k 1, or neither top_k nor top_p set."""
    top_k, top_p = int(params.get("default_top_k", "1")), float(params.get("default_top_p", "0"))
    return top_k == 1 or (top_k == 0 and top_p == 0)


def _llmapi_model(repository: Path, name: str, decoupled: bool, checkpoint: str | None) -> LlmModel:
    """An LLM API model: limits from its model.yaml (the LLM(**args) file, max_seq_len counting
    prompt and output), the tokenizer from its checkpoint (the manifest's path: model.yaml's is
    the serving container's)."""
    import yaml

    config = parse_pbtxt((repository / name / "config.pbtxt").read_text())
    version = _latest_version(repository / name)
    args = yaml.safe_load((version / "model.yaml").read_text()) or {}
    missing = [key for key in ("max_input_len", "max_seq_len") if key not in args]
    if missing:
        raise TritonizeError(f"the LLM API model '{name}' has no {', '.join(missing)} in its model.yaml",
                             file=version / "model.yaml", fix="rebuild the repository with `tritonize build`")
    tokenizer_dir = repository / name / (checkpoint or f"{version.name}/checkpoint")
    params = {k: v.string_value for k, v in config.parameters.items()}
    special, template = _tokenizer_config(tokenizer_dir)
    return LlmModel(name=name, decoupled=decoupled, max_input_len=int(args["max_input_len"]),
                    max_output_len=int(args["max_seq_len"]) - int(args["max_input_len"]),
                    inputs=frozenset(t.name for t in config.input), tokenizer_dir=tokenizer_dir,
                    add_bos_token=params.get("add_bos_token", "false") == "true", special_tokens=special,
                    chat_template=template, llmapi=True, greedy_defaults=_greedy(params))


def _latest_version(model_dir: Path) -> Path:
    versions = sorted((int(p.name), p) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    return versions[-1][1]


def _tokenizer_config(tokenizer_dir: Path) -> tuple[dict[str, str], str | None]:
    path = tokenizer_dir / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    special = {k: (v["content"] if isinstance(v, dict) else v) for k, v in config.items()
               if k in ("bos_token", "eos_token") and v}
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template is None and (tokenizer_dir / CHAT_TEMPLATE_FILE).is_file():
        template = (tokenizer_dir / CHAT_TEMPLATE_FILE).read_text()
    return special, template
