"""The frontend's one connection to Triton: a tritonclient gRPC aio client (one channel, HTTP/2
streams multiplexed on it), one bidirectional ModelStreamInfer stream per generation."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np

from ..optional import optional
from .models import LlmModel

grpc_aio = optional("tritonclient.grpc.aio", purpose="the OpenAI frontend's Triton client", package="tritonclient")

# Triton error texts that mean "come back later" (queue full, model not ready), answered 503.
BUSY_MARKERS = ("exceeds maximum queue size", "unavailable", "is not ready")


class BackendError(Exception):
    def __init__(self, message: str, busy: bool = False):
        super().__init__(message)
        self.busy = busy


class TritonBackend:
    def __init__(self, grpc_url: str):
        self.grpc_url = grpc_url
        self._client = None

    @property
    def client(self):
        if self._client is None:  # created on the event loop that uses it
            self._client = grpc_aio.InferenceServerClient(self.grpc_url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _inputs(self, model: LlmModel, prompt: str, max_tokens: int, extra: dict[str, np.ndarray]) -> list:
        arrays: dict[str, np.ndarray] = {
            "text_input": np.array([[prompt.encode()]], dtype=np.object_),
            "max_tokens": np.array([[max_tokens]], dtype=np.int32),
            **extra,
        }
        if model.decoupled:
            arrays["stream"] = np.array([[True]], dtype=np.bool_)
        inputs = []
        for name, array in arrays.items():
            datatype = "BYTES" if array.dtype == np.object_ else {
                np.dtype(np.int32): "INT32", np.dtype(np.uint64): "UINT64", np.dtype(np.float32): "FP32",
                np.dtype(np.bool_): "BOOL"}[array.dtype]
            tensor = grpc_aio.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    async def generate(self, model: LlmModel, prompt: str, max_tokens: int,
                       extra: dict[str, np.ndarray]) -> AsyncGenerator[str, None]:
        """The text of the ensemble's responses in order (the new tokens, detokenized by the
        ensemble). Closing the iterator early (a client that went away,
        a stop string) cancels the gRPC call, and Triton cancels the request in the engine."""
        inputs = self._inputs(model, prompt, max_tokens, extra)
        request: dict[str, Any] = {"model_name": model.name, "inputs": inputs,
                   "outputs": [grpc_aio.InferRequestedOutput("text_output")]}
        if model.decoupled:
            request["parameters"] = {"triton_enable_empty_final_response": True}

        async def requests():
            yield request

        responses = self.client.stream_infer(requests())
        finished = False
        try:
            async for result, error in responses:
                if error is not None:
                    message = str(error)
                    raise BackendError(message, busy=any(m in message.lower() for m in BUSY_MARKERS))
                response = result.get_response()
                text = _first_text(response)
                if text:
                    yield text
                final = response.parameters.get("triton_final_response")
                if not model.decoupled or (final is not None and final.bool_param):
                    finished = True
                    return
            finished = True
        except Exception as exc:
            if isinstance(exc, BackendError):
                raise
            if type(exc).__name__ == "AioRpcError" or "grpc" in type(exc).__module__:
                raise BackendError(f"Triton gRPC: {exc}", busy="UNAVAILABLE" in str(exc)) from exc
            raise
        finally:
            if not finished:
                with contextlib.suppress(Exception):
                    responses.cancel()


def _first_text(response: Any) -> str:
    """text_output[0] of a ModelInferResponse, read from its raw bytes: a BYTES tensor is each
    element as a 4-byte little-endian length and the bytes (the KServe gRPC protocol's
    raw_output_contents, as tritonclient.utils.deserialize_bytes_tensor reads it), and the
    ensemble answers one text per response. This skips building tritonclient's numpy object
    array for every token."""
    for index, output in enumerate(response.outputs):
        if output.name == "text_output":
            if index < len(response.raw_output_contents):
                raw = response.raw_output_contents[index]
                if len(raw) < 4:
                    return ""
                length = int.from_bytes(raw[:4], "little")
                return raw[4:4 + length].decode("utf-8", "replace")
            contents = output.contents.bytes_contents  # a server that answers without raw contents
            return contents[0].decode("utf-8", "replace") if contents else ""
    return ""
