"""Placeholder for upstream's llmapi model.py (NVIDIA/TensorRT-LLM
triton_backend/all_models/llmapi/tensorrt_llm/1/model.py), which tritonize does not ship: the
version directory's install_model_py.sh replaces this file with upstream's (and adds its
helpers.py) from TensorRT-LLM at the release's tag. Until then the model fails to load, saying so.
"""
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        raise pb_utils.TritonModelException(
            "upstream's llmapi model.py is not installed: run install_model_py.sh in "
            f"{args['model_repository']}/{args['model_version']} (it copies model.py and helpers.py from "
            "NVIDIA/TensorRT-LLM at the release's tag)")

    def execute(self, requests):
        raise pb_utils.TritonModelException("upstream's llmapi model.py is not installed")
