"""FP8 post-training quantization with NVIDIA ModelOpt and export of a TensorRT-LLM checkpoint,
plus what it costs: the served (dequantized) checkpoint against the original on held-out prompts.

Runs on CPU here (slow only for big models), on GPU where torch sees one.
"""
from __future__ import annotations

import contextlib
import copy
import io
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConversionError
from ..optional import loaded, optional
from ..spec.llm import CalibrationSpec, QuantizationSpec
from . import checkpoint_config
from .corpus import corpus_lines

torch = optional("torch", purpose="the LLM path (checkpoint export)", extra="llm")
transformers = optional("transformers", purpose="the LLM path (checkpoint export)", extra="llm")
modelopt_export = optional("modelopt.torch.export", purpose="TensorRT-LLM checkpoint export", extra="llm",
                           package="nvidia-modelopt")
modelopt_quantization = optional("modelopt.torch.quantization", purpose="FP8 quantization", extra="llm",
                                 package="nvidia-modelopt")

# Every HELD_OUT_EVERY-th sample is kept out of calibration and used to measure the error.
HELD_OUT_EVERY = 4


@dataclass
class QuantizationReport:
    mode: str
    kv_cache_fp8: bool
    calibration_samples: int
    held_out_prompts: int
    held_out_positions: int
    max_logit_error: float          # max |logit_fp8 - logit_orig| over all held-out positions
    mean_logit_error: float         # mean over positions of each position's max |difference|
    token_agreement: float          # fraction of positions with the same greedy next token
    budget: dict

    def as_manifest(self) -> dict:
        return asdict(self)


def calibration_texts(calibration: CalibrationSpec, text_file: Path | None) -> tuple[list[str], list[str]]:
    """(calibration samples, held-out prompts) from the spec's text file or the built-in corpus.

    A too-short file is an error naming that file and the model's llm.quantization.calibration.text_file."""
    lines = corpus_lines() if text_file is None else [
        line.strip() for line in text_file.read_text().splitlines() if line.strip()]
    held_out = lines[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]
    calibrate = [line for i, line in enumerate(lines) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    if not calibrate or not held_out:
        raise ConversionError(f"calibration text has {len(lines)} non-empty lines; FP8 needs at least "
                              f"{HELD_OUT_EVERY} (one in {HELD_OUT_EVERY} is held out to measure the error)",
                              file=text_file, loc=("llm", "quantization", "calibration", "text_file"),
                              fix="give a longer text file")
    return calibrate[:calibration.samples], held_out


def quiet_transformers():
    """transformers' weight-loading progress bars and ModelOpt's prints would bury the build's own
    output; their warnings (untested version pairs, lm_head left unquantized) are expected here."""
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@contextlib.contextmanager
def _silenced():
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _quantized(model, hf_dir: Path, quantization: QuantizationSpec, calibration: list[str], device: str):
    """The model FP8-quantized by ModelOpt, calibrated on the samples (FP8_DEFAULT_CFG, plus the
    FP8 KV cache config when asked)."""
    with _silenced():
        mtq = loaded(modelopt_quantization)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    max_length = quantization.calibration.max_length

    def forward_loop(m):
        with torch.no_grad():
            for text in calibration:
                ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length).input_ids
                m(ids.to(device))

    config = copy.deepcopy(mtq.FP8_DEFAULT_CFG)  # ModelOpt's dict is module-global
    if quantization.kv_cache_fp8:
        kv = copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"])
        if isinstance(config["quant_cfg"], list):  # ModelOpt >= 0.4x: ordered rules, last wins
            config["quant_cfg"].extend(kv)
        else:
            config["quant_cfg"].update(kv)
    with _silenced():
        return mtq.quantize(model, config, forward_loop)


def export_checkpoint(hf_dir: Path, out_dir: Path, quantization: QuantizationSpec, *, dtype: str,
                      tensor_parallel: int, calibration: list[str], decoder: str) -> None:
    """Quantize (mode fp8) or not (mode none) and write a TensorRT-LLM checkpoint to out_dir, its
    config.json completed with the architecture fields ModelOpt leaves out (checkpoint_config.py)."""
    with _silenced():  # ModelOpt warns at import about untested transformers versions
        export = loaded(modelopt_export)
    quiet_transformers()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device).eval()
    if quantization.mode == "fp8":
        model = _quantized(model, hf_dir, quantization, calibration, device)
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), _silenced():
        export.export_tensorrt_llm_checkpoint(model, decoder, torch_dtype, str(out_dir),
                                              inference_tensor_parallel=tensor_parallel)
    checkpoint_config.complete(out_dir, transformers.AutoConfig.from_pretrained(hf_dir))


