"""The architecture fields of a TensorRT-LLM checkpoint's config.json, derived from the source
HuggingFace model: which families the LLM path exports, the fields each needs, filling the ones
ModelOpt leaves out, and the build-time check that every exported field equals the source's.

Why filling is needed: without `tensorrt_llm` importable, ModelOpt 0.47 writes a generic config
(modelopt/torch/export/model_config_export.py) that reads RoPE only from a top-level `rope_theta`
/ `rope_scaling`. transformers 5 keeps them in `rope_parameters`, so `rotary_base` and
`rotary_scaling` go missing and TensorRT-LLM falls back to 10000 without scaling; Qwen2 also
lacks `qwen_type` and `attn_bias`, Qwen3 `qk_layernorm`.

Field names and defaults: NVIDIA/TensorRT-LLM v1.2.1 tensorrt_llm/models/llama/config.py
(LLaMAConfig.from_hugging_face: rotary_base = rope_theta, rotary_scaling = the HF 4.x
`rope_scaling` dict, attn_bias, mlp_bias, tie_word_embeddings) and tensorrt_llm/models/qwen/config.py
(QWenConfig: qwen_type = model_type, attn_bias True except qwen3).
The CPU engine (python_backends/llm_cpu_engine/trtllm_checkpoint.py) rebuilds the model from
these fields alone, so what it serves is what a GPU would load.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConversionError
from .targets import RELEASES


@dataclass(frozen=True)
class Family:
    model_type: str          # HF config.model_type
    # ModelOpt export_tensorrt_llm_checkpoint decoder_type; None: no TensorRT-LLM checkpoint can
    # be exported here, so the engine target cannot serve it.
    decoder: str | None
    releases: tuple[str, ...]  # engine-path releases whose TensorRT-LLM builds it
    # TensorRT-LLM's PyTorch backend (the llmapi target) has the architecture:
    # NVIDIA/TensorRT-LLM tensorrt_llm/_torch/models/modeling_{llama,mistral,qwen,qwen3,phi3}.py.
    llmapi: bool = True

    def targets(self) -> list[str]:
        """'engine at release' descriptions of where the family is served."""
        out = [f"tensorrt_llm at {'/'.join(self.releases)}"] if self.releases else []
        with_llmapi = [tag for tag, r in RELEASES.items() if r.llmapi]
        if self.llmapi and with_llmapi:
            out.append(f"llmapi at {'/'.join(with_llmapi)}")
        return out


ALL_RELEASES = tuple(RELEASES)
# Qwen3 entered TensorRT-LLM's engine path after 0.14 (v0.14.0 tensorrt_llm/models/qwen/config.py
# accepts qwen, qwen2, qwen2_moe, qwen2_vl; v1.2.1 adds qwen3, qwen3_moe).
FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", "llama", ALL_RELEASES),
    Family("mistral", "llama", ALL_RELEASES),   # MistralForCausalLM -> LLaMAForCausalLM (models/__init__.py)
    Family("qwen2", "qwen", ALL_RELEASES),
    Family("qwen3", "qwen", ("26.07",)),
    # The PyTorch backend has Gemma 2/3 (modeling_gemma3.py, hf/gemma2_weight_mapper.py) but no
    # first-generation Gemma: only the engine path serves it.
    Family("gemma", "gemma", ALL_RELEASES, llmapi=False),
    # TensorRT-LLM builds Phi-3 engines (tensorrt_llm/models/phi3), but ModelOpt 0.47's
    # export_tensorrt_llm_checkpoint fails on it without tensorrt_llm (ZeroDivisionError, seen
    # here): only the llmapi target, fed ModelOpt's HF export, serves it.
    Family("phi3", None, (), llmapi=True),
)}


def family_of(hf_config: dict, release: str, engine: str = "tensorrt_llm") -> Family:
    """The family of a HF config.json, or a ConversionError naming the targets that serve it."""
    model_type = hf_config.get("model_type")
    family = FAMILIES.get(str(model_type))
    if family is None:
        supported = ", ".join(f"{f.model_type} ({'; '.join(f.targets())})" for f in FAMILIES.values())
        raise ConversionError(f"model_type '{model_type}' is not supported by the LLM path (supported: {supported})",
                              loc=("source",), fix="use a model of a supported family")
    if engine == "llmapi":
        if not family.llmapi:
            raise ConversionError(f"model_type '{model_type}' is not served by TensorRT-LLM's LLM API (PyTorch "
                                  f"backend)", loc=("llm", "engine"),
                                  fix=f"use a target that serves it: {'; '.join(family.targets())}")
        return family
    if release not in family.releases:
        if not family.releases:
            raise ConversionError(f"model_type '{model_type}' is not served by the tensorrt_llm engine target",
                                  loc=("llm", "engine"),
                                  fix=f"use a target that serves it: {'; '.join(family.targets())}")
        raise ConversionError(f"model_type '{model_type}' is not served by TensorRT-LLM of release {release}",
                              loc=("llm", "release"), fix=f"set llm.release to one of: {', '.join(family.releases)}")
    return family


def _rope(config: Any) -> tuple[float, dict | None]:
    """(rotary_base, rotary_scaling) from a transformers config (5.x rope_parameters, 4.x keys)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:  # transformers 4.x layout
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    base = float(params.pop("rope_theta", 10000.0))
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type == "default":
        return base, None
    # TensorRT-LLM 0.14 reads rotary_scaling["type"], 1.x also "rope_type"
    # (tensorrt_llm/functional.py RotaryScalingType.from_string callers): both are written.
    return base, {"type": rope_type, "rope_type": rope_type, **params}


