# The OpenAI-compatible frontend (`tritonize openai`) as an image, for deploy.openai.image: a
# container next to tritonserver (same pod / compose network) that reads the repository at /models
# and talks to Triton over gRPC on 127.0.0.1:8001.
#
#   docker build -f docker/openai.Dockerfile --build-arg IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3 \
#       -t my-registry/tritonize-openai:24.10 .
#
# IMAGE: for repository delivery `sync` or `pvc` any image with Python 3.10+ and pip (the NGC
# tritonserver image the deployment already pulls is one); for `baked`, the repository image
# (docker/Dockerfile), which holds /models. Only the `openai` extra is installed: the frontend
# needs aiohttp, tokenizers, prometheus_client and tritonclient, not torch or the converters.
ARG IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${IMAGE}
USER root
COPY pyproject.toml constraints.txt README.md /opt/tritonize-src/
COPY compiler /opt/tritonize-src/compiler
COPY python_backends /opt/tritonize-src/python_backends
COPY templates /opt/tritonize-src/templates
RUN python3 -m pip install --no-cache-dir -c /opt/tritonize-src/constraints.txt "/opt/tritonize-src[openai]" \
    && rm -rf /opt/tritonize-src
USER 10001:10001
ENV HOME=/tmp
EXPOSE 9000
ENTRYPOINT []
CMD ["tritonize", "openai", "/models", "--grpc-url", "127.0.0.1:8001", "--host", "0.0.0.0", "--port", "9000"]
