#!/usr/bin/env bash
# Serve a repository built with `tritonize build --runtime container` in the NGC image its
# manifest names: nvcr.io/nvidia/tritonserver:<release>-py3 (onnxruntime, python, ensemble
# backends), or, when it holds a TensorRT-LLM engine, the <tag>-trtllm-python-py3 image whose
# TensorRT-LLM version built / will build that engine (engines only load in the version that
# built them). Engines still pending are built first, inside that container, on this machine's
# GPU, with the build_engine.sh tritonize wrote next to each checkpoint.
#
#   tritonize build model.yaml --runtime container -o model_repo_container
#   docker/serve.sh model_repo_container          # HTTP :8000, gRPC :8001, metrics :8002 on 127.0.0.1
#
# Environment: TRITONIZE_HOST (address the ports are published on, default 127.0.0.1; 0.0.0.0 for
# every interface), TRITONIZE_HTTP_PORT / TRITONIZE_GRPC_PORT / TRITONIZE_METRICS_PORT (8000, 8001,
# 8002), TRITONIZE_API_KEY or TRITONIZE_API_KEY_FILE (the key of the restricted model-repository,
# shared-memory, logging and trace APIs, sent as header `triton-admin-key`; default: a fresh key in a
# mode-0600 temp file, printed), TRITONIZE_EXIT_TIMEOUT (seconds a stop waits, default 30).
# The container runs as the invoking user (engines it builds belong to you), not root. The pip
# packages a model directory's requirements.txt names (an encoder's tokenizer step: tokenizers)
# are installed for that user at start, from the network.
#
# Needs: docker with the NVIDIA container toolkit, a GPU for KIND_GPU instances and engines, and
# tritonize installed (it reads the manifest).
set -euo pipefail
repo=$(cd "${1:?usage: docker/serve.sh REPOSITORY}" && pwd)
host=${TRITONIZE_HOST:-127.0.0.1}
# The manifest's owner (tritonize.manifest) says which image; it needs tritonize installed for
# python3 (or the interpreter in TRITONIZE_PYTHON).
image=$("${TRITONIZE_PYTHON:-python3}" -m tritonize.manifest image "$repo")
if [ -n "${TRITONIZE_API_KEY_FILE:-}" ]; then
    TRITONIZE_API_KEY=$(tr -d ' \n' < "$TRITONIZE_API_KEY_FILE")
elif [ -z "${TRITONIZE_API_KEY:-}" ]; then
    key_file=$(mktemp "${TMPDIR:-/tmp}/tritonize-api-key.XXXXXX")  # mktemp creates it mode 0600
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$key_file"
    TRITONIZE_API_KEY=$(cat "$key_file")
    echo "restricted APIs key (header triton-admin-key): $key_file"
fi
export TRITONIZE_API_KEY TRITONIZE_EXIT_TIMEOUT=${TRITONIZE_EXIT_TIMEOUT:-30}
echo "serving $repo in $image on $host"
# The repository is mounted where the configs expect it (gpt_model_path is /models/...). The key
# reaches the container by name (-e NAME), so it is not on docker's command line.
exec docker run --rm --gpus all --shm-size=2g --ulimit memlock=-1 \
    --user "$(id -u):$(id -g)" -e HOME=/tmp -e TRITONIZE_API_KEY -e TRITONIZE_EXIT_TIMEOUT \
    -p "$host:${TRITONIZE_HTTP_PORT:-8000}:8000" -p "$host:${TRITONIZE_GRPC_PORT:-8001}:8001" \
    -p "$host:${TRITONIZE_METRICS_PORT:-8002}:8002" -v "$repo":/models "$image" bash -c '
set -e
requirements=$(cat /models/*/requirements.txt 2>/dev/null | sort -u)
if [ -n "$requirements" ]; then
    echo "installing the python steps'"'"' packages: $requirements"
    printf "%s\n" "$requirements" > /tmp/tritonize-requirements.txt
    python3 -m pip install --user --no-cache-dir -r /tmp/tritonize-requirements.txt
fi
for script in /models/*/[0-9]*/build_engine.sh; do
    [ -e "$script" ] || continue
    engine="$(dirname "$script")/engine"
    if ! ls "$engine"/rank*.engine >/dev/null 2>&1; then
        echo "building engine: $script"
        bash "$script"
    fi
done
apis=model-repository,shared-memory,logging,trace
exec tritonserver --model-repository=/models --exit-timeout-secs="$TRITONIZE_EXIT_TIMEOUT" \
    --http-restricted-api="$apis:triton-admin-key=$TRITONIZE_API_KEY" \
    --grpc-restricted-protocol="$apis:triton-admin-key=$TRITONIZE_API_KEY"'
