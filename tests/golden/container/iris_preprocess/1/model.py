"""Triton python-backend step of the iris_pipeline ensemble: one CSV line per row
("5.1,3.5,1.4,0.2": sepal length, sepal width, petal length, petal width in cm) -> FEATURES FP32.

Input CSV STRING [1], output FEATURES FP32 [n] with n from the model config; batched
(max_batch_size > 0). A request whose line does not hold n finite numbers (or is not UTF-8) gets a
400 / INVALID_ARGUMENT response naming the input and row; the other requests of the batch are
answered.
"""
from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils


def parse_rows(lines: np.ndarray, width: int) -> np.ndarray:
    """[batch, 1] CSV lines (bytes or str) -> [batch, width] float32; ValueError names the bad row."""
    features = np.empty((len(lines), width), dtype=np.float32)
    for row, cell in enumerate(lines.reshape(len(lines), -1)[:, 0]):
        try:
            text = cell.decode("utf-8") if isinstance(cell, bytes) else str(cell)
        except UnicodeDecodeError:
            raise ValueError(f"row {row}: {cell[:40]!r} is not UTF-8 text") from None
        values = [v.strip() for v in text.split(",")]
        if len(values) != width:
            raise ValueError(f"row {row}: expected {width} comma-separated numbers, got {len(values)} in {text!r}")
        try:
            features[row] = [float(v) for v in values]
        except ValueError:
            raise ValueError(f"row {row}: {text!r} is not {width} numbers") from None
        if not np.all(np.isfinite(features[row])):
            raise ValueError(f"row {row}: {text!r} holds a non-finite value")
    return features


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        output = pb_utils.get_output_config_by_name(config, "FEATURES")
        self.width = int(output["dims"][-1])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            lines = pb_utils.get_input_tensor_by_name(request, "CSV").as_numpy()
            try:
                features = parse_rows(lines, self.width)
            except ValueError as exc:
                error = pb_utils.TritonError(f"input CSV: {exc}", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("FEATURES", features)]))
        return responses
