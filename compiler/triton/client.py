"""The one client over tritonclient that tritonize talks to a server with (`check`, `perf`, `tune`,
the demo): HTTP and gRPC clients with numpy in and out (`connect`), and one gRPC streaming request
whose responses arrive as they are produced (decoupled models, LLM token streams).

Manifest sample tensors (`manifest.TensorSample.to_numpy`) become requests with their
`wire_datatype`.
"""
from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..optional import optional
from ..samples import as_bytes

if TYPE_CHECKING:
    pass

http = optional("tritonclient.http", purpose="talking to tritonserver over HTTP", package="tritonclient[http]")
grpc = optional("tritonclient.grpc", purpose="talking to tritonserver over gRPC", package="tritonclient[grpc]")
utils = optional("tritonclient.utils", purpose="talking to tritonserver", package="tritonclient")

PROTOCOLS = ("http", "grpc")


def server_exception() -> type[Exception]:
    """tritonclient's InferenceServerException (the server answered with an error), for `except`."""
    return utils.InferenceServerException


def wire_datatype(datatype: str) -> str:
    """Manifest/config spelling (STRING, TYPE_FP32) -> the inference protocol's (BYTES, FP32)."""
    datatype = datatype.removeprefix("TYPE_")
    return "BYTES" if datatype == "STRING" else datatype


def infer_inputs(module, inputs: dict[str, np.ndarray], datatypes: dict[str, str] | None = None) -> list:
    """tritonclient InferInputs (http or grpc module) from numpy arrays; str/bytes become BYTES.

    datatypes (wire spelling, by input name) override the one numpy's dtype implies, e.g. BF16
    values carried as float32."""
    request = []
    for name, array in inputs.items():
        array = np.asarray(array)
        datatype = (datatypes or {}).get(name)
        if array.dtype.kind in "OSU" or datatype == "BYTES":
            array = as_bytes(array)
        tensor = module.InferInput(name, list(array.shape), datatype or utils.np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        request.append(tensor)
    return request


def stream(grpc_url: str, model: str, inputs: dict[str, np.ndarray] | list, *, outputs: list[str] | None = None,
           parameters: dict | None = None, timeout_s: float = 60.0) -> Iterator:
    """Send one request over a gRPC stream and yield each response that carries outputs (a
    tritonclient.grpc InferResult: `.as_numpy(name)`, `.get_output(name).datatype`) until the
    final one. inputs: numpy arrays by name, or ready tritonclient.grpc InferInputs."""
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


class Client:
    """The part of tritonclient's HTTP and gRPC clients tritonize uses, with numpy in and out.

    `infer` and `stream` return {output name: (wire datatype, numpy array)} for the outputs the
    server sent."""

    protocol: str
    display_name: str
    _module: Any

    def __init__(self, url: str, timeout_s: float = 60.0):
        self.url, self.timeout_s = url, timeout_s
        self._client: Any = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def is_server_live(self) -> bool:
        return self._client.is_server_live()

    def is_model_ready(self, name: str) -> bool:
        return self._client.is_model_ready(name)

    def load_model(self, name: str, headers: dict[str, str] | None = None) -> None:
        """Load (or reload) a model on a server in explicit model-control mode; headers carry the
        key of a server whose model-repository API is restricted."""
        self._client.load_model(name, headers=headers)

    def server_version(self) -> str:
        raise NotImplementedError

    def output_metadata(self, name: str) -> list[dict]:
        raise NotImplementedError

    def repository_index(self) -> list[dict]:
        """[{'name', 'version', 'state', 'reason'}, ...] for every model the server knows."""
        raise NotImplementedError

    def infer(self, name: str, inputs: dict[str, np.ndarray], outputs: list[str], parameters: dict | None = None,
              datatypes: dict[str, str] | None = None) -> dict[str, tuple[str, np.ndarray]]:
        raise NotImplementedError


class HttpClient(Client):
    protocol, display_name = "http", "HTTP"

    def __init__(self, url: str, timeout_s: float = 60.0):
        super().__init__(url, timeout_s)
        self._module = http
        self._client = http.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)

    def server_version(self) -> str:
        return self._client.get_server_metadata()["version"]

    def output_metadata(self, name: str) -> list[dict]:
        return self._client.get_model_metadata(name)["outputs"]

    def repository_index(self) -> list[dict]:
        return self._client.get_model_repository_index()

    def infer(self, name: str, inputs: dict[str, np.ndarray], outputs: list[str], parameters: dict | None = None,
              datatypes: dict[str, str] | None = None) -> dict[str, tuple[str, np.ndarray]]:
        result = self._client.infer(name, infer_inputs(http, inputs, datatypes), parameters=parameters,
                                    outputs=[http.InferRequestedOutput(o) for o in outputs])
        return {o: (result.get_output(o)["datatype"], result.as_numpy(o))
                for o in outputs if result.get_output(o) is not None}


class GrpcClient(Client):
    protocol, display_name = "grpc", "gRPC"

    def __init__(self, url: str, timeout_s: float = 60.0):
        super().__init__(url, timeout_s)
        self._module = grpc
        self._client = grpc.InferenceServerClient(url)

    def server_version(self) -> str:
        return self._client.get_server_metadata().version

    def output_metadata(self, name: str) -> list[dict]:
        return self._client.get_model_metadata(name, as_json=True)["outputs"]

    def repository_index(self) -> list[dict]:
        return self._client.get_model_repository_index(as_json=True).get("models", [])

    def infer(self, name: str, inputs: dict[str, np.ndarray], outputs: list[str], parameters: dict | None = None,
              datatypes: dict[str, str] | None = None) -> dict[str, tuple[str, np.ndarray]]:
        result = self._client.infer(name, infer_inputs(grpc, inputs, datatypes), parameters=parameters,
                                    outputs=[grpc.InferRequestedOutput(o) for o in outputs],
                                    client_timeout=self.timeout_s)
        return _grpc_outputs(result, outputs)

    def stream(self, name: str, inputs: dict[str, np.ndarray], outputs: list[str], parameters: dict | None = None,
               datatypes: dict[str, str] | None = None) -> list[dict[str, tuple[str, np.ndarray]]]:
        """One streaming request; every response's outputs, in order, up to the final one."""
        return [_grpc_outputs(result, outputs)
                for result in stream(self.url, name, infer_inputs(grpc, inputs, datatypes), outputs=outputs,
                                     parameters=parameters, timeout_s=self.timeout_s)]


def connect(url: str, protocol: str, timeout_s: float = 60.0) -> Client:
    """A client for `url` ('host:port') over protocol 'http' or 'grpc'."""
    if protocol == "http":
        return HttpClient(url, timeout_s)
    if protocol == "grpc":
        return GrpcClient(url, timeout_s)
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def _grpc_outputs(result, outputs: list[str]) -> dict[str, tuple[str, np.ndarray]]:
    return {o: (result.get_output(o).datatype, result.as_numpy(o))
            for o in outputs if result.get_output(o) is not None}
