"""Load the llmapi target's checkpoint (a HuggingFace directory as ModelOpt's export_hf_checkpoint
or save_pretrained writes it) into a transformers model on CPU, from that directory alone, the way
TensorRT-LLM 1.2.1's PyTorch backend reads it: its transformers (4.57.3) takes RoPE from the
top-level `rope_theta` / `rope_scaling` keys, so those are what this loader reads too, and the
`rope_parameters` transformers 5 writes are ignored. A key the export lost therefore changes what
is served here exactly as it would on a GPU, and the FP8 error budget measures it.

FP8 weights (float8_e4m3fn, per-tensor `weight_scale`) are dequantized; each quantized linear
layer rounds its input through FP8 with its `input_scale`, as the FP8 GEMM does. With an FP8 KV
cache, `k_scale` / `v_scale` round the key/value projections' outputs (separate k_proj/v_proj;
a fused qkv_proj, Phi-3's, is not emulated, so its KV rounding goes unmeasured). Unquantized exports load unchanged.

Ships next to the CPU engine's model.py and imports no tritonize.
"""
import glob
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trtllm_checkpoint import _input_rounding, _output_rounding  # noqa: E402  (ships next to this file)

# config.json keys that are not architecture (or that this loader derives itself).
_NOT_PASSED = {"rope_parameters", "rope_theta", "rope_scaling", "partial_rotary_factor", "quantization_config",
               "architectures", "transformers_version", "dtype", "torch_dtype", "model_type", "auto_map"}


def hf_config(exported):
    """The transformers config of an exported config.json, RoPE from its 4.x top-level keys."""
    from transformers import AutoConfig

    scaling = dict(exported.get("rope_scaling") or {})
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    rope = {"rope_type": rope_type, "rope_theta": float(exported.get("rope_theta", 10000.0)), **scaling}
    if "partial_rotary_factor" in exported:
        rope["partial_rotary_factor"] = exported["partial_rotary_factor"]
    fields = {k: v for k, v in exported.items() if k not in _NOT_PASSED}
    return AutoConfig.for_model(exported["model_type"], rope_parameters=rope, **fields)


def load_model(export_dir, dtype=torch.float32, config=None):
    """The transformers model of an HF export directory (config.json + *.safetensors).

    config: a transformers config to use instead of the exported one (tests use the source
    model's to check that both give the same model)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    with open(os.path.join(export_dir, "config.json")) as f:
        exported = json.load(f)
    config = config if config is not None else hf_config(exported)
    weights = {}
    for path in sorted(glob.glob(os.path.join(export_dir, "*.safetensors"))):
        weights.update(load_file(path))
    state, input_scales, kv_scales = {}, {}, {}
    for name, tensor in weights.items():
        module, _, leaf = name.rpartition(".")
        if leaf == "weight_scale":
            continue
        if leaf == "input_scale":
            input_scales[module] = float(tensor)
        elif leaf in ("k_scale", "v_scale"):
            # ModelOpt 0.47 writes self_attn.k_proj.k_scale / v_proj.v_scale; a fused
            # qkv_proj's are skipped (rounding its whole output by one scale would be wrong).
            target = module if module.endswith("_proj") else f"{module}.{leaf[0]}_proj"
            if target.endswith(f".{leaf[0]}_proj"):
                kv_scales[target] = float(tensor)
        elif tensor.dtype == torch.float8_e4m3fn:
            state[name] = (tensor.to(torch.float32) * weights[f"{module}.weight_scale"].to(torch.float32)).to(dtype)
        else:
            state[name] = tensor.to(dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")
               and not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    for name, scale in input_scales.items():
        model.get_submodule(name).register_forward_pre_hook(_input_rounding(scale))
    kv_algo = _kv_cache_quant_algo(export_dir)
    if kv_algo == "FP8":
        for name, scale in kv_scales.items():
            model.get_submodule(name).register_forward_hook(_output_rounding(scale))
    return model


def _kv_cache_quant_algo(export_dir):
    path = os.path.join(export_dir, "hf_quant_config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return (json.load(f).get("quantization") or {}).get("kv_cache_quant_algo")
