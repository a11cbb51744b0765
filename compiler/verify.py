"""Numeric verification: the converted ONNX graph under onnxruntime against the source framework.

onnxruntime runs on the CPU execution provider with one thread and sequential execution, so the
same samples give the same numbers on every run; errors are recorded to 3 significant digits so
the manifest is byte-stable.

Default tolerances, per output data type (element passes when |onnx - source| <= atol + rtol*|source|):
- FP32: atol 1e-4, rtol 1e-3. The ONNX kernels compute in float32 while sklearn/xgboost/lightgbm
  accumulate in float64 (and torch may sum in another order); a float32 sum of a few hundred terms
  drifts by ~1e-6 relative, tree-ensemble averages by ~1e-7 per tree. 1e-4/1e-3 leaves a 100x margin
  and still catches a wrong class order, a missing transform or a wrong activation.
- FP64: atol 1e-7, rtol 1e-6 (double kernels, only summation order differs).
- FP16: atol 1e-2, rtol 1e-2 (10-bit mantissa: one rounding is ~5e-4 relative, a few compound).
- BF16: atol 5e-2, rtol 2e-2 (7-bit mantissa: one rounding is ~4e-3 relative).
- integers, BOOL, STRING (labels): exact. `verify.max_label_mismatch` allows that fraction of
  samples to differ: a tree threshold stored as float32 in ONNX but float64 in the source can flip
  a sample lying within float32 rounding of a split. Rows whose label is allowed to differ are left
  out of the float comparison of that model's other outputs (their probabilities differ too).
`verify.atol` / `verify.rtol` in the spec replace the defaults for every floating output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConversionError, TritonizeError, first_line
from .samples import as_bytes, as_str
from .spec import TensorSpec, VerifySpec

if TYPE_CHECKING:
    from .converters import ConvertedModel

FLOAT_TOLERANCES = {"FP32": (1e-4, 1e-3), "FP64": (1e-7, 1e-6), "FP16": (1e-2, 1e-2), "BF16": (5e-2, 2e-2)}
NO_SOURCE_NOTE = "no source framework: checked that onnxruntime runs it"


def significant(value: float, digits: int = 3) -> float:
    """Round to `digits` significant digits so the manifest does not change with the last bits."""
    return float(f"{value:.{digits}g}")


# A share of samples (labels) or values (floats) beyond the tolerance above which a failed check is
# called a wrong conversion, with no tolerance to raise: split-boundary flips (a sample on a tree's
# threshold) touch a few samples, not this many. Floats also need errors of WRONG_CONVERSION_SCALE
# of the values themselves: a uniform small error (lower precision) is one a user may accept.
WRONG_CONVERSION_SHARE = 0.05
WRONG_CONVERSION_SCALE = 0.1


# The missing-value check: the tabular frameworks, whose models may take NaN for "missing" (trees
# route it, imputers fill it), and the share of floating-point cells it sets to NaN.
MISSING_VALUE_FRAMEWORKS = ("sklearn", "xgboost", "lightgbm")
MISSING_SHARE = 0.2
MISSING_DESCRIBED = "samples with missing values (NaN)"
MISSING_FIX = ("the conversion routes missing values unlike the source: fill them before the model (a SimpleImputer "
               "step) and refit, or set verify.missing_values: false if clients never send NaN")


def _wrong_conversion(check: OutputCheck) -> bool:
    return check.outside > WRONG_CONVERSION_SHARE and check.max_abs_error > WRONG_CONVERSION_SCALE * check.scale


@dataclass
class OutputCheck:
    name: str
    dtype: str
    exact: bool
    atol: float = 0.0
    rtol: float = 0.0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    mismatched_rows: int = 0
    outside: float = 0.0  # floats: the fraction of values beyond the tolerance (not persisted)
    scale: float = 0.0    # floats: the largest |expected| value (not persisted)
    passed: bool = True

    def to_manifest(self) -> dict[str, Any]:
        if self.exact:
            return {"dtype": self.dtype, "compare": "exact", "mismatched_samples": self.mismatched_rows,
                    "passed": self.passed}
        return {"dtype": self.dtype, "max_abs_error": significant(self.max_abs_error),
                "max_rel_error": significant(self.max_rel_error), "atol": self.atol, "rtol": self.rtol,
                "passed": self.passed}


@dataclass
class VerificationReport:
    model: str
    source: str | None  # framework compared against; None for a plain ONNX file
    samples: int
    checks: list[OutputCheck] = field(default_factory=list)
    max_label_mismatch: float = 0.0
    # What onnxruntime answered, shaped as Triton clients see it ([batch] + dims).
    onnx_outputs: dict[str, np.ndarray] = field(default_factory=dict)
    # Outputs the source answered alike for every sample: the samples may miss where the model varies.
    constant: list[str] = field(default_factory=list)
    # How many samples with missing values (NaN) passed too (with_missing_values); 0: none checked.
    missing_values: int = 0

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def tolerances(self) -> dict[str, dict[str, float]]:
        """Per-output tolerance for comparing a served answer with the source's (0/0: exact)."""
        return {c.name: {"atol": c.atol, "rtol": c.rtol} for c in self.checks}

    def to_manifest(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"runtime": "onnxruntime CPUExecutionProvider, 1 thread", "samples": self.samples}
        if self.source is None:
            entry.update({"source": None, "note": NO_SOURCE_NOTE, "passed": True})
            return entry
        entry["source"] = self.source
        if self.max_label_mismatch:
            entry["max_label_mismatch"] = self.max_label_mismatch
        entry["outputs"] = {check.name: check.to_manifest() for check in self.checks}
        if self.missing_values:
            entry["samples_with_missing_values"] = self.missing_values
        entry["passed"] = self.passed
        return entry


