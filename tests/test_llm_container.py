"""The LLM path without a server: spec errors, the memory plan, the engine command, and the
container-runtime configs of both supported releases against committed golden files.

Regenerate the golden files after an intended change with TRITONIZE_UPDATE_GOLDEN=1.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tritonize.errors import SpecError
from tritonize.llm import engine as engine_step
from tritonize.llm import repository as repo
from tritonize.llm.spec import RELEASES, LlmSpec
from tritonize.model_config import to_pbtxt
from tritonize.rules import check_configs, check_repository
from tritonize.terminal import Terminal

GOLDEN = Path(__file__).parent / "golden" / "llm"
# Llama-2-70B's shape, for memory plans (no weights needed).
LLAMA_70B = {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
             "intermediate_size": 28672, "vocab_size": 32000}
LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 14336, "vocab_size": 128256}


def golden_llm() -> LlmSpec:
    return LlmSpec.model_validate({
        "streaming": True, "target_gpu": "H100-80GB",
        "quantization": {"mode": "fp8", "kv_cache_fp8": True},
        "limits": {"max_batch_size": 8, "max_input_len": 1024, "max_output_len": 512},
    })


def container_configs(release: str):
    llm = golden_llm()
    names = repo.Names.of("llama")
    return {
        names.preprocessing: repo.preprocessing_config(names, llm),
        names.engine: repo.trtllm_engine_config(names, llm, RELEASES[release]),
        names.postprocessing: repo.postprocessing_config(names, llm),
        names.ensemble: repo.ensemble_config(names, llm),
        names.bls: repo.bls_config(names, llm),
    }


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_container_configs_match_golden_files_and_pass_the_load_rules(release):
    configs = container_configs(release)
    assert check_configs(configs) == []
    for name, config in configs.items():
        text = to_pbtxt(config)
        assert "${" not in text  # no unfilled template value, the most reported failure
        golden = GOLDEN / release / name / "config.pbtxt"
        if os.environ.get("TRITONIZE_UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{golden} differs (TRITONIZE_UPDATE_GOLDEN=1 regenerates it)"


def test_releases_differ_where_the_backend_does():
    old = {t.name for t in container_configs("24.10")["llama_tensorrt_llm"].input}
    new = {t.name for t in container_configs("26.07")["llama_tensorrt_llm"].input}
    assert new - old == {"num_return_sequences", "return_perf_metrics"}
    assert [t.name for t in container_configs("26.07")["llama_tensorrt_llm"].output][-1] == "batch_index"
    engine = container_configs("24.10")["llama_tensorrt_llm"]
    assert engine.backend == "tensorrtllm" and engine.model_transaction_policy.decoupled
    assert engine.parameters["gpt_model_path"].string_value == "/models/llama_tensorrt_llm/1/engine"


def flags_of(llm: LlmSpec) -> dict[str, str]:
    argv = engine_step.engine_command(llm, "ckpt", "out")
    return {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1, 2)}


def test_engine_command_carries_the_fused_kernels_and_per_gpu_fp8_flags():
    flags = flags_of(golden_llm())
    assert flags["--checkpoint_dir"] == "ckpt" and flags["--output_dir"] == "out"
    assert flags["--gemm_plugin"] == "fp8"
    assert flags["--use_fp8_context_fmha"] == "enable"  # Hopper
    for flag, value in {"--kv_cache_type": "paged", "--remove_input_padding": "enable",
                        "--gpt_attention_plugin": "auto", "--use_fused_mlp": "enable",
                        "--use_paged_context_fmha": "enable", "--multiple_profiles": "enable",
                        "--max_batch_size": "8", "--max_input_len": "1024", "--max_seq_len": "1536",
                        "--max_num_tokens": "8192", "--max_beam_width": "1"}.items():
        assert flags[flag] == value, flag
    ada = flags_of(golden_llm().model_copy(update={"target_gpu": "L40S-48GB"}))
    assert ada["--gemm_plugin"] == "fp8" and "--use_fp8_context_fmha" not in ada
    fp16 = flags_of(LlmSpec.model_validate({"target_gpu": "A100-80GB", "tensor_parallel": 2}))
    assert fp16["--gemm_plugin"] == "auto" and "--use_fp8_context_fmha" not in fp16
    assert fp16["--reduce_fusion"] == "enable" and fp16["--workers"] == "2"


def test_memory_plan_counts_weights_and_kv_cache():
    llm = LlmSpec.model_validate({"target_gpu": "H100-80GB", "quantization": {"mode": "fp8"},
                                  "limits": {"max_batch_size": 16, "max_input_len": 2048, "max_output_len": 512}})
    plan = engine_step.memory_plan(llm, LLAMA_8B)
    assert 7.9e9 < plan.parameters < 8.1e9  # Llama-3-8B has 8.03 B parameters
    # 32 layers x 8 KV heads x 128 dims x (K and V) x 2 bytes
    assert plan.kv_bytes_per_token == 32 * 8 * 128 * 2 * 2
    assert plan.kv_tokens_needed == 16 * 2560
    assert plan.fits


def test_memory_plan_refuses_a_model_that_cannot_fit():
    llm = LlmSpec.model_validate({"target_gpu": "L4-24GB", "quantization": {"mode": "fp8"}})
    plan = engine_step.memory_plan(llm, LLAMA_70B)
    assert not plan.fits
    with pytest.raises(SpecError, match="weights .* do not fit in L4-24GB"):
        engine_step.require_fit(plan, llm, spec_path=Path("model.yaml"), field="models[0].llm.limits")


def test_memory_plan_refuses_a_kv_cache_larger_than_what_is_left():
    llm = LlmSpec.model_validate({"target_gpu": "H100-80GB", "quantization": {"mode": "fp8"},
                                  "limits": {"max_batch_size": 256, "max_input_len": 4096, "max_output_len": 4096}})
    plan = engine_step.memory_plan(llm, LLAMA_8B)
    with pytest.raises(SpecError, match=r"KV cache .*room for \d+ full-length sequences.*lower limits.max_batch_size"):
        engine_step.require_fit(plan, llm, spec_path=Path("model.yaml"), field="models[0].llm.limits")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, repo_root):
    from test_llm import shared_tiny_llm

    return shared_tiny_llm(tmp_path_factory, repo_root)


def write_spec(tiny_dir: Path, llm_block: str, name: str = "model.yaml", runtime: str = "embedded") -> Path:
    spec = tiny_dir.parent / name
    spec.write_text(f"repository: repo_{name.split('.')[0]}\nruntime: {runtime}\nmodels:\n"
                    f"  - name: tiny_llm\n    source: {{framework: huggingface, path: tiny}}\n"
                    f"    llm:\n{llm_block}")
    return spec


@pytest.mark.parametrize("block, line, field, message", [
    ("      streaming: true\n      beams: 2\n", 8, "models[0].llm.beams", "unknown key 'beams'"),
    ("      target_gpu: A100-80GB\n      quantization: {mode: fp8}\n", 8, "models[0].llm.quantization.mode",
     "A100-80GB has no FP8 tensor cores"),
    ("      limits: {max_input_len: 400, max_output_len: 200}\n", 7, "models[0].llm.limits.max_output_len",
     "exceeds the model's max_position_embeddings 512"),
    ("      release: '25.01'\n", 7, "models[0].llm.release", "release '25.01' is not supported"),
    ("      quantization: {kv_cache_fp8: true}\n", 7, "models[0].llm.quantization", "kv_cache_fp8 needs mode: fp8"),
    ("      limits: {max_beam_width: 4}\n", 7, "models[0].llm.limits.max_beam_width", "CPU engine decodes one beam"),
])
def test_llm_block_errors_name_the_line_and_field(tiny_dir, tmp_path, block, line, field, message):
    """Through build: some checks need the model directory, which a factory creates at build time."""
    from tritonize import build
    from tritonize.terminal import Terminal

    spec = write_spec(tiny_dir, block, name="bad.yaml")
    with pytest.raises(SpecError) as error:
        build(spec, tmp_path / "repo", terminal=Terminal(quiet=True))
    text = error.value.one_line()
    assert "\n" not in text
    assert f"bad.yaml:{line} {field}: " in text and message in text, text


# No trtllm-build on this PATH, even if one were installed: the engine step stays pending.
PATH_WITHOUT_TRTLLM = "/usr/bin:/bin"


@pytest.fixture(scope="module")
def container_build(tiny_dir):
    """(spec, BuildResult) of a container-runtime build of the tiny model for release 26.07."""
    from tritonize import build

    spec = write_spec(tiny_dir, "      streaming: true\n      release: '26.07'\n"
                                "      limits: {max_batch_size: 4, max_input_len: 64, max_output_len: 48}\n",
                      name="container.yaml", runtime="container")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", PATH_WITHOUT_TRTLLM)
        return spec, build(spec, terminal=Terminal(quiet=True, stderr=True))


def test_container_build_writes_checkpoint_and_pending_engine_step(container_build):
    _, result = container_build
    out = result.repository
    assert check_repository(out) == []
    engine = result.manifest["models"]["tiny_llm_tensorrt_llm"]["engine"]
    assert engine["status"] == "pending"
    assert engine["image"] == "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
    assert engine["command"].startswith("trtllm-build --checkpoint_dir checkpoint --output_dir engine ")
    version_dir = out / "tiny_llm_tensorrt_llm" / "1"
    assert (version_dir / "checkpoint" / "config.json").is_file()
    assert (version_dir / "checkpoint" / "rank0.safetensors").is_file()
    script = (version_dir / "build_engine.sh").read_text()
    assert "--gemm_plugin auto" in script and engine["cache_key"] in script
    for path in out.rglob("*"):
        if path.suffix in (".pbtxt", ".sh", ".json"):
            assert "${" not in path.read_text(), path
    assert "samples" in result.manifest["models"]["tiny_llm"]
    assert "outputs" not in result.manifest["models"]["tiny_llm"]["samples"]  # TRT fp16 may differ from CPU fp32


def test_build_engines_says_plainly_where_to_run_it(container_build, monkeypatch):
    from tritonize import load_spec
    from tritonize.errors import TritonizeError
    from tritonize.llm import build_engines

    spec_path, result = container_build
    monkeypatch.setenv("PATH", PATH_WITHOUT_TRTLLM)
    with pytest.raises(TritonizeError, match=r"TensorRT-LLM is not installed here.*build_engine.sh inside "
                                             r"nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"):
        build_engines(load_spec(spec_path), result.repository, terminal=Terminal(quiet=True, stderr=True))


def test_too_short_calibration_text_names_the_file_and_field(tmp_path):
    from tritonize.errors import ConversionError
    from tritonize.llm.quantize import calibration_texts
    from tritonize.llm.spec import CalibrationSpec

    text = tmp_path / "calib.txt"
    text.write_text("one line\n\nanother line\n")  # 2 samples: none left over to measure the error on
    field = "models[0].llm.quantization.calibration.text_file"
    with pytest.raises(ConversionError) as error:
        calibration_texts(CalibrationSpec(), text, field=field)
    assert error.value.one_line().startswith(f"{text} {field}: calibration text has 2 non-empty lines")


def test_fp8_above_the_error_budget_fails_the_build_naming_the_field(tiny_dir):
    from tritonize import build
    from tritonize.errors import ConversionError

    spec = write_spec(tiny_dir, "      quantization: {mode: fp8, max_logit_error: 0.01}\n"
                                "      limits: {max_batch_size: 2, max_input_len: 32, max_output_len: 16}\n",
                      name="strict.yaml")
    with pytest.raises(ConversionError) as error:
        build(spec, terminal=Terminal(quiet=True, stderr=True))
    text = error.value.one_line()
    assert "models[0].llm.quantization.max_logit_error" in text and "exceeds the budget 0.01" in text, text
