"""Triton python backend: text -> token ids, the `preprocessing` model of the TensorRT-LLM
ensemble (same tensor names as tensorrtllm_backend's inflight_batcher_llm/preprocessing).

Inputs:  QUERY STRING[1], REQUEST_OUTPUT_LEN INT32[1], optional BAD_WORDS_DICT / STOP_WORDS_DICT
         STRING[-1], END_ID / PAD_ID / TOP_K INT32[1], TOP_P / TEMPERATURE FP32[1], RANDOM_SEED UINT64[1].
Outputs: INPUT_ID INT32[-1], REQUEST_INPUT_LEN INT32[1], BAD_WORDS_IDS / STOP_WORDS_IDS
         INT32[2,-1], REQUEST_OUTPUT_LEN INT32[1], OUT_END_ID / OUT_PAD_ID / OUT_TOP_K INT32[1],
         OUT_TOP_P / OUT_TEMPERATURE FP32[1], OUT_RANDOM_SEED UINT64[1] (the sampling values carry
         the spec's defaults where the request gives none; upstream has no such outputs).
Optional DECODER_QUERY, EMBEDDING_BIAS_WORDS / EMBEDDING_BIAS_WEIGHTS and PROMPT_TABLE_EXTRA_ID
are declared as upstream's are (the ensemble routes them here) and rejected with INVALID_ARG when
a request sets them: tritonize builds decoder-only models without p-tuning or embedding bias.
Parameters: tokenizer_dir (relative to this version directory, or absolute), add_bos_token (prepend
the tokenizer's bos_token; the build decides it from the tokenizer's own config, as transformers
does), default_top_k, default_top_p, default_temperature, default_seed.
The tokenizer is the `tokenizers` library reading tokenizer.json shipped inside the repository.
A request the client got wrong (text that is not UTF-8, a query that tokenizes to nothing, tensors of
the wrong shape) answers 400 / INVALID_ARGUMENT naming the input; the batch's others are answered.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

# Preprocessing input -> the ensemble input that feeds it (named in the error a client sees).
UNSUPPORTED = (("DECODER_QUERY", "decoder_text_input"), ("EMBEDDING_BIAS_WORDS", "embedding_bias_words"),
               ("EMBEDDING_BIAS_WEIGHTS", "embedding_bias_weights"), ("PROMPT_TABLE_EXTRA_ID", "prompt_table_extra_id"))


class TritonPythonModel:
    def initialize(self, args):
        from tokenizers import Tokenizer

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        tokenizer_dir = os.path.join(version_dir, params["tokenizer_dir"])
        self.tokenizer = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
        special = _special_tokens(tokenizer_dir)
        self.bos = []
        if params.get("add_bos_token", "false").lower() == "true":
            self.bos = [self.tokenizer.token_to_id(special["bos_token"])]
        self.end_id = self.tokenizer.token_to_id(special["eos_token"])
        pad = special.get("pad_token")
        # Pad falls back to end-of-sequence, as in the upstream preprocessing.
        self.pad_id = self.tokenizer.token_to_id(pad) if pad else self.end_id
        self.sampling = [("TOP_K", "OUT_TOP_K", np.int32, int(params["default_top_k"])),
                         ("TOP_P", "OUT_TOP_P", np.float32, float(params["default_top_p"])),
                         ("TEMPERATURE", "OUT_TEMPERATURE", np.float32, float(params["default_temperature"])),
                         ("RANDOM_SEED", "OUT_RANDOM_SEED", np.uint64, int(params["default_seed"]))]
        # The tensors of inputs a request leaves out, by (input, batch): built once, never
        # written (a pb_utils.Tensor reads its array when the response is sent).
        self.absent = {}

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        # One pass over the request's tensors (pb_utils.get_input_tensor_by_name walks them once per name).
        tensors = {tensor.name(): tensor for tensor in request.inputs()}
        for name, client_name in UNSUPPORTED:
            if name in tensors:
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"{client_name} is not supported by this repository's preprocessing (leave it out)",
                    pb_utils.TritonError.INVALID_ARG))
        try:
            queries = tensors["QUERY"].as_numpy()
            output_len = tensors["REQUEST_OUTPUT_LEN"].as_numpy()
            batch = queries.shape[0]
            # BOS is added here, not by the tokenizer.json post-processor, so the prompt is what
            # the build decided (and measured) whatever that post-processor does.
            try:
                texts = [_text(q.reshape(-1)[0]) for q in queries]
            except UnicodeDecodeError:
                raise ClientError("input QUERY is not UTF-8 text") from None
            ids = [self.bos + self.tokenizer.encode(text, add_special_tokens=False).ids for text in texts]
            if any(len(i) == 0 for i in ids):
                raise ClientError("input QUERY is empty after tokenization")
            width = max(len(i) for i in ids)
            input_id = np.full((batch, width), self.pad_id, dtype=np.int32)
            for row, tokens in enumerate(ids):
                input_id[row, :len(tokens)] = tokens
            lengths = np.array([[len(i)] for i in ids], dtype=np.int32)
            outputs = [
                pb_utils.Tensor("INPUT_ID", input_id),
                pb_utils.Tensor("REQUEST_INPUT_LEN", lengths),
                pb_utils.Tensor("REQUEST_OUTPUT_LEN", output_len.reshape(batch, 1).astype(np.int32)),
                pb_utils.Tensor("BAD_WORDS_IDS", self._word_lists(tensors, "BAD_WORDS_DICT", batch)),
                pb_utils.Tensor("STOP_WORDS_IDS", self._word_lists(tensors, "STOP_WORDS_DICT", batch)),
                pb_utils.Tensor("OUT_END_ID", self._scalar(tensors, "END_ID", self.end_id, batch)),
                pb_utils.Tensor("OUT_PAD_ID", self._scalar(tensors, "PAD_ID", self.pad_id, batch)),
            ]
            outputs += [pb_utils.Tensor(out, self._scalar(tensors, name, default, batch, dtype))
                        for name, out, dtype, default in self.sampling]
            return pb_utils.InferenceResponse(output_tensors=outputs)
        except ClientError as exc:  # one bad request must not fail the batch
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocessing: {exc}",
                                                                         pb_utils.TritonError.INVALID_ARG))
        except Exception as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocessing: {exc}"))

    def _scalar(self, tensors, name, default, batch, dtype=np.int32):
        tensor = tensors.get(name)
        if tensor is None:
            array = self.absent.get((name, batch))
            if array is None:
                array = self.absent[(name, batch)] = np.full((batch, 1), default, dtype=dtype)
            return array
        value = tensor.as_numpy()
        if value.size != batch:
            raise ClientError(f"input {name} holds {value.size} values for {batch} queries; send one per query")
        return value.reshape(batch, 1).astype(dtype)

    def _word_lists(self, tensors, name, batch):
        """TRT-LLM word-list format per request: [2, L], row 0 the token ids of all words
        concatenated, row 1 the end offset of each word, padded with 0 / -1."""
        tensor = tensors.get(name)
        if tensor is None and (name, batch) in self.absent:
            return self.absent[(name, batch)]
        rows = []
        for b in range(batch):
            try:
                words = [] if tensor is None else [_text(w) for w in tensor.as_numpy()[b].reshape(-1)]
            except (UnicodeDecodeError, IndexError):
                raise ClientError(f"input {name} must hold UTF-8 words for each of the {batch} queries") from None
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
        if tensor is None:
            self.absent[(name, batch)] = out
        return out


class ClientError(ValueError):
    """The request is malformed: answered 400 / INVALID_ARGUMENT."""


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _special_tokens(tokenizer_dir):
    path = os.path.join(tokenizer_dir, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    return {k: (v["content"] if isinstance(v, dict) else v) for k, v in config.items()
            if k in ("eos_token", "pad_token", "bos_token") and v}
