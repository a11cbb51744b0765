"""Verification: onnxruntime vs the source framework, the errors it raises, the manifest it writes,
and the samples it runs on."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tritonize.converters import convert
from tritonize.errors import ConversionError, SpecError
from tritonize.samples import make_samples
from tritonize.spec import ModelSpec, TensorSpec, VerifySpec, load_spec
from tritonize.verify import FLOAT_TOLERANCES, significant, verify

FACTORIES = '''
def forest():
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    return RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0, n_jobs=1).fit(*load_iris(return_X_y=True))
'''


@pytest.fixture(scope="module")
def forest(tmp_path_factory):
    """A converted iris RandomForest and its spec entry."""
    root: Path = tmp_path_factory.mktemp("verify")
    (root / "verify_factories.py").write_text(FACTORIES)
    (root / "model.yaml").write_text(yaml.safe_dump({"models": [
        {"name": "iris_forest", "source": {"framework": "sklearn", "factory": "verify_factories:forest"},
         "inputs": [{"name": "input", "dtype": "FP32", "dims": [4], "range": [0, 8]}]}]}))
    spec = load_spec(root / "model.yaml")
    model = spec.models[0]
    return model, convert(model, spec)


def samples_for(model: ModelSpec, converted, rows: int = 64) -> dict[str, np.ndarray]:
    return make_samples(model, converted.inputs, batch=rows, seed=0)


def perturbed(converted, output: str, change):
    """The same converted graph, compared against a source whose `output` answer is changed."""
    def reference(inputs):
        answer = converted.reference(inputs)
        answer[output] = change(answer[output].copy())
        return answer

    return dataclasses.replace(converted, reference=reference)


def test_default_tolerances_pass_and_manifest_is_rounded(forest):
    model, converted = forest
    report = verify(converted, samples_for(model, converted), model.verify)
    entry = report.to_manifest()
    assert entry["passed"] and entry["samples"] == 64
    probabilities = entry["outputs"]["probabilities"]
    assert (probabilities["atol"], probabilities["rtol"]) == FLOAT_TOLERANCES["FP32"] == (1e-4, 1e-3)
    # 3 significant digits: the manifest stays byte-identical when the last bits move.
    assert probabilities["max_abs_error"] == significant(probabilities["max_abs_error"])
    assert report.tolerances() == {"label": {"atol": 0.0, "rtol": 0.0},
                                   "probabilities": {"atol": 1e-4, "rtol": 1e-3}}
    again = verify(converted, samples_for(model, converted), model.verify).to_manifest()
    assert json.dumps(again, sort_keys=True) == json.dumps(entry, sort_keys=True)


def test_significant_digits():
    assert significant(1.23456e-5) == 1.23e-5
    assert significant(0.0) == 0.0
    assert significant(987654.0) == 988000.0


def test_perturbed_probabilities_raise_with_the_numbers(forest):
    model, converted = forest
    wrong = perturbed(converted, "probabilities", lambda p: p + np.float32(0.01))
    with pytest.raises(ConversionError) as failure:
        verify(wrong, samples_for(model, converted), model.verify)
    message = failure.value.one_line()
    assert "model 'iris_forest' output 'probabilities'" in message
    assert "max abs error 0.01" in message and "atol 0.0001 + rtol 0.001" in message
    assert "raise verify.atol to 0.02" in message and "\n" not in message


def test_a_wrong_conversion_suggests_no_tolerance(forest):
    """Errors the size of the values on most samples, or most labels differing, are a wrong
    conversion: the fix must not be a tolerance that would accept it (a trial user was told to
    raise atol to 500, or max_label_mismatch to 1.5)."""
    model, converted = forest
    samples = samples_for(model, converted)
    wrong = perturbed(converted, "probabilities", lambda p: 1 - p)
    with pytest.raises(ConversionError) as failure:
        verify(wrong, samples, model.verify)
    message = failure.value.one_line()
    assert "the conversion is wrong, no tolerance to raise" in message and "raise verify.atol" not in message
    shifted = perturbed(converted, "label", lambda labels: (labels + 1) % 3)
    with pytest.raises(ConversionError) as failure:
        verify(shifted, samples, model.verify)
    message = failure.value.one_line()
    assert "100% of the samples differ" in message and "max_label_mismatch" not in message


def test_raised_tolerance_accepts_the_same_error(forest):
    model, converted = forest
    wrong = perturbed(converted, "probabilities", lambda p: p + np.float32(0.01))
    report = verify(wrong, samples_for(model, converted), VerifySpec(atol=0.02))
    assert report.passed and report.to_manifest()["outputs"]["probabilities"]["atol"] == 0.02


def test_zero_tolerance_catches_float32_rounding(forest):
    # The forest's float32 ONNX average differs from sklearn's float64 one in the last bits (~1e-7);
    # an exact demand on a float output must therefore fail, and say by how much.
    model, converted = forest
    with pytest.raises(ConversionError, match=r"max abs error [0-9.e-]+ .*above tolerance atol 0 \+ rtol 0"):
        verify(converted, samples_for(model, converted), VerifySpec(atol=0, rtol=0))


def test_label_mismatch_is_exact_unless_allowed(forest):
    model, converted = forest
    samples = samples_for(model, converted)

    def flip_two(labels):
        labels[:2] = (labels[:2] + 1) % 3
        return labels

    wrong = perturbed(converted, "label", flip_two)
    with pytest.raises(ConversionError, match=r"output 'label': ONNX differs from sklearn on 2 of 64 samples "
                                              r"\(allowed 0, exact INT64 compare\).*max_label_mismatch to 0.047"):
        verify(wrong, samples, model.verify)
    report = verify(wrong, samples, VerifySpec(max_label_mismatch=0.05))
    entry = report.to_manifest()
    assert entry["passed"] and entry["max_label_mismatch"] == 0.05
    assert entry["outputs"]["label"]["mismatched_samples"] == 2


def test_excused_label_rows_are_left_out_of_the_probability_check(forest):
    # A flipped row's probabilities differ too; with the flip allowed they must not fail the model.
    model, converted = forest
    samples = samples_for(model, converted)

    def reference(inputs):
        answer = converted.reference(inputs)
        answer["label"][0] = (answer["label"][0] + 1) % 3
        answer["probabilities"][0] = answer["probabilities"][0][::-1]
        return answer

    wrong = dataclasses.replace(converted, reference=reference)
    assert verify(wrong, samples, VerifySpec(max_label_mismatch=0.02)).passed


def test_shape_disagreement_is_reported(forest):
    model, converted = forest
    wrong = perturbed(converted, "probabilities", lambda p: p[:, :2])
    with pytest.raises(ConversionError, match=r"output 'probabilities': ONNX answered shape \[64, 3\] where the "
                                              r"source answered \[64, 2\]"):
        verify(wrong, samples_for(model, converted), model.verify)


def test_graph_that_cannot_run_on_the_samples(forest):
    model, converted = forest
    samples = {"input": np.zeros((4, 5), np.float32)}
    with pytest.raises(ConversionError, match="onnxruntime cannot run the ONNX graph"):
        verify(converted, samples, model.verify)


# -- samples ------------------------------------------------------------------------------------

def model_with(inputs: list[dict], **extra) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "source": {"framework": "onnx", "path": "m.onnx"},
                                     "inputs": inputs, **extra})


def test_generated_samples_are_seeded_typed_and_in_range():
    model = model_with([{"name": "x", "dtype": "FP32", "dims": [3], "range": [-2, 5]},
                        {"name": "ids", "dtype": "INT64", "dims": [-1], "range": [1, 9]},
                        {"name": "mask", "dtype": "BOOL", "dims": [2]},
                        {"name": "text", "dtype": "STRING", "dims": [1]}])
    first = make_samples(model, model.inputs, batch=16, seed=7)
    assert first["x"].dtype == np.float32 and first["x"].shape == (16, 3)
    assert first["x"].min() >= -2 and first["x"].max() <= 5
    assert first["ids"].dtype == np.int64 and first["ids"].shape == (16, 4)  # -1 sampled as 4
    assert first["ids"].min() >= 1 and first["ids"].max() <= 9
    assert first["mask"].dtype == np.bool_
    assert first["text"].dtype == object and isinstance(first["text"][0, 0], bytes)
    again = make_samples(model, model.inputs, batch=16, seed=7)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    other = make_samples(model, model.inputs, batch=16, seed=8)
    assert not np.array_equal(first["x"], other["x"])
    unbatched = model_with([{"name": "x", "dtype": "FP32", "dims": [-1, 3]}], max_batch_size=0)
    assert make_samples(unbatched, unbatched.inputs, batch=16, seed=7)["x"].shape == (4, 3)


def test_default_range_is_zero_to_one():
    tensor = TensorSpec(name="x", dtype="FP16", dims=[1000])
    model = model_with([tensor.model_dump()])
    values = make_samples(model, model.inputs, batch=1, seed=0)["x"]
    assert values.dtype == np.float16 and values.min() >= 0 and values.max() <= 1


def test_spec_sample_inputs_win_and_are_checked():
    inputs = [{"name": "x", "dtype": "FP32", "dims": [2]}, {"name": "s", "dtype": "STRING", "dims": [1]}]
    model = model_with(inputs, sample_inputs={"x": [[1, 2], [3, 4]], "s": [["a"], ["b"]]})
    samples = make_samples(model, model.inputs, batch=64, seed=0)
    assert samples["x"].dtype == np.float32 and samples["x"].tolist() == [[1, 2], [3, 4]]
    assert samples["s"].tolist() == [[b"a"], [b"b"]]
    bad_shape = model_with(inputs, sample_inputs={"x": [[1, 2, 3]], "s": [["a"]]})
    with pytest.raises(SpecError, match=r"sample_inputs.x: has shape \[1, 3\], expected \[batch, 2\]"):
        make_samples(bad_shape, bad_shape.inputs, batch=1, seed=0)
    missing = model_with(inputs, sample_inputs={"x": [[1, 2]]})
    with pytest.raises(SpecError, match="sample_inputs lacks input\\(s\\) s"):
        make_samples(missing, missing.inputs, batch=1, seed=0)


def test_empty_integer_range_is_a_user_error():
    model = model_with([{"name": "n", "dtype": "INT32", "dims": [1], "range": [0.2, 0.8]}])
    with pytest.raises(SpecError, match=r"range \[0.2, 0.8\] holds no INT32 value"):
        make_samples(model, model.inputs, batch=2, seed=0)
