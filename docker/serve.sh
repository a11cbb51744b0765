#!/usr/bin/env bash
# Serve a repository built with `tritonize build --runtime container` in the NGC image its
# manifest names: nvcr.io/nvidia/tritonserver:<release>-py3 (onnxruntime, python, ensemble
# backends), or, when it holds a TensorRT-LLM engine, the <tag>-trtllm-python-py3 image whose
# TensorRT-LLM version built / will build that engine (engines only load in the version that
# built them). Engines still pending are built first, inside that container, on this machine's
# GPU, with the build_engine.sh tritonize wrote next to each checkpoint.
#
#   tritonize build model.yaml --runtime container -o model_repo_container
#   docker/serve.sh model_repo_container          # HTTP :8000, gRPC :8001, metrics :8002
#
# Needs: docker with the NVIDIA container toolkit, and a GPU for KIND_GPU instances and engines.
set -euo pipefail
repo=$(cd "${1:?usage: docker/serve.sh REPOSITORY}" && pwd)
image=$(python3 - "$repo" <<'PY'
import json, sys
manifest = json.load(open(sys.argv[1] + "/tritonize.manifest.json"))
if manifest.get("runtime") != "container":
    sys.exit("this repository was built for the embedded server: rebuild it with "
             "`tritonize build SPEC --runtime container` (or run `tritonize serve` for this one)")
engines = sorted({m["engine"]["image"] for m in manifest["models"].values() if m.get("kind") == "llm-engine-trtllm"})
if len(engines) > 1:
    sys.exit(f"engines for several TensorRT-LLM images {engines}: serve them from separate repositories")
print(engines[0] if engines else manifest["container"]["image"])
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
