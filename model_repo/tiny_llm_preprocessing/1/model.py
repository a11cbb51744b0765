"""Triton python backend: text -> token ids, the `preprocessing` model of the TensorRT-LLM
ensemble (same tensor names as tensorrtllm_backend's inflight_batcher_llm/preprocessing).

Inputs:  QUERY STRING[1], REQUEST_OUTPUT_LEN INT32[1], optional BAD_WORDS_DICT / STOP_WORDS_DICT
         STRING[-1], END_ID / PAD_ID / TOP_K INT32[1], TOP_P / TEMPERATURE FP32[1], RANDOM_SEED UINT64[1].
Outputs: INPUT_ID INT32[-1], REQUEST_INPUT_LEN INT32[1], BAD_WORDS_IDS / STOP_WORDS_IDS
         INT32[2,-1], REQUEST_OUTPUT_LEN INT32[1], OUT_END_ID / OUT_PAD_ID / OUT_TOP_K INT32[1],
         OUT_TOP_P / OUT_TEMPERATURE FP32[1], OUT_RANDOM_SEED UINT64[1] (the sampling values carry
         the spec's defaults where the request gives none; upstream has no such outputs).
Parameters: tokenizer_dir (relative to this version directory, or absolute), add_special_tokens,
default_top_k, default_top_p, default_temperature, default_seed.
The tokenizer is the `tokenizers` library reading tokenizer.json shipped inside the repository.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from tokenizers import Tokenizer

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        tokenizer_dir = os.path.join(version_dir, params["tokenizer_dir"])
        self.tokenizer = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
        self.add_special_tokens = params.get("add_special_tokens", "false").lower() == "true"
        special = _special_tokens(tokenizer_dir)
        self.end_id = self.tokenizer.token_to_id(special["eos_token"])
        pad = special.get("pad_token")
        # Pad falls back to end-of-sequence, as in the upstream preprocessing.
        self.pad_id = self.tokenizer.token_to_id(pad) if pad else self.end_id
        self.sampling = [("TOP_K", "OUT_TOP_K", np.int32, int(params["default_top_k"])),
                         ("TOP_P", "OUT_TOP_P", np.float32, float(params["default_top_p"])),
                         ("TEMPERATURE", "OUT_TEMPERATURE", np.float32, float(params["default_temperature"])),
                         ("RANDOM_SEED", "OUT_RANDOM_SEED", np.uint64, int(params["default_seed"]))]

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        try:
            queries = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
            output_len = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy()
            batch = queries.shape[0]
            ids = [self.tokenizer.encode(_text(q.reshape(-1)[0]), add_special_tokens=self.add_special_tokens).ids
                   for q in queries]
            if any(len(i) == 0 for i in ids):
                raise ValueError("QUERY is empty after tokenization")
            width = max(len(i) for i in ids)
            input_id = np.full((batch, width), self.pad_id, dtype=np.int32)
            for row, tokens in enumerate(ids):
                input_id[row, :len(tokens)] = tokens
            lengths = np.array([[len(i)] for i in ids], dtype=np.int32)
            outputs = [
                pb_utils.Tensor("INPUT_ID", input_id),
                pb_utils.Tensor("REQUEST_INPUT_LEN", lengths),
                pb_utils.Tensor("REQUEST_OUTPUT_LEN", output_len.reshape(batch, 1).astype(np.int32)),
                pb_utils.Tensor("BAD_WORDS_IDS", self._word_lists(request, "BAD_WORDS_DICT", batch)),
                pb_utils.Tensor("STOP_WORDS_IDS", self._word_lists(request, "STOP_WORDS_DICT", batch)),
                pb_utils.Tensor("OUT_END_ID", self._scalar(request, "END_ID", self.end_id, batch)),
                pb_utils.Tensor("OUT_PAD_ID", self._scalar(request, "PAD_ID", self.pad_id, batch)),
            ]
            outputs += [pb_utils.Tensor(out, self._scalar(request, name, default, batch, dtype))
                        for name, out, dtype, default in self.sampling]
            return pb_utils.InferenceResponse(output_tensors=outputs)
        except Exception as exc:  # one bad request must not fail the batch
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocessing: {exc}"))

    def _scalar(self, request, name, default, batch, dtype=np.int32):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return np.full((batch, 1), default, dtype=dtype)
        return tensor.as_numpy().reshape(batch, 1).astype(dtype)

    def _word_lists(self, request, name, batch):
        """TRT-LLM word-list format per request: [2, L], row 0 the token ids of all words
        concatenated, row 1 the end offset of each word, padded with 0 / -1."""
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        rows = []
        for b in range(batch):
            words = [] if tensor is None else [_text(w) for w in tensor.as_numpy()[b].reshape(-1)]
            ids, offsets = [], []
            for word in words:
                if not word:
                    continue
                ids += self.tokenizer.encode(word, add_special_tokens=False).ids
                offsets.append(len(ids))
            rows.append((ids, offsets))
        width = max(1, max(len(ids) for ids, _ in rows))
        out = np.zeros((batch, 2, width), dtype=np.int32)
        out[:, 1, :] = -1
        for b, (ids, offsets) in enumerate(rows):
            out[b, 0, :len(ids)] = ids
            out[b, 1, :len(offsets)] = offsets
        return out


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _special_tokens(tokenizer_dir):
    path = os.path.join(tokenizer_dir, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    return {k: (v["content"] if isinstance(v, dict) else v) for k, v in config.items()
            if k in ("eos_token", "pad_token", "bos_token") and v}
