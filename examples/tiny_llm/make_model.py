"""Create the tiny example LLM offline: a 2-layer Llama trained for a few seconds on a built-in
corpus, with a byte-level BPE tokenizer trained locally. Deterministic for a given seed.

    python -m examples.tiny_llm.make_model [OUT_DIR]     (default: examples/tiny_llm/model)

It is trained briefly, not left at random init, so its greedy choices are decisive (clear gaps
between the top logits): that keeps greedy text stable under batching/padding and makes the FP8
next-token agreement a meaningful figure.
"""
from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent / "model"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]
# A plain role-prefixed chat format, so /v1/chat/completions works on the demo (the model was not
# trained on chats: it continues the text it is given).
CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def create(out_dir: str | Path = DEFAULT_DIR, *, seed: int = 0, vocab_size: int = 512,
           train_steps: int = 300, force: bool = False) -> Path:
    """Write a HuggingFace model dir (config, safetensors, tokenizer) to out_dir; returns it.

    Skips the work when out_dir already holds a model, unless force."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer.json").is_file() and not force:
        return out_dir
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tritonize.llm.corpus import CORPUS, corpus_lines

    torch.manual_seed(seed)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus_lines(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", clean_up_tokenization_spaces=False,
                                        chat_template=CHAT_TEMPLATE)

    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=192,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread than on contended ones
    try:
        _train(model, bpe.encode(CORPUS).ids, tokenizer.eos_token_id, steps=train_steps, seed=seed)
    finally:
        torch.set_num_threads(threads)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a build's output is tritonize's, not a shard-writing bar
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _train(model, ids: list[int], eos_id: int, *, steps: int, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    data = torch.tensor(ids + [eos_id])
    seq_len, batch = 48, 16
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
        chunk = torch.stack([data[s:s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=chunk, labels=chunk).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    target = create(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DIR)
    print(target)