def verify(converted: ConvertedModel, samples: dict[str, np.ndarray], settings: VerifySpec, *,
           described: str = "samples") -> VerificationReport:
    """Run the ONNX graph on `samples` and compare with the source framework; raise ConversionError
    (one line, with the numbers and the fix) when an output disagrees beyond tolerance. `described`
    names the samples in that line."""
    from .onnx_signature import session

    runner = session(converted.onnx_model, converted.name)  # one for this run and the rows-alone check
    onnx_outputs = run_onnx(converted, samples, runner)
    rows = len(next(iter(samples.values()))) if samples and converted.batch_axis else 1
    report = VerificationReport(converted.name, converted.framework if converted.reference else None,
                                rows, max_label_mismatch=settings.max_label_mismatch, onnx_outputs=onnx_outputs)
    for tensor in converted.outputs:
        _fits_dims(converted, tensor, onnx_outputs[tensor.name], described)
    if converted.reference is None:
        report.checks = [OutputCheck(t.name, t.dtype, exact=t.dtype not in FLOAT_TOLERANCES)
                         for t in converted.outputs]
        for check in report.checks:
            if not check.exact:
                check.atol, check.rtol = _tolerance(check.dtype, settings)
        _rows_independent(converted, samples, onnx_outputs, settings, runner)
        return report
    try:
        expected = converted.reference(samples)
    except TritonizeError:
        raise
    except Exception as exc:  # the source's own error on samples it was not fitted for
        raise ConversionError(
            f"model '{converted.name}': {converted.framework} cannot answer the verification {described}: "
            f"{type(exc).__name__}: {first_line(exc, 200)}", loc=("inputs",),
            fix="give sample_inputs with values the model was fitted on, or declare each input's dtype and "
                "range as it was fitted (INT64 for an integer column of a ColumnTransformer)") from None
    if converted.batch_axis and rows > 1:
        answers = {name: np.asarray(value) for name, value in expected.items()}
        constant = [name for name, value in answers.items() if value.ndim and (value == value[:1]).all()]
        # A label alike for every sample says the samples miss the model's classes; a constant
        # float output beside varying ones may be one by design (a mask, a scale).
        discrete = {t.name for t in converted.outputs if t.dtype not in FLOAT_TOLERANCES}
        report.constant = constant if len(constant) == len(expected) else [n for n in constant if n in discrete]
    exact_outputs = [t for t in converted.outputs if t.dtype not in FLOAT_TOLERANCES]
    float_outputs = [t for t in converted.outputs if t.dtype in FLOAT_TOLERANCES]
    # Rows where some discrete output differs, allowed by max_label_mismatch, are excluded below.
    excused = np.zeros(rows, dtype=bool)
    allowed = int(settings.max_label_mismatch * rows)
    for tensor in exact_outputs:
        _same_shape(converted.name, tensor, onnx_outputs[tensor.name], expected[tensor.name])
        differing = _differing_rows(tensor, onnx_outputs[tensor.name], expected[tensor.name], converted.batch_axis)
        check = OutputCheck(tensor.name, tensor.dtype, exact=True, mismatched_rows=int(differing.sum()))
        report.checks.append(check)
        if check.mismatched_rows <= allowed:
            excused |= differing
            continue
        check.passed = False
        share = check.mismatched_rows / rows
        raise ConversionError(
            f"model '{converted.name}' output '{tensor.name}': ONNX differs from {converted.framework} on "
            f"{check.mismatched_rows} of {rows} {described} (allowed {allowed}, exact {tensor.dtype} compare)",
            loc=("verify",),
            fix=MISSING_FIX if described == MISSING_DESCRIBED else (
                f"if these are split-boundary flips, set verify.max_label_mismatch to {significant(share * 1.5, 2)}"
                if share <= WRONG_CONVERSION_SHARE else
                f"{share:.0%} of the samples differ, far more than split-boundary flips: " + (
                    converted.wrong_conversion_fix or "the conversion is wrong (check the inputs' dtypes and "
                                                      "categories against how the model was fitted)")))
    for tensor in float_outputs:
        atol, rtol = _tolerance(tensor.dtype, settings)
        got, want = onnx_outputs[tensor.name], expected[tensor.name]
        _same_shape(converted.name, tensor, got, want)
        if converted.batch_axis and excused.any():
            got, want = got[~excused], want[~excused]
        check = _compare_float(tensor, got, want, atol, rtol)
        report.checks.append(check)
        if not check.passed:
            raise ConversionError(
                f"model '{converted.name}' output '{tensor.name}': ONNX differs from {converted.framework} by max abs "
                f"error {significant(check.max_abs_error)} / max rel error {significant(check.max_rel_error)} on "
                f"{rows} {described}, above tolerance atol {atol:g} + rtol {rtol:g}*|expected|",
                loc=("verify",),
                fix=MISSING_FIX if described == MISSING_DESCRIBED else (
                    f"the ONNX graph answers NaN or infinity where {converted.framework} answers a number, or the "
                    "other way round (an input such as a row with every position masked): give sample_inputs "
                    "without such inputs if clients never send them, or make the model answer them with numbers"
                    if not np.isfinite(check.max_abs_error) else
                    f"if that error is acceptable, raise verify.atol to {significant(check.max_abs_error * 2, 2):g} "
                    "(or verify.rtol); otherwise the conversion is wrong" if not _wrong_conversion(check)
                    else f"{check.outside:.0%} of the values are off, by up to {significant(check.max_abs_error):g} "
                         f"against values up to {significant(check.scale):g}: " + (
                             converted.wrong_conversion_fix or "the conversion is wrong, no tolerance to raise (check "
                             "the model's objective and outputs against what the converter supports)")))
    _rows_independent(converted, samples, onnx_outputs, settings, runner)
    return report


