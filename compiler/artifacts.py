"""What each compiler stage hands to emission: one ModelArtifact per model directory."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from .manifest import ModelEntry

# Beside a container-runtime model's config.pbtxt: the pip packages its python step needs that the
# NGC image lacks (docker/Dockerfile and docker/serve.sh install them; `deploy` warns without them).
REQUIREMENTS_FILE = "requirements.txt"


@dataclass
class ModelArtifact:
    """A model directory ready to write: its config, its files, and its manifest entry.

    files maps a path relative to the model directory (e.g. "1/model.onnx") to bytes, or to a
    file or directory Path to copy.
    """

    name: str
    config: model_config_pb2.ModelConfig
    files: dict[str, bytes | Path] = field(default_factory=dict)
    entry: ModelEntry | None = None  # its entry in the repository manifest
    version: int = 1
