"""Triton python backend: the `tensorrt_llm_bls` model, one model with the ensemble's text
interface that calls preprocessing -> engine -> postprocessing itself (business logic scripting).

Inputs/outputs: every tensor upstream's tensorrt_llm_bls declares at the release
(repository.bls_config): the ensemble's, routed to the step that owns each exactly as the ensemble
routes it (parameter `routing`, repository.bls_routing), plus the multimodal and draft-model
inputs, which are refused with INVALID_ARGUMENT naming them unless left out or zero.
Decoupled when the engine streams: each request runs on its own thread, so concurrent requests
reach the engine together and it batches them; each engine response is detokenized and sent on
with the engine's other outputs (log probs, token counts) under the client's names.

Parameters: preprocessing_model, engine_model, postprocessing_model (model names), routing (JSON).
An error of a step is answered with that step's code, so a client's mistake found by the
preprocessing or the engine stays 400 / INVALID_ARGUMENT. A client that goes away stops the CPU
engine's generation: the model checks its own request between engine responses and sends the
engine the response's cancel key (back_channel.py; tritonserver 2.51 cannot cancel a BLS request).
"""
import json
import os
import sys
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import back_channel  # noqa: E402  (ships next to this file, from the CPU engine)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.preprocessing = params["preprocessing_model"]
        self.engine = params["engine_model"]
        self.postprocessing = params["postprocessing_model"]
        routing = json.loads(params["routing"])
        self.to_preprocessing = routing["preprocessing"]    # step input -> client input
        self.to_engine = routing["engine"]                  # step input -> client input
        self.preprocessed = routing["preprocessed"]         # preprocessing output -> engine input
        self.to_postprocessing = routing["postprocessing"]  # postprocessing input -> engine output
        self.engine_outputs = routing["engine_outputs"]     # engine output -> client output
        self.routed = set(self.to_preprocessing.values()) | set(self.to_engine.values())
        self.engine_requested = sorted(set(self.to_postprocessing.values()) | set(self.engine_outputs))
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
            for outputs in self._generate(request, decoupled=True):
                sender.send(pb_utils.InferenceResponse(output_tensors=outputs))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # the client must hear about it, not wait forever
            sender.send(pb_utils.InferenceResponse(error=_triton_error(exc)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _answer(self, request):
        try:
            return pb_utils.InferenceResponse(output_tensors=list(self._generate(request, decoupled=False))[-1])
        except Exception as exc:
            return pb_utils.InferenceResponse(error=_triton_error(exc))

    def _step_inputs(self, request, routes):
        inputs = []
        for step_input, name in routes.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs.append(pb_utils.Tensor(step_input, tensor.as_numpy()))
        return inputs

    def _generate(self, request, *, decoupled):
        """Yield the output tensors of each engine response, text_output detokenized."""
        for tensor in request.inputs():
            if tensor.name() not in self.routed and _set(tensor.as_numpy()):
                raise ClientError(f"{tensor.name()} is not supported: this repository builds no multimodal encoder "
                                  "or draft model (leave it out)")
        pre = pb_utils.InferenceRequest(model_name=self.preprocessing,
                                        inputs=self._step_inputs(request, self.to_preprocessing),
                                        requested_output_names=list(self.preprocessed)).exec()
        _raise(pre)
        engine_inputs = self._step_inputs(request, self.to_engine)
        for output, engine_input in self.preprocessed.items():
            engine_inputs.append(pb_utils.Tensor(engine_input, pb_utils.get_output_tensor_by_name(pre, output).as_numpy()))
        # The client's request parameters go on to the engine and postprocessing, as an ensemble's
        # do (back_channel.MULTI_TOKEN_PARAMETER).
        parameters = json.loads(request.parameters() or "{}")
        engine_request = pb_utils.InferenceRequest(model_name=self.engine, inputs=engine_inputs,
                                                   requested_output_names=self.engine_requested,
                                                   parameters=parameters)
        responses = engine_request.exec(decoupled=True) if decoupled else [engine_request.exec()]
        for response in responses:
            _raise(response)
            if decoupled and request.is_cancelled():
                key = pb_utils.get_output_tensor_by_name(response, "cancel_key")
                if key is not None:
                    value = key.as_numpy().reshape(-1)[0]
                    back_channel.request_cancel(value.decode() if isinstance(value, bytes) else str(value))
                raise Cancelled("the request was cancelled")
            if pb_utils.get_output_tensor_by_name(response, "output_ids") is None:  # the engine's empty final response
                continue
            post_inputs = []
            for post_input, engine_output in self.to_postprocessing.items():
                tensor = pb_utils.get_output_tensor_by_name(response, engine_output)
                if tensor is not None:
                    post_inputs.append(pb_utils.Tensor(post_input, tensor.as_numpy()))
            post = pb_utils.InferenceRequest(model_name=self.postprocessing, requested_output_names=["OUTPUT"],
                                             inputs=post_inputs, parameters=parameters).exec()
            _raise(post)
            text = np.asarray(pb_utils.get_output_tensor_by_name(post, "OUTPUT").as_numpy(), dtype=object)
            outputs = [pb_utils.Tensor("text_output", text)]
            for engine_output, name in self.engine_outputs.items():
                tensor = pb_utils.get_output_tensor_by_name(response, engine_output)
                if tensor is not None:
                    outputs.append(pb_utils.Tensor(name, tensor.as_numpy()))
            yield outputs


def _set(array):
    """Whether a client input carries a value other than its default (absent, zero, false, empty)."""
    if array.dtype == np.object_:
        return array.size > 0
    return bool(np.any(array))


class ClientError(ValueError):
    """A request this model cannot honour: answered with INVALID_ARG (HTTP 400)."""


class Cancelled(RuntimeError):
    """The client went away; the engine was told to stop."""


class StepError(RuntimeError):
    """A step model answered with an error: its message and Triton error code."""

    def __init__(self, error):
        super().__init__(error.message())
        self.code = error.code()


def _triton_error(exc):
    if isinstance(exc, StepError):
        return pb_utils.TritonError(str(exc), exc.code)
    if isinstance(exc, ClientError):
        return pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
    if isinstance(exc, Cancelled):
        return pb_utils.TritonError(str(exc), pb_utils.TritonError.CANCELLED)
    return pb_utils.TritonError(str(exc))


def _raise(response):
    if response.has_error():
        raise StepError(response.error())