def architecture_fields(config: Any) -> dict[str, Any]:
    """The checkpoint config.json fields a TensorRT-LLM build reads, from the source model's
    transformers config (AutoConfig): each must be present and equal in the export."""
    model_type = config.model_type
    heads = config.num_attention_heads
    rotary_base, rotary_scaling = _rope(config)
    fields: dict[str, Any] = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_size": getattr(config, "head_dim", None) or config.hidden_size // heads,
        "hidden_act": config.hidden_act if model_type != "gemma" else _gemma_act(config),
        "norm_epsilon": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": rotary_base,
        "rotary_scaling": rotary_scaling,
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "attn_bias": bool(getattr(config, "attention_bias", model_type == "qwen2")),
        "mlp_bias": bool(getattr(config, "mlp_bias", False)),
    }
    if model_type in ("qwen2", "qwen3"):
        fields["qwen_type"] = model_type
        fields["attn_bias"] = model_type == "qwen2"  # qwen/config.py: qwen3 has none, qwen2 on q/k/v
    if model_type == "qwen3":
        fields["qk_layernorm"] = True
    if model_type == "mistral":
        # Not a TensorRT-LLM checkpoint field: kept for the CPU engine and the engine config's
        # max_attention_window_size (how TensorRT-LLM applies a sliding window at run time).
        fields["sliding_window"] = getattr(config, "sliding_window", None)
    return fields


def _gemma_act(config: Any) -> str:
    # Gemma's MLP is gelu-tanh whatever hidden_act says (transformers GemmaMLP uses
    # hidden_activation); ModelOpt writes gelu_pytorch_tanh.
    return getattr(config, "hidden_activation", None) or "gelu_pytorch_tanh"


def complete(checkpoint_dir: Path, config: Any) -> None:
    """Add the architecture fields ModelOpt's generic export left out (never overwrites one it wrote)."""
    path = checkpoint_dir / "config.json"
    exported = json.loads(path.read_text())
    for name, value in architecture_fields(config).items():
        exported.setdefault(name, value)
    if exported.get("tie_word_embeddings"):
        exported["share_embedding_table"] = exported.get("share_embedding_table", True)
    path.write_text(json.dumps(exported, indent=4) + "\n")


def verify(checkpoint_dir: Path, config: Any) -> None:
    """Fail, naming the field, when the checkpoint's config.json lacks or changes an architecture
    field of the source model (run on every build, cached checkpoints included)."""
    path = checkpoint_dir / "config.json"
    exported = json.loads(path.read_text())
    for name, expected in architecture_fields(config).items():
        if name not in exported:
            raise ConversionError(f"the exported checkpoint has no '{name}' (the source model has {expected!r}); "
                                  "TensorRT-LLM would build with its default", file=path, loc=("source",),
                                  fix="rebuild with the checkpoint cache cleared (TRITONIZE_CACHE), or report the "
                                      "ModelOpt version that drops it")
        if not _same(exported[name], expected):
            raise ConversionError(f"the exported checkpoint has {name} = {exported[name]!r} but the source model "
                                  f"has {expected!r}", file=path, loc=("source",),
                                  fix="rebuild with the checkpoint cache cleared (TRITONIZE_CACHE)")


# -- the HF export (llmapi target) ---------------------------------------------------------------
# Fields of config.json TensorRT-LLM's PyTorch backend builds the model from (through its
# transformers config classes), each compared with the source model's on every build.
HF_ARCHITECTURE_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "hidden_activation",
                        "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings", "attention_bias",
                        "mlp_bias", "sliding_window", "original_max_position_embeddings")


def hf_export_fields(config: Any) -> dict[str, Any]:
    """What the exported config.json must say, read the way TensorRT-LLM 1.2.1 reads it: its
    transformers pin (4.57.3, NVIDIA/TensorRT-LLM v1.2.1 requirements.txt) takes RoPE only from
    the top-level `rope_theta` / `rope_scaling` (and Phi-3's `partial_rotary_factor`), which
    transformers 5 no longer writes (it keeps them in `rope_parameters`)."""
    source = config.to_dict()
    fields = {key: source[key] for key in HF_ARCHITECTURE_KEYS if key in source}
    base, scaling = _rope(config)
    if scaling is not None:
        scaling.pop("partial_rotary_factor", None)
    fields["rope_theta"] = base
    fields["rope_scaling"] = scaling
    partial = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor")
    if partial is not None:
        fields["partial_rotary_factor"] = partial
    return fields


def complete_hf(export_dir: Path, config: Any) -> None:
    """Add the 4.x RoPE keys to an HF export's config.json (never overwrites a key it has)."""
    path = export_dir / "config.json"
    exported = json.loads(path.read_text())
    for name, value in hf_export_fields(config).items():
        exported.setdefault(name, value)
    path.write_text(json.dumps(exported, indent=4) + "\n")


def verify_hf(export_dir: Path, config: Any) -> None:
    """Fail, naming the field, when the HF export's config.json lacks or changes a field the
    llmapi target reads (run on every build, cached exports included)."""
    path = export_dir / "config.json"
    exported = json.loads(path.read_text())
    for name, expected in hf_export_fields(config).items():
        if name not in exported:
            raise ConversionError(f"the exported checkpoint has no '{name}' (the source model has {expected!r}); "
                                  "TensorRT-LLM's transformers would use its default", file=path, loc=("source",),
                                  fix="rebuild with the checkpoint cache cleared (TRITONIZE_CACHE)")
        if not _same(exported[name], expected):
            raise ConversionError(f"the exported checkpoint has {name} = {exported[name]!r} but the source model "
                                  f"has {expected!r}", file=path, loc=("source",),
                                  fix="rebuild with the checkpoint cache cleared (TRITONIZE_CACHE)")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b
