"""Triton python backend: text -> token ids, the first step of a HuggingFace encoder ensemble.

Input:  text STRING[1] (UTF-8).
Output: input_ids, attention_mask INT64[-1]: every text truncated or padded to the encoder's
        max_length, so the encoder's dynamic batcher can join requests (Triton batches requests of
        equal shapes).
Parameters: tokenizer_dir (tokenizer.json inside, relative to this version directory). The
tokenizer is the `tokenizers` library reading the fast tokenizer that transformers' AutoTokenizer
wraps, with the truncation and padding (length, side, pad token) that tritonize's build set in
its tokenizer.json and verified against transformers: the step adds none of its own.
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
        path = os.path.join(version_dir, params["tokenizer_dir"], "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(path)
        if self.tokenizer.padding is None or self.tokenizer.truncation is None:
            raise ValueError(f"{path} sets no padding or truncation: build the repository again with tritonize")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                texts = [_text(value) for value in pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)]
            except UnicodeDecodeError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"text is not UTF-8: {exc}", pb_utils.TritonError.INVALID_ARG)))
                continue
            encodings = self.tokenizer.encode_batch(texts)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("input_ids", ids),
                                                         pb_utils.Tensor("attention_mask", mask)]))
        return responses


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
