"""Each architecture family end to end on the embedded runtime (real tritonserver, CPU engine),
for each target that serves it: the engine target's ensemble (`llm.engine: tensorrt_llm`,
TensorRT-LLM checkpoint) and the LLM API model (`llm.engine: llmapi`, ModelOpt's HF export):
a tiny model of the family (examples/tiny_llm/families.py: trained briefly, tokenizer trained
locally), quantized to FP8 and exported by ModelOpt, served from the exported checkpoint alone.

- the checkpoint carries every architecture field (RoPE base and llama3 scaling, tied embeddings,
  q/k/v biases, q/k norms, sliding window), and a build whose checkpoint lost one fails naming it
- served greedy text == transformers' greedy text on the same dequantized weights, the model
  built from the *source* config (so a field the export got wrong would show here)
- streamed pieces join to the one-shot answer (SentencePiece families keep their spaces)
- FP8 within the spec's budget; the measured figures are printed (-s) for the record

Greedy text is compared exactly: both sides run the same float32 forward pass on one sequence.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import requests

from tritonize.terminal import Terminal

pytestmark = [pytest.mark.server, pytest.mark.slow]

# Engine target, family -> release: qwen3 needs TensorRT-LLM 1.x; llama3 also runs the 1.x input
# names (seed). Phi-3 has no engine here (ModelOpt cannot export its TensorRT-LLM checkpoint).
RELEASE = {"llama3": "26.07", "mistral": "24.10", "qwen2": "24.10", "qwen3": "26.07", "gemma": "24.10"}
FAMILIES = tuple(RELEASE)
# The LLM API target (26.07): TensorRT-LLM's PyTorch backend has no first-generation Gemma.
LLMAPI_FAMILIES = ("llama3", "mistral", "qwen2", "qwen3", "phi3")
ALL_FAMILIES = tuple(dict.fromkeys(FAMILIES + LLMAPI_FAMILIES))
PROMPTS = ["The river runs", "A doctor listens to"]
MAX_TOKENS = 16
BLOCK = """\
      streaming: true
      quantization: {mode: fp8, max_logit_error: 2.0, min_token_agreement: 0.9}
      limits: {max_batch_size: 2, max_input_len: 32, max_output_len: 24}
"""


def spec_text(families: tuple[str, ...], llmapi: tuple[str, ...] = (), repository: str = "model_repo") -> str:
    models = "".join(f"""\
  - name: {family}
    source: {{framework: huggingface, path: {family}}}
    llm:
      engine: tensorrt_llm
      release: "{RELEASE[family]}"
{BLOCK}""" for family in families)
    models += "".join(f"""\
  - name: {family}_llmapi
    source: {{framework: huggingface, path: {family}}}
    llm:
      release: "26.07"
{BLOCK}""" for family in llmapi)  # engine: llmapi is the newest release's default
    return f"repository: {repository}\nmodels:\n{models}"


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, repo_root) -> dict[str, Path]:
    sys.path.insert(0, str(repo_root / "examples" / "tiny_llm"))
    try:
        make = load_module(repo_root / "examples" / "tiny_llm" / "families.py")
        root = tmp_path_factory.mktemp("families")
        return {family: make.create(family, root / family) for family in ALL_FAMILIES}
    finally:
        sys.path.remove(str(repo_root / "examples" / "tiny_llm"))


@pytest.fixture(scope="module")
def built(family_dirs):
    """The engine target's repository (an ensemble per family)."""
    from tritonize import build

    spec = next(iter(family_dirs.values())).parent / "model.yaml"
    spec.write_text(spec_text(FAMILIES))
    return build(spec, terminal=Terminal(quiet=True, stderr=True))


@pytest.fixture(scope="module")
def built_llmapi(family_dirs):
    """The llmapi target's repository (one model per family), in its own repository so that each
    server loads fewer python stubs (each imports torch and transformers)."""
    from tritonize import build

    spec = next(iter(family_dirs.values())).parent / "llmapi.yaml"
    spec.write_text(spec_text((), LLMAPI_FAMILIES, repository="repo_llmapi"))
    return build(spec, terminal=Terminal(quiet=True, stderr=True))