def _rows_independent(converted: ConvertedModel, samples: dict[str, np.ndarray], onnx_outputs: dict[str, np.ndarray],
                      settings: VerifySpec, runner: Any) -> None:
    """A batching model answers each row as it would alone: Triton's dynamic batching puts other
    clients' requests in the same batch. A model that mixes rows (statistics over the batch axis,
    an RNN whose first axis is time) verifies against its source on one batch, and is then served
    wrong; a few rows are answered alone here and compared with their answers in the batch."""
    rows = len(next(iter(samples.values()))) if samples and converted.batch_axis else 0
    # Labels only where there is nothing else to compare: a float near a tie (kernels for one row
    # and for 64 may round its last bit apart) could flip an argmax without any mixing of rows.
    floats = [t for t in converted.outputs if t.dtype in FLOAT_TOLERANCES]
    for row in sorted({0, rows // 2, rows - 1}) if rows > 1 else ():
        alone = run_onnx(converted, {name: array[row:row + 1] for name, array in samples.items()}, runner)
        for tensor in floats or converted.outputs:
            got, want = alone[tensor.name][:1], onnx_outputs[tensor.name][row:row + 1]
            if tensor.dtype in FLOAT_TOLERANCES:
                check = _compare_float(tensor, got, want, *_tolerance(tensor.dtype, settings))
                differs, by = not check.passed, f" (max abs error {significant(check.max_abs_error)})"
            else:
                differs, by = got.shape != want.shape or bool(np.asarray(got != want).any()), ""
            if differs:
                raise ConversionError(
                    f"model '{converted.name}' output '{tensor.name}': sample {row} answered alone differs from its "
                    f"answer in a batch of {rows}{by}: the model mixes the rows of a batch, and Triton's dynamic "
                    "batching puts other clients' requests in one", loc=("max_batch_size",),
                    fix="make each row's answer depend on that row alone (no statistics over the batch axis; "
                        "batch_first=True for an RNN), or set max_batch_size: 0")


def _fits_dims(converted: ConvertedModel, tensor: TensorSpec, answer: np.ndarray, described: str) -> None:
    """The graph's answer has the shape the config declares: a size that follows the input values
    (torch.unique) can pass the shape probe as a fixed dim."""
    shape = list(answer.shape[1:] if converted.batch_axis else answer.shape)
    if len(shape) == len(tensor.dims) and all(d in (-1, s) for d, s in zip(tensor.dims, shape)):
        return
    dims = [d if d == s else -1 for d, s in zip(tensor.dims, shape)] if len(shape) == len(tensor.dims) else \
        [-1] * len(shape)
    raise ConversionError(f"model '{converted.name}' output '{tensor.name}': the ONNX graph answered shape {shape} on "
                          f"the verification {described}, where its dims are {list(tensor.dims)} (batch dim excluded): "
                          "its size follows the input values", loc=("outputs",),
                          fix=f"declare the output with dims: {dims}")


def with_missing_values(converted: ConvertedModel, samples: dict[str, np.ndarray],
                        seed: int) -> dict[str, np.ndarray] | None:
    """`samples` with MISSING_SHARE of their floating-point cells set to NaN (seeded), to be
    verified like the others when the source answers them: a converter can route a NaN down
    another branch than the source (skl2onnx did, for scikit-learn's forests) and samples without
    one never show it. None when the model has no such input, is not tabular, or its source
    refuses NaN (most of scikit-learn's estimators raise on it)."""
    if converted.reference is None or converted.framework not in MISSING_VALUE_FRAMEWORKS:
        return None
    floats = {t.name for t in converted.inputs if t.dtype in FLOAT_TOLERANCES}
    if not floats.intersection(samples):
        return None
    rng = np.random.default_rng(seed)
    missing = dict(samples)
    for name in sorted(floats.intersection(samples)):
        array = samples[name].copy()
        array[rng.random(array.shape) < MISSING_SHARE] = np.nan
        missing[name] = array
    try:
        converted.reference(missing)
    except Exception:  # the source takes no NaN (its own error types): nothing a client may send
        return None
    return missing


def run_onnx(converted: ConvertedModel, samples: dict[str, np.ndarray], runner: Any = None) -> dict[str, np.ndarray]:
    """One deterministic onnxruntime run (on `runner`, a session of the graph, when the caller
    holds one); inputs and outputs shaped as clients see them."""
    from .onnx_signature import quiet_run, session

    feeds = {t.name: _to_graph(samples[t.name], t, converted.batch_axis) for t in converted.inputs if t.name in samples}
    runner = runner if runner is not None else session(converted.onnx_model, converted.name)
    try:
        answers = runner.run([t.name for t in converted.outputs], feeds, quiet_run())
    except Exception as exc:  # onnxruntime's own exception types derive from Exception only
        raise ConversionError(f"model '{converted.name}': onnxruntime cannot run the ONNX graph: "
                              f"{first_line(exc)}", loc=(),
                              fix="check the model's inputs (names, dtypes, dims, range) against the graph") from None
    rows = len(next(iter(samples.values()))) if samples else 0
    return {t.name: _to_client(answer, t, converted.batch_axis, rows) for t, answer in zip(converted.outputs, answers)}


def _to_graph(array: np.ndarray, tensor: TensorSpec, batch_axis: bool) -> np.ndarray:
    if tensor.dtype == "STRING":  # Triton carries bytes; onnxruntime wants str
        array = as_str(array)
    if tensor.reshape is not None:
        array = array.reshape(([len(array)] if batch_axis else []) + list(tensor.reshape))
    return array


def _to_client(array: np.ndarray, tensor: TensorSpec, batch_axis: bool, rows: int) -> np.ndarray:
    array = np.asarray(array)
    if tensor.dtype == "STRING":
        array = as_bytes(array)
    if tensor.reshape is not None:
        array = array.reshape(([rows] if batch_axis else []) + list(tensor.dims))
    return array


def _tolerance(dtype: str, settings: VerifySpec) -> tuple[float, float]:
    atol, rtol = FLOAT_TOLERANCES[dtype]
    return (settings.atol if settings.atol is not None else atol, settings.rtol if settings.rtol is not None else rtol)


def _differing_rows(tensor: TensorSpec, got: np.ndarray, want: np.ndarray, batch_axis: bool) -> np.ndarray:
    unequal = np.asarray(got != want)
    if not batch_axis:
        return np.atleast_1d(unequal.any())
    return unequal.reshape(len(unequal), -1).any(axis=1)


def _compare_float(tensor: TensorSpec, got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> OutputCheck:
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    error = np.abs(got64 - want64)
    # NaN where the source says NaN is agreement; NaN anywhere else is an infinite error.
    both_nan = np.isnan(got64) & np.isnan(want64)
    error = np.where(both_nan, 0.0, np.where(np.isnan(error), np.inf, error))
    magnitude = np.abs(want64)
    # Relative error is reported where it means something: where |expected| exceeds atol.
    significant_rows = magnitude > atol
    relative = error[significant_rows] / magnitude[significant_rows]
    check = OutputCheck(tensor.name, tensor.dtype, exact=False, atol=atol, rtol=rtol,
                        max_abs_error=float(error.max()) if error.size else 0.0,
                        max_rel_error=float(relative.max()) if relative.size else 0.0)
    beyond = error > atol + rtol * magnitude
    check.passed = not bool(beyond.any())
    check.outside = float(beyond.mean()) if beyond.size else 0.0
    check.scale = float(magnitude.max()) if magnitude.size else 0.0
    return check


def _same_shape(model: str, tensor: TensorSpec, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape:
        raise ConversionError(f"model '{model}' output '{tensor.name}': ONNX answered shape {list(got.shape)} where "
                              f"the source answered {list(want.shape)}", loc=("outputs",),
                              fix="declare the output dims the model really produces")
