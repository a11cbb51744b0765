"""Client helpers over tritonclient for what several callers need: one gRPC streaming request
whose responses arrive as they are produced (decoupled models, LLM token streams)."""
from __future__ import annotations

import queue
from typing import Iterator

import numpy as np

from .errors import lazy_import
from .samples import as_bytes


def infer_inputs(module, inputs: dict[str, np.ndarray]) -> list:
    """tritonclient InferInputs (http or grpc module) from numpy arrays; str/bytes become BYTES."""
    utils = lazy_import("tritonclient.utils", purpose="talking to tritonserver", package="tritonclient")
    request = []
    for name, array in inputs.items():
        array = np.asarray(array)
        if array.dtype.kind in "OSU":
            array = as_bytes(array)
        tensor = module.InferInput(name, list(array.shape), utils.np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        request.append(tensor)
    return request


def stream(grpc_url: str, model: str, inputs: dict[str, np.ndarray] | list, *, outputs: list[str] | None = None,
           parameters: dict | None = None, timeout_s: float = 60.0) -> Iterator:
    """Send one request over a gRPC stream and yield each response that carries outputs (a
    tritonclient.grpc InferResult: `.as_numpy(name)`, `.get_output(name).datatype`) until the
    final one. inputs: numpy arrays by name, or ready tritonclient.grpc InferInputs."""
    grpc = lazy_import("tritonclient.grpc", purpose="gRPC streaming", package="tritonclient[grpc]")
    client = grpc.InferenceServerClient(grpc_url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        requested = [grpc.InferRequestedOutput(o) for o in outputs] if outputs else None
        request = infer_inputs(grpc, inputs) if isinstance(inputs, dict) else inputs
        client.async_stream_infer(model, request, outputs=requested, parameters=parameters,
                                  enable_empty_final_response=True)
        count = 0
        while True:
            try:
                result, error = answers.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"{model}: no final response within {timeout_s:g} s ({count} responses so far)") from None
            if error is not None:
                raise error
            response = result.get_response()
            if response.outputs:
                count += 1
                yield result
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                return
    finally:
        client.stop_stream()
        client.close()