@pytest.fixture(scope="module")
def server(triton_server, built):
    # 20 models, 15 of them python stubs: more than the default 180 s on a busy machine.
    return triton_server(built.repository, startup_timeout_s=600)


@pytest.fixture(scope="module")
def llmapi_server(triton_server, built_llmapi):
    return triton_server(built_llmapi.repository, startup_timeout_s=600)


@pytest.fixture(scope="module")
def checkpoint_loader(repo_root):
    return load_module(repo_root / "python_backends" / "llm_cpu_engine" / "trtllm_checkpoint.py")


@pytest.fixture(scope="module")
def hf_export_loader(repo_root):
    sys.path.insert(0, str(repo_root / "python_backends" / "llm_cpu_engine"))
    try:
        return load_module(repo_root / "python_backends" / "llm_cpu_engine" / "hf_checkpoint.py")
    finally:
        sys.path.remove(str(repo_root / "python_backends" / "llm_cpu_engine"))


def checkpoint_of(built, family: str) -> Path:
    return built.repository / f"{family}_tensorrt_llm" / "1" / "checkpoint"


def hf_export_of(built, family: str) -> Path:
    return built.repository / f"{family}_llmapi" / "1" / "checkpoint"


def greedy_reference(hf_dir: Path, model) -> dict[str, str]:
    """prompt -> transformers greedy text of model, the prompt tokenized by transformers (its own
    BOS handling)."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    out = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            generated = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=MAX_TOKENS, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
        out[prompt] = tokenizer.decode(generated, skip_special_tokens=True)
    return out


@pytest.fixture(scope="module")
def reference(family_dirs, built, checkpoint_loader):
    """family -> prompt -> transformers greedy text: the source config with the engine target's
    checkpoint's dequantized weights."""
    from transformers import AutoConfig

    return {family: greedy_reference(family_dirs[family], checkpoint_loader.load_model(
        str(checkpoint_of(built, family)), config=AutoConfig.from_pretrained(family_dirs[family])))
        for family in FAMILIES}


@pytest.fixture(scope="module")
def llmapi_reference(family_dirs, built_llmapi, hf_export_loader):
    """The same for the llmapi target: the source config with the HF export's dequantized weights."""
    from transformers import AutoConfig

    return {family: greedy_reference(family_dirs[family], hf_export_loader.load_model(
        str(hf_export_of(built_llmapi, family)), config=AutoConfig.from_pretrained(family_dirs[family])))
        for family in LLMAPI_FAMILIES}


