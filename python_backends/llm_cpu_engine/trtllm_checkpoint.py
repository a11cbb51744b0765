"""Load a TensorRT-LLM checkpoint (as ModelOpt exports it) back into a transformers model on
CPU, so the embedded engine serves what the quantization produced, from the checkpoint alone:
config.json (the architecture fields TensorRT-LLM reads: rotary_base, rotary_scaling, head_size,
attn_bias, qwen_type, qk_layernorm, tie_word_embeddings...) and rank0.safetensors. The source
HuggingFace config is never read, so a field the export lost changes what is served here exactly
as it would change a GPU engine, and the FP8 error budget measures it.

FP8 weights are dequantized (fp8 value x weights_scaling_factor); each quantized linear layer
also rounds its input through FP8 with the checkpoint's activation_scaling_factor, as the FP8
GEMM does on the GPU. With kv_cache_quant_algo FP8 the key/value projections' outputs are rounded
through FP8 with kv_cache_scaling_factor (the GPU rounds keys after RoPE; a rotation keeps their
scale, so this stays a close emulation). Unquantized checkpoints (mode none) load unchanged.

Families (TensorRT-LLM architecture / qwen_type -> transformers class): LlamaForCausalLM (Llama,
and Mistral with sliding_window), QWenForCausalLM qwen2 / qwen3, GemmaForCausalLM.

This module ships inside the repository next to the engine's model.py and imports no tritonize.
"""
import json
import os

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def load_model(checkpoint_dir, dtype=torch.float32, config=None):
    """The transformers model of a TRT-LLM checkpoint directory (config.json + rank0.safetensors).

    config: a transformers config to use instead of the one derived from the checkpoint (tests
    use the source model's to check that both give the same model)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    with open(os.path.join(checkpoint_dir, "config.json")) as f:
        ckpt_config = json.load(f)
    config = config if config is not None else hf_config(ckpt_config)
    weights = load_file(os.path.join(checkpoint_dir, "rank0.safetensors"))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    state, act_scales, kv_scales = _to_hf(weights, config, dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")
               and not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    for name, scale in act_scales.items():
        model.get_submodule(name).register_forward_pre_hook(_input_rounding(scale))
    kv_algo = (ckpt_config.get("quantization") or {}).get("kv_cache_quant_algo")
    if kv_algo == "FP8":
        for name, scale in kv_scales.items():
            model.get_submodule(name).register_forward_hook(_output_rounding(scale))
    return model


def model_type(ckpt_config):
    """The transformers model_type a TRT-LLM checkpoint config describes."""
    architecture = ckpt_config["architecture"]
    if architecture in ("QWenForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        return ckpt_config.get("qwen_type") or "qwen2"
    if architecture == "GemmaForCausalLM":
        return "gemma"
    if architecture in ("LlamaForCausalLM", "MistralForCausalLM"):
        return "mistral" if ckpt_config.get("sliding_window") else "llama"
    raise ValueError(f"checkpoint architecture {architecture} is not supported by the CPU engine")


def hf_config(ckpt_config):
    """The transformers config equivalent to a TRT-LLM checkpoint config (the fields TRT-LLM reads)."""
    from transformers import AutoConfig

    kind = model_type(ckpt_config)
    scaling = dict(ckpt_config.get("rotary_scaling") or {})
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    rope = {"rope_type": rope_type, "rope_theta": float(ckpt_config.get("rotary_base", 10000.0)), **scaling}
    tied = bool(ckpt_config.get("tie_word_embeddings", ckpt_config.get("share_embedding_table", False)))
    fields = dict(
        vocab_size=ckpt_config["vocab_size"], hidden_size=ckpt_config["hidden_size"],
        intermediate_size=ckpt_config["intermediate_size"], num_hidden_layers=ckpt_config["num_hidden_layers"],
        num_attention_heads=ckpt_config["num_attention_heads"],
        num_key_value_heads=ckpt_config.get("num_key_value_heads") or ckpt_config["num_attention_heads"],
        head_dim=ckpt_config["head_size"], rms_norm_eps=ckpt_config["norm_epsilon"],
        max_position_embeddings=ckpt_config["max_position_embeddings"], rope_parameters=rope,
        tie_word_embeddings=tied, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    if kind == "gemma":
        fields["hidden_activation"] = ckpt_config["hidden_act"]
    else:
        fields["hidden_act"] = ckpt_config["hidden_act"]
    if kind in ("llama",):
        fields.update(attention_bias=bool(ckpt_config.get("attn_bias", False)),
                      mlp_bias=bool(ckpt_config.get("mlp_bias", False)))
    if kind == "mistral":
        fields["sliding_window"] = ckpt_config["sliding_window"]
    if kind == "qwen3" and not ckpt_config.get("qk_layernorm"):
        raise ValueError("a qwen3 checkpoint needs qk_layernorm")
    return AutoConfig.for_model(kind, **fields)


def _to_hf(weights, config, dtype):
    """TRT-LLM names -> HF names; returns (state_dict, {linear: act scale}, {k/v proj: kv scale})."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    q_rows, kv_rows = heads * head_dim, kv_heads * head_dim
    # ModelOpt writes Gemma's zero-centred RMSNorm weights as 1 + w (TRT-LLM's RmsNorm multiplies
    # by the weight); transformers' GemmaRMSNorm adds the 1 itself.
    norm_offset = 1.0 if config.model_type == "gemma" else 0.0

    def weight(prefix):
        w = weights[prefix + ".weight"]
        if w.dtype == torch.float8_e4m3fn:
            w = w.to(torch.float32) * weights[prefix + ".weights_scaling_factor"].to(torch.float32)
        return w.to(dtype)

    def norm(name):
        return (weights[name].to(torch.float32) - norm_offset).to(dtype)

    state = {"model.embed_tokens.weight": weights["transformer.vocab_embedding.weight"].to(dtype),
             "model.norm.weight": norm("transformer.ln_f.weight")}
    if "lm_head.weight" in weights:  # tied embeddings are exported without a separate lm_head
        state["lm_head.weight"] = weights["lm_head.weight"].to(dtype)
    elif not config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    act_scales, kv_scales = {}, {}
    for i in range(config.num_hidden_layers):
        src, dst = f"transformer.layers.{i}", f"model.layers.{i}"
        state.update(_attention(weights, weight(f"{src}.attention.qkv"), src, dst, q_rows, kv_rows, dtype))
        # TRT-LLM's GatedMLP: fc is the activated branch (HF gate_proj), gate the linear one (up_proj).
        pairs = {"attention.dense": "self_attn.o_proj", "mlp.fc": "mlp.gate_proj",
                 "mlp.gate": "mlp.up_proj", "mlp.proj": "mlp.down_proj"}
        for trt, hf in pairs.items():
            state[f"{dst}.{hf}.weight"] = weight(f"{src}.{trt}")
            if f"{src}.{trt}.bias" in weights:
                state[f"{dst}.{hf}.bias"] = weights[f"{src}.{trt}.bias"].to(dtype)
        state[f"{dst}.input_layernorm.weight"] = norm(f"{src}.input_layernorm.weight")
        state[f"{dst}.post_attention_layernorm.weight"] = norm(f"{src}.post_layernorm.weight")
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


def _attention(weights, qkv, src, dst, q_rows, kv_rows, dtype):
    """One layer's fused qkv (weight, Qwen2's bias) split into q/k/v, and Qwen3's q/k norms."""
    state = {f"{dst}.self_attn.q_proj.weight": qkv[:q_rows],
             f"{dst}.self_attn.k_proj.weight": qkv[q_rows:q_rows + kv_rows],
             f"{dst}.self_attn.v_proj.weight": qkv[q_rows + kv_rows:]}
    if f"{src}.attention.qkv.bias" in weights:
        bias = weights[f"{src}.attention.qkv.bias"].to(dtype)
        state[f"{dst}.self_attn.q_proj.bias"] = bias[:q_rows]
        state[f"{dst}.self_attn.k_proj.bias"] = bias[q_rows:q_rows + kv_rows]
        state[f"{dst}.self_attn.v_proj.bias"] = bias[q_rows + kv_rows:]
    for trt, hf in (("q_layernorm", "q_norm"), ("k_layernorm", "k_norm")):
        if f"{src}.attention.{trt}.weight" in weights:
            state[f"{dst}.self_attn.{hf}.weight"] = weights[f"{src}.attention.{trt}.weight"].to(dtype)
    return state


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
