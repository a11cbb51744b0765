"""Tiny models of each architecture family the LLM path serves, created offline: a transformers
config of that family (2 layers, hidden 64), trained for a few seconds on the built-in corpus so
its greedy choices are decisive, and a tokenizer trained locally like the family's own:

    llama3   Llama 3.x: rope_theta 500000 with llama3 scaling, tied embeddings (3.2), byte-level
             BPE with a BOS post-processor
    mistral  Mistral: sliding window, SentencePiece-style (Metaspace + byte fallback) with BOS
    qwen2    Qwen2/2.5: q/k/v biases, byte-level BPE without BOS
    qwen3    Qwen3: q/k RMSNorm, no biases, byte-level BPE without BOS
    gemma    Gemma: zero-centred norms, scaled embeddings, gelu-tanh, tied, SentencePiece with BOS
    phi3     Phi-3: fused qkv_proj and gate_up_proj, SentencePiece (Llama 2's) with BOS

    python examples/tiny_llm/families.py FAMILY OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

FAMILIES = ("llama3", "mistral", "qwen2", "qwen3", "gemma", "phi3")
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]
SENTENCEPIECE = {"mistral", "gemma", "phi3"}
WITH_BOS = {"llama3", "mistral", "gemma", "phi3"}


def create(family: str, out_dir: str | Path, *, seed: int = 0, train_steps: int = 120) -> Path:
    """Write a HuggingFace model dir (config, safetensors, tokenizer) of the family to out_dir."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    import torch
    import transformers

    from tritonize.llm.corpus import CORPUS

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_model import _train

    torch.manual_seed(seed)
    raw = sentencepiece_tokenizer() if family in SENTENCEPIECE else byte_level_tokenizer()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<s>",
                                                     eos_token="</s>", clean_up_tokenization_spaces=False)
    ids = {name: raw.token_to_id(name) for name in SPECIAL_TOKENS}
    common: dict[str, Any] = dict(vocab_size=raw.get_vocab_size(), hidden_size=64, intermediate_size=192,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
                                  eos_token_id=ids["</s>"])
    config = {
        "llama3": lambda: transformers.LlamaConfig(
            **common, tie_word_embeddings=True,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
        "mistral": lambda: transformers.MistralConfig(**common, sliding_window=32, tie_word_embeddings=False),
        "qwen2": lambda: transformers.Qwen2Config(**common, tie_word_embeddings=False),
        "qwen3": lambda: transformers.Qwen3Config(**common, head_dim=16, tie_word_embeddings=False),
        "gemma": lambda: transformers.GemmaConfig(**common, head_dim=16),
        "phi3": lambda: transformers.Phi3Config(**common, tie_word_embeddings=False),
    }[family]()
    model = transformers.AutoModelForCausalLM.from_config(config)
    prefix = [ids["<s>"]] if family in WITH_BOS else []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread than on contended ones
    try:
        _train(model, prefix + raw.encode(CORPUS).ids, ids["</s>"], steps=train_steps, seed=seed)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    transformers.utils.logging.disable_progress_bar()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if family in WITH_BOS:
        from tokenizers import processors

        raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", ids["<s>"])])
        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<s>",
                                                         eos_token="</s>", clean_up_tokenization_spaces=False)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def byte_level_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tritonize.llm.corpus import corpus_lines

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus_lines(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return bpe


def sentencepiece_tokenizer(vocab_size: int = 512):
    """A Llama-2/Mistral-style tokenizer: Metaspace pieces ("▁word"), BPE, and byte fallback
    (<0xNN> tokens) for characters outside the vocabulary, so non-ASCII text spans tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tritonize.llm.corpus import corpus_lines

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trained.train_from_iterator(corpus_lines(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + bytes_, show_progress=False))
    vocab = trained.get_vocab()
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in __import__("json").loads(trained.to_str())["model"]["merges"]]
    spm = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True))
    spm.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    # Llama 2's tokenizer.json decoder: pieces back to text, bytes to characters, and the space
    # the first piece carries stripped (which is why pieces decoded one by one lose their spaces).
    spm.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    spm.add_special_tokens(SPECIAL_TOKENS)
    return spm


if __name__ == "__main__":
    print(create(sys.argv[1], sys.argv[2]))