def export_hf(hf_dir: Path, out_dir: Path, quantization: QuantizationSpec, *, dtype: str,
              calibration: list[str], tokenizer_files: tuple[str, ...]) -> None:
    """The llmapi target's checkpoint: a HuggingFace directory in the serving dtype, FP8 as
    ModelOpt's unified HF export (export_hf_checkpoint: FP8 weights with weight_scale /
    input_scale, hf_quant_config.json, which TensorRT-LLM's PyTorch backend detects by itself),
    with the tokenizer the LLM API loads from the same directory. The model is loaded in the
    serving dtype before calibration: modules loaded in float32 would stay float32 in the export."""
    with _silenced():
        export = loaded(modelopt_export)
    quiet_transformers()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch_dtype).to(device).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), _silenced():
        if quantization.mode == "fp8":
            model = _quantized(model, hf_dir, quantization, calibration, device)
            export.export_hf_checkpoint(model, dtype=torch_dtype, export_dir=str(out_dir))
        else:
            model.save_pretrained(out_dir)
    for name in tokenizer_files:
        if (hf_dir / name).is_file():
            shutil.copyfile(hf_dir / name, out_dir / name)
    checkpoint_config.complete_hf(out_dir, transformers.AutoConfig.from_pretrained(hf_dir))


def measure(hf_dir: Path, checkpoint_dir: Path, quantization: QuantizationSpec, held_out: list[str],
            load_served) -> QuantizationReport:
    """Logit error and next-token agreement of the served checkpoint vs the original model.

    load_served(checkpoint_dir) builds the model exactly as the CPU engine serves it: from the
    checkpoint alone, so an architecture field the export got wrong shows up as error here."""
    quiet_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    original = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    served = load_served(str(checkpoint_dir))
    max_error, total_error, agree, positions = 0.0, 0.0, 0, 0
    max_length = quantization.calibration.max_length
    with torch.no_grad():
        for text in held_out:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length).input_ids
            a, b = original(ids).logits[0].float(), served(ids).logits[0].float()
            diff = (a - b).abs()
            max_error = max(max_error, float(diff.max()))
            total_error += float(diff.max(dim=-1).values.sum())
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            positions += ids.shape[1]
    return QuantizationReport(
        mode=quantization.mode, kv_cache_fp8=quantization.kv_cache_fp8,
        calibration_samples=0, held_out_prompts=len(held_out), held_out_positions=positions,
        # 3 significant digits: the manifest stays byte-stable across hosts whose float kernels
        # differ in the last bits, and the budget comparison needs no more.
        max_logit_error=_three_digits(max_error), mean_logit_error=_three_digits(total_error / max(positions, 1)),
        token_agreement=_three_digits(agree / max(positions, 1)),
        budget={"max_logit_error": quantization.max_logit_error,
                "min_token_agreement": quantization.min_token_agreement})


def _three_digits(value: float) -> float:
    return float(f"{value:.3g}")


def check_budget(report: QuantizationReport) -> None:
    """Raise a ConversionError located at the model's llm.quantization budget field that is broken."""
    budget = report.budget
    if report.max_logit_error > budget["max_logit_error"]:
        raise ConversionError(
            f"FP8 max logit error {report.max_logit_error:.4f} exceeds the budget {budget['max_logit_error']}",
            loc=("llm", "quantization", "max_logit_error"),
            fix="raise max_logit_error, calibrate on more representative text, or use mode: none")
    if report.token_agreement < budget["min_token_agreement"]:
        raise ConversionError(
            f"FP8 next-token agreement {report.token_agreement:.4f} is below the budget {budget['min_token_agreement']}",
            loc=("llm", "quantization", "min_token_agreement"),
            fix="lower min_token_agreement, calibrate on more representative text, or use mode: none")
