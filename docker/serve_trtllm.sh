#!/usr/bin/env bash
# Serve a repository built with `tritonize build --runtime container` in the NGC TensorRT-LLM
# image its manifest names (the image whose TensorRT-LLM version built / will build the engine).
# Engines still pending are built first, inside that container, on this machine's GPU, with the
# build_engine.sh tritonize wrote next to each checkpoint.
#
#   docker/serve_trtllm.sh model_repo            # HTTP :8000, gRPC :8001, metrics :8002
#
# Needs: docker with the NVIDIA container toolkit, a GPU matching the spec's llm.target_gpu.
set -euo pipefail
repo=$(cd "${1:?usage: docker/serve_trtllm.sh REPOSITORY}" && pwd)
image=$(python3 - "$repo" <<'PY'
import json, sys
manifest = json.load(open(sys.argv[1] + "/tritonize.manifest.json"))
images = sorted({m["engine"]["image"] for m in manifest["models"].values() if m.get("kind") == "llm-engine-trtllm"})
if len(images) != 1:
    sys.exit(f"expected one TensorRT-LLM image in the manifest, found {images or 'none'}: "
             "was the repository built with --runtime container?")
print(images[0])
PY
)
echo "serving $repo in $image"
# The repository is mounted where the configs expect it (gpt_model_path is /models/...).
exec docker run --rm --gpus all --shm-size=2g --ulimit memlock=-1 \
    -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$repo":/models "$image" bash -c '
set -e
for script in /models/*/[0-9]*/build_engine.sh; do
    [ -e "$script" ] || continue
    engine="$(dirname "$script")/engine"
    if ! ls "$engine"/rank*.engine >/dev/null 2>&1; then
        echo "building engine: $script"
        bash "$script"
    fi
done
exec tritonserver --model-repository=/models'
