"""Triton python backend: the `tensorrt_llm_bls` model, one model with the ensemble's text
interface that calls preprocessing -> engine -> postprocessing itself (business logic scripting).

Inputs/outputs: as the ensemble (text_input STRING[1], max_tokens INT32[1], optional bad_words,
stop_words, end_id, pad_id, top_k, top_p, temperature, random_seed, stream -> text_output).
Decoupled when the engine streams: each request runs on its own thread, so concurrent requests
reach the engine together and it batches them; each engine response is detokenized and sent on.

Parameters: preprocessing_model, engine_model, postprocessing_model (model names).
"""
import json
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

# ensemble input -> (preprocessing input) or (engine input)
TO_PREPROCESSING = {"text_input": "QUERY", "max_tokens": "REQUEST_OUTPUT_LEN", "bad_words": "BAD_WORDS_DICT",
                    "stop_words": "STOP_WORDS_DICT", "end_id": "END_ID", "pad_id": "PAD_ID", "top_k": "TOP_K",
                    "top_p": "TOP_P", "temperature": "TEMPERATURE", "random_seed": "RANDOM_SEED"}
TO_ENGINE = {"stream": "streaming"}
# preprocessing output -> engine input (sampling values carry the spec's defaults)
PREPROCESSED = {"INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths",
                "REQUEST_OUTPUT_LEN": "request_output_len", "OUT_END_ID": "end_id", "OUT_PAD_ID": "pad_id",
                "STOP_WORDS_IDS": "stop_words_list", "BAD_WORDS_IDS": "bad_words_list",
                "OUT_TOP_K": "runtime_top_k", "OUT_TOP_P": "runtime_top_p", "OUT_TEMPERATURE": "temperature",
                "OUT_RANDOM_SEED": "random_seed"}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.preprocessing = params["preprocessing_model"]
        self.engine = params["engine_model"]
        self.postprocessing = params["postprocessing_model"]
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.threads = []

    def execute(self, requests):
        if not self.decoupled:
            return [self._answer(request) for request in requests]
        self.threads = [t for t in self.threads if t.is_alive()]
        for request in requests:
            thread = threading.Thread(target=self._stream, args=(request,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return None

    def finalize(self):
        for thread in self.threads:
            thread.join(timeout=10)

    def _stream(self, request):
        sender = request.get_response_sender()
        try:
            for text in self._generate(request, decoupled=True):
                sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("text_output", text)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # the client must hear about it, not wait forever
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _answer(self, request):
        try:
            texts = list(self._generate(request, decoupled=False))
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("text_output", texts[-1])])
        except Exception as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))

    def _generate(self, request, *, decoupled):
        """Yield text_output arrays, one per engine response."""
        pre_inputs, engine_inputs = [], []
        for name, target in TO_PREPROCESSING.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                pre_inputs.append(pb_utils.Tensor(target, tensor.as_numpy()))
        for name, target in TO_ENGINE.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                engine_inputs.append(pb_utils.Tensor(target, tensor.as_numpy()))
        pre = pb_utils.InferenceRequest(model_name=self.preprocessing, inputs=pre_inputs,
                                        requested_output_names=list(PREPROCESSED)).exec()
        _raise(pre)
        for name, target in PREPROCESSED.items():
            engine_inputs.append(pb_utils.Tensor(target, pb_utils.get_output_tensor_by_name(pre, name).as_numpy()))
        engine_request = pb_utils.InferenceRequest(model_name=self.engine, inputs=engine_inputs,
                                                   requested_output_names=["output_ids", "sequence_length"])
        responses = engine_request.exec(decoupled=True) if decoupled else [engine_request.exec()]
        for response in responses:
            _raise(response)
            output_ids = pb_utils.get_output_tensor_by_name(response, "output_ids")
            if output_ids is None:  # the engine's empty final response
                continue
            lengths = pb_utils.get_output_tensor_by_name(response, "sequence_length")
            post = pb_utils.InferenceRequest(
                model_name=self.postprocessing, requested_output_names=["OUTPUT"],
                inputs=[pb_utils.Tensor("TOKENS_BATCH", output_ids.as_numpy()),
                        pb_utils.Tensor("SEQUENCE_LENGTH", lengths.as_numpy())]).exec()
            _raise(post)
            yield np.asarray(pb_utils.get_output_tensor_by_name(post, "OUTPUT").as_numpy(), dtype=object)


def _raise(response):
    if response.has_error():
        raise RuntimeError(response.error().message())
