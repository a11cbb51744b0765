"""Run the real tritonserver that ships in the nvidia-pytriton wheel, with no container.

`find_tritonserver()` locates the binary and prepares (once per user, shared by every run) a backend
directory holding the python backend plus the stub for the running Python. `TritonServer` starts one
server as a child process in its own process group, waits until it is ready and always stops it;
`serve_forever` is what `tritonize serve` runs.
"""
from .install import ServerInstall, find_tritonserver
from .process import MODEL_CONTROL_MODES, ServerError, TritonServer, free_port, free_ports
from .serve import serve_forever

__all__ = ["MODEL_CONTROL_MODES", "ServerError", "ServerInstall", "TritonServer", "find_tritonserver",
           "free_port", "free_ports", "serve_forever"]
