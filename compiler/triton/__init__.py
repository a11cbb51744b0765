"""The Triton-facing side of tritonize: typed config objects (`config`), Triton's load rules
checked without a server (`rules`), the embedded tritonserver (`server`) and the one client over
tritonclient (`client`). Nothing heavy is imported here: each submodule loads on first use."""
