"""Load a TensorRT-LLM Llama checkpoint (as ModelOpt exports it) back into a transformers model
on CPU, so the embedded engine serves what the quantization produced.

FP8 weights are dequantized (fp8 value x weights_scaling_factor); each quantized linear layer
also rounds its input through FP8 with the checkpoint's activation_scaling_factor, as the FP8
GEMM does on the GPU. With kv_cache_quant_algo FP8 the key/value projections' outputs are rounded
through FP8 with kv_cache_scaling_factor (the GPU rounds keys after RoPE; a rotation keeps their
scale, so this stays a close emulation). Plain (unquantized) checkpoints load unchanged.

This module ships inside the repository next to the engine's model.py and imports no tritonize.
"""
import json
import os

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def load_model(hf_dir, checkpoint_dir=None, dtype=torch.float32):
    """A LlamaForCausalLM from hf_dir (config + weights), or, with checkpoint_dir, from the HF
    config in hf_dir and the TRT-LLM checkpoint's rank0 weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if checkpoint_dir is None:
        return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()
    from safetensors.torch import load_file

    config = AutoConfig.from_pretrained(hf_dir)
    with open(os.path.join(checkpoint_dir, "config.json")) as f:
        ckpt_config = json.load(f)
    weights = load_file(os.path.join(checkpoint_dir, "rank0.safetensors"))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    state, act_scales, kv_scales = _to_hf(weights, config, dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    for name, scale in act_scales.items():
        model.get_submodule(name).register_forward_pre_hook(_input_rounding(scale))
    kv_algo = (ckpt_config.get("quantization") or {}).get("kv_cache_quant_algo")
    if kv_algo == "FP8":
        for name, scale in kv_scales.items():
            model.get_submodule(name).register_forward_hook(_output_rounding(scale))
    return model


def _to_hf(weights, config, dtype):
    """TRT-LLM names -> HF Llama names; returns (state_dict, {linear: act scale}, {k/v proj: kv scale})."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    q_rows, kv_rows = heads * head_dim, kv_heads * head_dim

    def weight(prefix):
        w = weights[prefix + ".weight"]
        if w.dtype == torch.float8_e4m3fn:
            w = w.to(torch.float32) * weights[prefix + ".weights_scaling_factor"].to(torch.float32)
        return w.to(dtype)

    state = {"model.embed_tokens.weight": weights["transformer.vocab_embedding.weight"].to(dtype),
             "model.norm.weight": weights["transformer.ln_f.weight"].to(dtype),
             # Tied embeddings may be exported without a separate lm_head.
             "lm_head.weight": weights.get("lm_head.weight", weights["transformer.vocab_embedding.weight"]).to(dtype)}
    act_scales, kv_scales = {}, {}
    for i in range(config.num_hidden_layers):
        src, dst = f"transformer.layers.{i}", f"model.layers.{i}"
        qkv = weight(f"{src}.attention.qkv")
        state[f"{dst}.self_attn.q_proj.weight"] = qkv[:q_rows]
        state[f"{dst}.self_attn.k_proj.weight"] = qkv[q_rows:q_rows + kv_rows]
        state[f"{dst}.self_attn.v_proj.weight"] = qkv[q_rows + kv_rows:]
        # TRT-LLM's GatedMLP: fc is the activated branch (HF gate_proj), gate the linear one (up_proj).
        pairs = {"attention.dense": "self_attn.o_proj", "mlp.fc": "mlp.gate_proj",
                 "mlp.gate": "mlp.up_proj", "mlp.proj": "mlp.down_proj"}
        for trt, hf in pairs.items():
            state[f"{dst}.{hf}.weight"] = weight(f"{src}.{trt}")
        state[f"{dst}.input_layernorm.weight"] = weights[f"{src}.input_layernorm.weight"].to(dtype)
        state[f"{dst}.post_attention_layernorm.weight"] = weights[f"{src}.post_layernorm.weight"].to(dtype)
        linears = {"attention.qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                   **{trt: [hf] for trt, hf in pairs.items()}}
        for trt, hf_names in linears.items():
            key = f"{src}.{trt}.activation_scaling_factor"
            if key in weights:
                for hf in hf_names:
                    act_scales[f"{dst}.{hf}"] = float(weights[key])
        kv_key = f"{src}.attention.kv_cache_scaling_factor"
        if kv_key in weights:
            for hf in ("self_attn.k_proj", "self_attn.v_proj"):
                kv_scales[f"{dst}.{hf}"] = float(weights[kv_key])
    return state, act_scales, kv_scales


def fp8_round(x, scale):
    """Quantize to float8_e4m3fn with a per-tensor scale and back (what an FP8 GEMM input sees)."""
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype) * scale


def _input_rounding(scale):
    def hook(module, args):
        return (fp8_round(args[0], scale),) + tuple(args[1:])
    return hook


def _output_rounding(scale):
    def hook(module, args, output):
        return fp8_round(output, scale)
    return hook
