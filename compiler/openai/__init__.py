"""An OpenAI-compatible HTTP frontend for a repository's LLM ensembles.

`tritonize serve REPO --openai` starts it next to tritonserver: GET /v1/models,
POST /v1/completions and /v1/chat/completions (SSE when `stream: true`), /metrics. Each request
becomes one Triton gRPC stream to the model's ensemble over one shared channel
(backend.TritonBackend); the OpenAI parameters map to the ensemble's inputs (protocol.py); the
tokenizer shipped in the repository counts tokens and renders chat templates (models.py).
"""
from __future__ import annotations

from .app import Frontend, create_app
from .models import LlmModel, discover_models

__all__ = ["Frontend", "LlmModel", "create_app", "discover_models"]
