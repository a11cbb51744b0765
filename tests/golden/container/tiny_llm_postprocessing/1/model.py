"""Triton python backend: token ids -> text, the `postprocessing` model of the TensorRT-LLM
ensemble (same tensor names as tensorrtllm_backend's inflight_batcher_llm/postprocessing).

Inputs:  TOKENS_BATCH INT32[-1,-1] (beams x tokens), SEQUENCE_LENGTH INT32[-1] (per beam).
Outputs: OUTPUT STRING[-1] (one text per beam).
Streaming responses carry only the new tokens, so each piece is decoded on its own; the tokenizer
is byte-level BPE, whose pieces concatenate to the decoded whole.
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
        self.skip_special_tokens = params.get("skip_special_tokens", "true").lower() == "true"

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
            texts = np.empty(lengths.shape, dtype=object)
            for index in np.ndindex(*lengths.shape):
                ids = tokens[index][: int(lengths[index])].tolist()
                texts[index] = self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens).encode("utf-8")
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", texts)]))
        return responses