def generate(server, model: str, prompt: str, llmapi: bool = False) -> str:
    body = {"text_input": prompt, "sampling_param_max_tokens" if llmapi else "max_tokens": MAX_TOKENS}
    response = requests.post(f"http://{server.http_url}/v2/models/{model}/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["text_output"]


def sse_pieces(server, model: str, prompt: str, llmapi: bool = False) -> list[str]:
    body = ({"text_input": prompt, "sampling_param_max_tokens": MAX_TOKENS, "streaming": True} if llmapi
            else {"text_input": prompt, "max_tokens": MAX_TOKENS, "stream": True})
    response = requests.post(f"http://{server.http_url}/v2/models/{model}/generate_stream", json=body,
                             timeout=60, stream=True)
    assert response.status_code == 200, response.text
    return [json.loads(line[len("data:"):])["text_output"] for line in response.iter_lines(decode_unicode=True)
            if line and line.startswith("data:")]


def test_llama3_checkpoint_carries_rope_base_scaling_and_tied_embeddings(built):
    config = json.loads((checkpoint_of(built, "llama3") / "config.json").read_text())
    assert config["rotary_base"] == 500000.0
    assert config["rotary_scaling"]["rope_type"] == "llama3" and config["rotary_scaling"]["factor"] == 8.0
    assert config["tie_word_embeddings"] is True


@pytest.mark.parametrize("family, field, value", [
    ("qwen2", "qwen_type", "qwen2"), ("qwen2", "attn_bias", True), ("qwen3", "qk_layernorm", True),
    ("mistral", "sliding_window", 32), ("gemma", "tie_word_embeddings", True)])
def test_checkpoint_carries_the_family_fields(built, family, field, value):
    assert json.loads((checkpoint_of(built, family) / "config.json").read_text())[field] == value


@pytest.mark.parametrize("family", FAMILIES)
def test_served_greedy_text_equals_transformers_on_the_dequantized_checkpoint(server, reference, family):
    for prompt in PROMPTS:
        text = generate(server, family, prompt)
        assert text.strip(), "an empty answer would make the comparison vacuous"
        assert text == reference[family][prompt]


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_pieces_join_to_the_one_shot_answer(server, reference, family):
    pieces = sse_pieces(server, family, PROMPTS[0])
    assert len(pieces) > 1
    assert "".join(pieces) == reference[family][PROMPTS[0]]
    assert " " in "".join(pieces)  # SentencePiece pieces decoded alone would have lost every space


@pytest.mark.parametrize("family", LLMAPI_FAMILIES)
def test_llmapi_served_greedy_text_equals_transformers_on_the_dequantized_export(llmapi_server, llmapi_reference,
                                                                                 family):
    for prompt in PROMPTS:
        text = generate(llmapi_server, f"{family}_llmapi", prompt, llmapi=True)
        assert text.strip(), "an empty answer would make the comparison vacuous"
        assert text == llmapi_reference[family][prompt]


@pytest.mark.parametrize("family", LLMAPI_FAMILIES)
def test_llmapi_streams_the_text_so_far_ending_with_the_one_shot_answer(llmapi_server, llmapi_reference, family):
    """As the LLM API's CompletionOutput.text: each response carries all the text generated so far."""
    pieces = sse_pieces(llmapi_server, f"{family}_llmapi", PROMPTS[0], llmapi=True)
    assert len(pieces) > 1
    assert all(later.startswith(earlier) for earlier, later in zip(pieces, pieces[1:]))
    assert pieces[-1] == llmapi_reference[family][PROMPTS[0]] and " " in pieces[-1]


def test_the_llmapi_export_carries_rope_where_tensorrt_llms_transformers_reads_it(built_llmapi):
    """Top-level rope_theta / rope_scaling (transformers 4.57, TensorRT-LLM 1.2.1's pin), and
    ModelOpt's FP8 marker that the PyTorch backend detects."""
    export = hf_export_of(built_llmapi, "llama3")
    config = json.loads((export / "config.json").read_text())
    assert config["rope_theta"] == 500000.0
    assert config["rope_scaling"]["rope_type"] == "llama3" and config["rope_scaling"]["factor"] == 8.0
    assert json.loads((export / "hf_quant_config.json").read_text())["quantization"]["quant_algo"] == "FP8"
    assert (export / "tokenizer.json").is_file()  # the LLM API loads the tokenizer from the model directory


def test_the_llmapi_model_yaml_is_filled_from_the_spec(built_llmapi):
    import yaml

    args = yaml.safe_load((built_llmapi.repository / "phi3_llmapi" / "1" / "model.yaml").read_text())
    assert args["model"] == "checkpoint" and args["backend"] == "pytorch"
    assert (args["max_seq_len"], args["max_input_len"], args["max_batch_size"]) == (56, 32, 2)
    assert args["triton_config"] == {"max_batch_size": 0, "decoupled": True}


@pytest.mark.parametrize("family", FAMILIES + tuple(f"{f}_llmapi" for f in LLMAPI_FAMILIES))
def test_fp8_is_within_budget(built, built_llmapi, family):
    models = {**built.manifest.models, **built_llmapi.manifest.models}
    report = (models.get(f"{family}_tensorrt_llm") or models[family]).quantization
    print(f"\nFP8 {family}: max logit error {report['max_logit_error']}, mean {report['mean_logit_error']}, "
          f"token agreement {report['token_agreement']} on {report['held_out_positions']} held-out positions")
    assert report["max_logit_error"] <= report["budget"]["max_logit_error"]
    assert report["token_agreement"] >= report["budget"]["min_token_agreement"]


def test_bos_follows_the_tokenizer_config(built):
    """The SentencePiece and Llama 3 tokenizers carry a BOS post-processor, the Qwen ones none."""
    from tritonize.triton.config import parse_pbtxt

    for family in FAMILIES:
        config = parse_pbtxt((built.repository / f"{family}_preprocessing" / "config.pbtxt").read_text())
        expected = "false" if family.startswith("qwen") else "true"
        assert config.parameters["add_bos_token"].string_value == expected, family


def test_the_checkpoint_without_rope_serves_another_model(built, family_dirs, checkpoint_loader, tmp_path):
    """Why the check below matters: dropping RoPE from the checkpoint changes the served logits."""
    import torch

    stripped = tmp_path / "checkpoint"
    shutil.copytree(checkpoint_of(built, "llama3"), stripped)
    config = json.loads((stripped / "config.json").read_text())
    del config["rotary_base"], config["rotary_scaling"]
    (stripped / "config.json").write_text(json.dumps(config))
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        faithful = checkpoint_loader.load_model(str(checkpoint_of(built, "llama3")))(ids).logits
        fallback = checkpoint_loader.load_model(str(stripped))(ids).logits
    assert float((faithful - fallback).abs().max()) > 0.1  # logits span several units here


def test_build_fails_naming_the_field_when_the_checkpoint_loses_rope(built, family_dirs):
    """The cached checkpoint is edited the way ModelOpt's generic export writes it (no
    rotary_base): the next build, which reuses it, refuses it and names the field."""
    from tritonize import build
    from tritonize.errors import ConversionError

    spec = next(iter(family_dirs.values())).parent / "llama3_only.yaml"
    spec.write_text(spec_text(("llama3",)).replace("model_repo", "repo_llama3_only"))
    cached = [p for p in (spec.parent / ".cache" / "tritonize" / "checkpoints").glob("*/config.json")
              if json.loads(p.read_text()).get("rotary_base") == 500000.0]  # the TensorRT-LLM checkpoint
    assert len(cached) == 1
    original = cached[0].read_text()
    config = json.loads(original)
    del config["rotary_base"]
    cached[0].write_text(json.dumps(config))
    try:
        with pytest.raises(ConversionError) as error:
            build(spec, terminal=Terminal(quiet=True, stderr=True))
    finally:
        cached[0].write_text(original)
    text = error.value.one_line()
    assert "models[0].source: the exported checkpoint has no 'rotary_base'" in text and "500000" in text, text


def test_llmapi_build_fails_naming_the_field_when_the_export_loses_rope(built_llmapi, family_dirs):
    """The HF export as transformers 5 alone writes it (RoPE only in rope_parameters): refused."""
    from tritonize import build
    from tritonize.errors import ConversionError

    spec = next(iter(family_dirs.values())).parent / "llama3_llmapi_only.yaml"
    spec.write_text(spec_text((), ("llama3",)).replace("model_repo", "repo_llama3_llmapi_only"))
    cached = [p for p in (spec.parent / ".cache" / "tritonize" / "checkpoints").glob("*/config.json")
              if json.loads(p.read_text()).get("rope_theta") == 500000.0]
    assert len(cached) == 1
    original = cached[0].read_text()
    config = json.loads(original)
    del config["rope_theta"]
    cached[0].write_text(json.dumps(config))
    try:
        with pytest.raises(ConversionError) as error:
            build(spec, terminal=Terminal(quiet=True, stderr=True))
    finally:
        cached[0].write_text(original)
    text = error.value.one_line()
    assert "models[0].source: the exported checkpoint has no 'rope_theta'" in text and "500000" in text, text
