"""Converters end to end on tiny real models: convert, verify against the source framework, the
same bytes twice, spec overrides, and the errors users meet. Plus the python-backend ONNX runner
(batching logic directly, then served by a real tritonserver) and the demo's example models."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tritonize.converters import convert, converted_frameworks
from tritonize.errors import ConversionError, MissingDependency, SpecError
from tritonize.frameworks import FRAMEWORKS
from tritonize.samples import make_samples
from tritonize.spec import Spec, SpecSource, load_spec
from tritonize.verify import verify

# Factories the specs below name; trained in milliseconds, deterministic (fixed seeds, one thread).
FACTORIES = '''
import numpy as np


def _iris():
    from sklearn.datasets import load_iris
    return load_iris(return_X_y=True)


def _diabetes():
    from sklearn.datasets import load_diabetes
    return load_diabetes(return_X_y=True)


def logistic():
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(max_iter=500).fit(*_iris())


def forest():
    from sklearn.ensemble import RandomForestClassifier
    return RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0, n_jobs=1).fit(*_iris())


def ridge():
    from sklearn.linear_model import Ridge
    return Ridge().fit(*_diabetes())


def xgb_classifier():
    from xgboost import XGBClassifier
    return XGBClassifier(n_estimators=5, max_depth=2, random_state=0, n_jobs=1).fit(*_iris())


def lgbm_classifier():
    from lightgbm import LGBMClassifier
    return LGBMClassifier(n_estimators=5, num_leaves=4, random_state=0, n_jobs=1, deterministic=True,
                          force_row_wise=True, verbose=-1).fit(*_iris())


def mlp():
    import torch
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).eval()


def two_heads():
    import torch

    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(8, 4)

        def forward(self, x):
            hidden = self.body(x)
            return hidden.softmax(dim=1), hidden.argmax(dim=1)

    torch.manual_seed(0)
    return Heads().eval()


def dict_heads():
    """two_heads' answers as {"probs": ..., "label": ...}, as many modules answer."""
    import torch

    class DictHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = two_heads()

        def forward(self, x):
            probs, label = self.heads(x)
            return {"probs": probs, "label": label}

    return DictHeads().eval()


def needs_absent_package():
    import tritonize_absent_package  # noqa: F401


def pool():
    """Mean and running sum over a variable-length axis."""
    import torch

    class SequencePool(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=1, keepdim=True), x.cumsum(dim=1)

    return SequencePool().eval()


def not_fitted():
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression()


def xgb_on_named_columns():
    import pandas
    from xgboost import XGBClassifier
    features, labels = _iris()
    frame = pandas.DataFrame(features, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    return XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(frame, labels)


def scaler_xgb_pipeline():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from xgboost import XGBClassifier
    return make_pipeline(StandardScaler(), XGBClassifier(n_estimators=5, max_depth=2, random_state=0, n_jobs=1)).fit(*_iris())


def onehot_on_strings():
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder
    colours = np.array([["red"], ["green"], ["blue"], ["red"], ["green"], ["blue"]])
    return make_pipeline(OneHotEncoder(), LogisticRegression()).fit(colours, [0, 1, 0, 0, 1, 0])


def svc_without_probability():
    from sklearn.svm import SVC
    return SVC().fit(*_iris())


def nested_heads():
    import torch

    class Nested(torch.nn.Module):
        def forward(self, x):
            return x, (x.softmax(dim=1), x.sum(dim=1))

    return Nested().eval()


def batch_centered():
    """Each row minus the batch's mean: right on one batch, wrong when Triton batches requests."""
    import torch

    class Centered(torch.nn.Module):
        def forward(self, x):
            return x - x.mean(dim=0, keepdim=True)

    return Centered().eval()


def centered_argmax():
    """batch_centered's answer as a label only: the rows-alone check compares labels exactly."""
    import torch

    class CenteredArgmax(torch.nn.Module):
        def forward(self, x):
            return (x - x.mean(dim=0, keepdim=True)).argmax(dim=-1, keepdim=True)

    return CenteredArgmax().eval()


def gru_time_first():
    """A GRU without batch_first: its first axis is time, which Triton would take for the batch."""
    import torch

    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(8, 4)

        def forward(self, x):
            return self.gru(x)[0]

    torch.manual_seed(0)
    return Recurrent().eval()


def unique_values():
    import torch

    class Unique(torch.nn.Module):
        def forward(self, x):
            return torch.unique(x)

    return Unique().eval()


def whole_batch_sum():
    import torch

    class Total(torch.nn.Module):
        def forward(self, x):
            return x.sum()

    return Total().eval()


def in_training_mode():
    import torch
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5)).train()


def value_dependent_loop():
    """A Python loop whose count comes from the input's values: the trace freezes it."""
    import torch

    class Loop(torch.nn.Module):
        def forward(self, x):
            for _ in range(int(x.abs().sum() * 2) % 4):
                x = x * 2
            return x

    return Loop().eval()


def padded_encoder():
    """nn.TransformerEncoder with a key padding mask: its eval-mode fast path does not export."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(32, 16)
            layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)

        def forward(self, ids, padding):
            # The first position (a CLS token) is never padded: a row with every position masked
            # answers NaN in ONNX's softmax and a number in torch's attention.
            padding = torch.cat([torch.zeros_like(padding[:, :1]), padding[:, 1:]], dim=1)
            return self.encoder(self.embed(ids), src_key_padding_mask=padding).mean(dim=1)

    torch.manual_seed(0)
    return Encoder().eval()


def rfft():
    import torch

    class Spectrum(torch.nn.Module):
        def forward(self, x):
            return torch.fft.rfft(x).abs()

    return Spectrum().eval()


def ignores_its_second_input():
    import torch

    class Ignores(torch.nn.Module):
        def forward(self, x, unused):
            return x * 2

    return Ignores().eval()


def bfloat16_inside():
    import torch

    class Inside(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 4).to(torch.bfloat16)

        def forward(self, x):
            return self.linear(x.to(torch.bfloat16)).float()

    torch.manual_seed(0)
    return Inside().eval()
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A spec directory holding the factories module and saved model files."""
    root = tmp_path_factory.mktemp("converters")
    (root / "converter_factories.py").write_text(FACTORIES)
    return root


@pytest.fixture(scope="module")
def factories(workdir):
    """The factories module itself, for tests that save its models to files."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(workdir))
        import converter_factories
    return converter_factories


def make_spec(workdir: Path, models: list[dict], name: str = "model.yaml") -> Spec:
    path = workdir / name
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return load_spec(path)


def converted_and_verified(workdir: Path, model: dict):
    spec = make_spec(workdir, [model])
    converted = convert(spec.models[0], spec)
    samples = make_samples(spec.models[0], converted.inputs, batch=spec.models[0].verify.samples,
                           seed=spec.models[0].verify.seed)
    return spec, converted, verify(converted, samples, spec.models[0].verify)


def digest(converted) -> str:
    return hashlib.sha256(converted.onnx_model.SerializeToString()).hexdigest()


def signature(tensors) -> list[tuple]:
    return [(t.name, t.dtype, t.dims, t.reshape) for t in tensors]


# -- sklearn ------------------------------------------------------------------------------------

def test_sklearn_classifier_label_and_probabilities(workdir):
    model = {"name": "iris_lr", "source": {"framework": "sklearn", "factory": "converter_factories:logistic"}}
    spec, converted, report = converted_and_verified(workdir, model)
    assert converted.batch_axis
    assert signature(converted.inputs) == [("input", "FP32", [4], None)]
    # A per-row label is dims [1] with reshape [] (the graph answers [N]).
    assert signature(converted.outputs) == [("label", "INT64", [1], []), ("probabilities", "FP32", [3], None)]
    assert report.passed
    entry = report.to_manifest()
    assert entry["samples"] == 64 and entry["source"] == "sklearn"
    # LogisticRegression: float32 ONNX kernels vs float64 sklearn, well inside atol 1e-4.
    assert entry["outputs"]["probabilities"]["max_abs_error"] < 1e-5
    assert entry["outputs"]["label"] == {"dtype": "INT64", "compare": "exact", "mismatched_samples": 0, "passed": True}
    assert "LogisticRegression" in converted.summary and "skl2onnx" in converted.tools
    # Deterministic: converting the same source again gives the same bytes.
    assert digest(convert(spec.models[0], spec)) == digest(converted)


def test_sklearn_reference_answers_as_clients_see_them(workdir):
    model = {"name": "iris_forest", "source": {"framework": "sklearn", "factory": "converter_factories:forest"}}
    spec, converted, report = converted_and_verified(workdir, model)
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    expected = converted.reference({"input": rows})
    assert expected["label"].shape == (2, 1) and expected["label"].dtype == np.int64
    assert expected["label"][:, 0].tolist() == [0, 2]  # setosa, virginica
    assert expected["probabilities"].dtype == np.float32
    assert report.onnx_outputs["label"].shape == (64, 1)


def test_sklearn_regressor_output_is_named_prediction(workdir):
    model = {"name": "diabetes_ridge", "source": {"framework": "sklearn", "factory": "converter_factories:ridge"},
             "inputs": [{"name": "input", "dtype": "FP32", "dims": [10], "range": [-0.2, 0.2]}]}
    _, converted, report = converted_and_verified(workdir, model)
    assert signature(converted.outputs) == [("prediction", "FP32", [1], None)]
    assert report.passed


def test_unbatched_regressor_builds(workdir):
    """max_batch_size 0: skl2onnx answers [N, 1] for sklearn's [N]. That was a loop of fixes: "ONNX
    answered [4, 1], source answered [4]", then, with dims [-1], "write dims: [-1, 1]", then again."""
    model = {"name": "ridge_unbatched", "max_batch_size": 0,
             "source": {"framework": "sklearn", "factory": "converter_factories:ridge"},
             "inputs": [{"name": "input", "dtype": "FP32", "dims": [-1, 10], "range": [-0.2, 0.2]}]}
    _, converted, report = converted_and_verified(workdir, model)
    assert signature(converted.outputs) == [("prediction", "FP32", [-1, 1], None)]
    assert report.passed


def test_sklearn_from_joblib_file_with_renamed_input(workdir):
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression(C=0.5)).fit(*load_iris(return_X_y=True)),
                workdir / "pipeline.joblib")
    model = {"name": "iris_pipeline", "source": {"framework": "sklearn", "path": "pipeline.joblib"},
             "inputs": [{"name": "features", "dtype": "FP32", "dims": [4]}],
             "outputs": [{"name": "species", "dtype": "INT64", "dims": [1]}]}
    _, converted, report = converted_and_verified(workdir, model)
    assert [i.name for i in converted.onnx_model.graph.input] == ["features"]
    assert [o.name for o in converted.onnx_model.graph.output] == ["species", "probabilities"]
    # The spec said dims [1]; the graph answers [N], so the reshape [] is kept.
    assert signature(converted.outputs)[0] == ("species", "INT64", [1], [])
    assert report.passed and "Pipeline(StandardScaler() -> LogisticRegression(C=0.5))" in converted.summary


def test_sample_inputs_need_no_declared_inputs(workdir):
    """A converted model's inputs come from its graph: its samples are checked against those once
    converted (the spec loader refused them: "none declared: declare inputs to give samples")."""
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    model = {"name": "iris_samples", "source": {"framework": "sklearn", "factory": "converter_factories:forest"},
             "sample_inputs": {"input": rows}}
    _, converted, report = converted_and_verified(workdir, model)
    assert report.samples == 2 and report.passed
    np.testing.assert_array_equal(report.onnx_outputs["label"].reshape(-1), [0, 2])  # setosa, virginica
    with pytest.raises(SpecError, match=r"sample_inputs names unknown input\(s\) x; the converted model's inputs are: "
                                        r"input FP32\[4\] \(fix: name the samples after those inputs\)") as error:
        converted_and_verified(workdir, {**model, "sample_inputs": {"x": rows}})
    assert error.value.loc == ("sample_inputs", "x")


def test_spec_dtype_that_contradicts_the_graph_is_rejected(workdir):
    spec = make_spec(workdir, [{"name": "bad_dtype", "source": {"framework": "sklearn",
                                                                "factory": "converter_factories:logistic"},
                                "outputs": [{"name": "label", "dtype": "INT32", "dims": [1]}]}])
    with pytest.raises(ConversionError, match=r"dtype INT32 does not match the graph's INT64.*write dtype: INT64"):
        convert(spec.models[0], spec)


def test_spec_dims_that_contradict_the_graph_are_rejected(workdir):
    spec = make_spec(workdir, [{"name": "bad_dims", "source": {"framework": "sklearn",
                                                               "factory": "converter_factories:logistic"},
                                "outputs": [{"name": "label", "dtype": "INT64", "dims": [1]},
                                            {"name": "probabilities", "dtype": "FP32", "dims": [4]}]}])
    with pytest.raises(ConversionError, match=r"^outputs\[1\].dims: .*write dims: \[3\]"):
        convert(spec.models[0], spec)


def test_spec_outputs_that_name_graph_outputs_match_by_name(workdir):
    """Declaring just `probabilities` (the classifier's second output) was matched with `label` by
    position: "dtype FP32 does not match the graph's INT64 for 'label'"."""
    model = {"name": "probabilities_only", "source": {"framework": "sklearn", "factory": "converter_factories:logistic"},
             "outputs": [{"name": "probabilities", "dtype": "FP32", "dims": [3]}]}
    _, converted, report = converted_and_verified(workdir, model)
    assert [(t.name, t.dtype) for t in converted.outputs] == [("label", "INT64"), ("probabilities", "FP32")]
    assert report.passed
    spec = make_spec(workdir, [{**model, "outputs": [{"name": "probabilities", "dtype": "FP32", "dims": [4]}]}])
    with pytest.raises(ConversionError, match=r"^outputs\[0\].dims: .*write dims: \[3\]"):  # where the spec wrote it
        convert(spec.models[0], spec)
    # A name the graph does not have renames by position, and a mismatch says so.
    spec = make_spec(workdir, [{**model, "outputs": [{"name": "probs", "dtype": "FP32", "dims": [3]}]}])
    with pytest.raises(ConversionError, match=r"matched by position; the graph's outputs: label, probabilities"):
        convert(spec.models[0], spec)


def test_unbatched_model_keeps_the_graph_batch_dim_in_dims(workdir):
    model = {"name": "iris_unbatched", "max_batch_size": 0,
             "source": {"framework": "sklearn", "factory": "converter_factories:logistic"}}
    _, converted, report = converted_and_verified(workdir, model)
    assert not converted.batch_axis
    assert signature(converted.inputs) == [("input", "FP32", [-1, 4], None)]
    assert signature(converted.outputs) == [("label", "INT64", [-1], None), ("probabilities", "FP32", [-1, 3], None)]
    assert report.passed and report.samples == 1  # one request of VARIABLE_DIM_SIZE rows
    spec = make_spec(workdir, [{**model, "inputs": [{"name": "input", "dtype": "FP32", "dims": [4]}]}])
    with pytest.raises(ConversionError, match=r"write dims: \[-1, 4\]"):
        convert(spec.models[0], spec)


def test_more_inputs_than_the_graph_has_names_the_graph_tensor_with_its_shape(workdir):
    """The one feature tensor takes the spec's first name: "the graph has 1 (a)" read as a typo."""
    spec = make_spec(workdir, [{"name": "two", "source": {"framework": "sklearn", "factory": "converter_factories:logistic"},
                                "inputs": [{"name": "a", "dtype": "FP32", "dims": [4]},
                                           {"name": "b", "dtype": "FP32", "dims": [1]}]}])
    with pytest.raises(ConversionError, match=r"model 'two' declares 2 inputs but the ONNX graph has 1 \(a FP32\[4\]\)"
                                              r".*fix: declare at most 1 input\)"):
        convert(spec.models[0], spec)


def test_unfitted_estimator_is_a_user_error(workdir):
    spec = make_spec(workdir, [{"name": "unfitted", "source": {"framework": "sklearn",
                                                               "factory": "converter_factories:not_fitted"}}])
    with pytest.raises(ConversionError, match="not fitted"):
        convert(spec.models[0], spec)


def test_encoder_fitted_on_a_string_array_points_to_a_column_transformer(workdir):
    """skl2onnx's own "invalid literal for int()" came with "use an estimator skl2onnx supports"."""
    spec = make_spec(workdir, [{"name": "onehot", "source": {"framework": "sklearn",
                                                             "factory": "converter_factories:onehot_on_strings"}}])
    with pytest.raises(ConversionError, match=r"an encoder fitted on strings.*fix: fit the pipeline on a pandas "
                                              r"DataFrame with a ColumnTransformer"):
        convert(spec.models[0], spec)


def test_classifier_without_predict_proba_is_a_user_error(workdir):
    """SVC() has no predict_proba to check its probabilities against: that was an AttributeError."""
    spec = make_spec(workdir, [{"name": "svc", "source": {"framework": "sklearn",
                                                          "factory": "converter_factories:svc_without_probability"}}])
    with pytest.raises(ConversionError, match=r"the SVC has no predict_proba .*fit SVC with probability=True"):
        convert(spec.models[0], spec)


# -- xgboost / lightgbm -------------------------------------------------------------------------

def test_xgboost_classifier_from_factory_and_saved_file(workdir, factories):
    model = {"name": "iris_xgb", "source": {"framework": "xgboost", "factory": "converter_factories:xgb_classifier"}}
    spec, converted, report = converted_and_verified(workdir, model)
    assert signature(converted.outputs) == [("label", "INT64", [1], []), ("probabilities", "FP32", [3], None)]
    assert report.passed
    assert digest(convert(spec.models[0], spec)) == digest(converted)

    factories.xgb_classifier().save_model(workdir / "iris_xgb.json")
    _, from_file, file_report = converted_and_verified(
        workdir, {"name": "iris_xgb_file", "source": {"framework": "xgboost", "path": "iris_xgb.json"}})
    assert signature(from_file.outputs) == signature(converted.outputs) and file_report.passed


def test_xgboost_fitted_on_named_columns_says_how_to_fix_it(workdir):
    """onnxmltools takes f0, f1, ... feature names only; the fix offered was "use an objective
    onnxmltools supports", which has nothing to do with it."""
    spec = make_spec(workdir, [{"name": "named", "source": {"framework": "xgboost",
                                                            "factory": "converter_factories:xgb_on_named_columns"}}])
    with pytest.raises(ConversionError, match=r"fix: fit on a numpy array, or clear the names"):
        convert(spec.models[0], spec)


def test_xgboost_regressor_from_saved_file(workdir):
    from sklearn.datasets import load_diabetes
    from xgboost import XGBRegressor

    XGBRegressor(n_estimators=5, max_depth=2, random_state=0, n_jobs=1).fit(
        *load_diabetes(return_X_y=True)).save_model(workdir / "diabetes.ubj")
    model = {"name": "diabetes_xgb", "source": {"framework": "xgboost", "path": "diabetes.ubj"}}
    _, converted, report = converted_and_verified(workdir, model)
    assert signature(converted.outputs) == [("prediction", "FP32", [1], None)]
    assert report.passed


def test_booster_files_xgboost_writes_under_other_names_build_and_unreadable_ones_say_so(workdir):
    """xgboost 2+ writes UBJSON into a .model or .bin (it was refused by extension); a file that is
    no booster was xgboost's or lightgbm's own traceback ("map::at", "Unknown model format")."""
    from sklearn.datasets import load_diabetes
    from xgboost import XGBRegressor

    XGBRegressor(n_estimators=3, max_depth=2, random_state=0, n_jobs=1).fit(
        *load_diabetes(return_X_y=True)).save_model(workdir / "diabetes.model")
    _, _, report = converted_and_verified(workdir, {"name": "old_name", "source": {"framework": "xgboost",
                                                                                   "path": "diabetes.model"}})
    assert report.passed
    (workdir / "not_a_booster.json").write_text('{"hello": "world"}')
    (workdir / "not_a_booster.txt").write_text("hello world\n")
    for framework, path, message in (
            ("xgboost", "not_a_booster.json", r"xgboost cannot read not_a_booster.json as a model: .*\(fix: give a "
                                              r"file written by save_model"),
            ("lightgbm", "not_a_booster.txt", r"lightgbm cannot read not_a_booster.txt as a model: Unknown model "
                                              r"format.*\(fix: give a file written by booster.save_model")):
        spec = make_spec(workdir, [{"name": "broken", "source": {"framework": framework, "path": path}}])
        with pytest.raises(ConversionError, match=message) as error:
            convert(spec.models[0], spec)
        assert error.value.loc == ("source", "path")


def test_lightgbm_classifier_label_shape_is_repaired(workdir):
    # onnxmltools declares LightGBM's label as [1]; the converter takes the real shape [N].
    model = {"name": "iris_lgbm", "source": {"framework": "lightgbm", "factory": "converter_factories:lgbm_classifier"}}
    spec, converted, report = converted_and_verified(workdir, model)
    assert converted.batch_axis
    assert signature(converted.outputs) == [("label", "INT64", [1], []), ("probabilities", "FP32", [3], None)]
    assert report.passed
    assert digest(convert(spec.models[0], spec)) == digest(converted)


def test_lightgbm_booster_text_file(workdir):
    import lightgbm
    from sklearn.datasets import load_diabetes

    features, target = load_diabetes(return_X_y=True)
    booster = lightgbm.train({"objective": "regression", "num_leaves": 4, "verbose": -1, "num_threads": 1,
                              "deterministic": True, "force_row_wise": True}, lightgbm.Dataset(features, target),
                             num_boost_round=5)
    booster.save_model(str(workdir / "diabetes_lgbm.txt"))
    model = {"name": "diabetes_lgbm", "source": {"framework": "lightgbm", "path": "diabetes_lgbm.txt"},
             "inputs": [{"name": "input", "dtype": "FP32", "dims": [10], "range": [-0.2, 0.2]}]}
    _, converted, report = converted_and_verified(workdir, model)
    assert signature(converted.outputs) == [("prediction", "FP32", [1], None)]
    assert report.passed and "objective=regression" in converted.summary


# -- pytorch ------------------------------------------------------------------------------------

TORCH_INPUTS = [{"name": "x", "dtype": "FP32", "dims": [8], "range": [-1, 1]}]


def test_pytorch_factory_export_is_dynamic_and_deterministic(workdir):
    model = {"name": "tiny_mlp", "source": {"framework": "pytorch", "factory": "converter_factories:mlp"},
             "inputs": TORCH_INPUTS}
    spec, converted, report = converted_and_verified(workdir, model)
    assert converted.batch_axis
    assert signature(converted.inputs) == [("x", "FP32", [8], None)]
    assert signature(converted.outputs) == [("output", "FP32", [3], None)]
    assert converted.inputs[0].range == (-1.0, 1.0)  # the spec's tensor, with its sampling range
    assert report.passed
    assert digest(convert(spec.models[0], spec)) == digest(converted)


def test_pytorch_two_outputs_named_from_spec(workdir):
    model = {"name": "heads", "source": {"framework": "pytorch", "factory": "converter_factories:two_heads"},
             "inputs": TORCH_INPUTS, "outputs": [{"name": "scores", "dtype": "FP32", "dims": [4]},
                                                 {"name": "best", "dtype": "INT64", "dims": [1]}]}
    _, converted, report = converted_and_verified(workdir, model)
    assert signature(converted.outputs) == [("scores", "FP32", [4], None), ("best", "INT64", [1], [])]
    assert report.passed


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_pytorch_torchscript_and_pickled_module_files(workdir, factories):
    import torch

    module = factories.mlp()
    torch.jit.script(module).save(str(workdir / "mlp_script.pt"))
    torch.save(module, workdir / "mlp_full.pt")
    torch.save(module.state_dict(), workdir / "mlp_weights.pt")
    for path in ("mlp_script.pt", "mlp_full.pt"):
        _, converted, report = converted_and_verified(
            workdir, {"name": "mlp_file", "source": {"framework": "pytorch", "path": path}, "inputs": TORCH_INPUTS})
        assert signature(converted.outputs) == [("output", "FP32", [3], None)] and report.passed, path
    spec = make_spec(workdir, [{"name": "weights_only", "source": {"framework": "pytorch", "path": "mlp_weights.pt"},
                                "inputs": TORCH_INPUTS}])
    with pytest.raises(ConversionError, match="state_dict.*use a factory"):
        convert(spec.models[0], spec)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # TorchScript files users have
def test_torchscript_forward_error_names_its_cause(workdir, factories):
    """TorchScript's error starts with "The following operation failed in the TorchScript
    interpreter." and a traceback; the cause is its last line."""
    import torch

    torch.jit.script(factories.mlp()).save(str(workdir / "mlp_script.pt"))
    wrong = [{**TORCH_INPUTS[0], "dims": [TORCH_INPUTS[0]["dims"][0] + 1]}]
    spec = make_spec(workdir, [{"name": "script", "source": {"framework": "pytorch", "path": "mlp_script.pt"},
                                "inputs": wrong}])
    with pytest.raises(ConversionError, match=r"forward\(\) fails on inputs of the declared dims: RuntimeError: "
                                              r"mat1 and mat2 shapes cannot be multiplied"):
        convert(spec.models[0], spec)


def test_pytorch_variable_length_axis(workdir):
    model = {"name": "pool", "source": {"framework": "pytorch", "factory": "converter_factories:pool"},
             "inputs": [{"name": "x", "dtype": "FP32", "dims": [-1]}]}
    _, converted, report = converted_and_verified(workdir, model)
    assert signature(converted.outputs) == [("output_0", "FP32", [1], None), ("output_1", "FP32", [-1], None)]
    assert report.passed
    longer = {"x": np.arange(14, dtype=np.float32).reshape(2, 7)}  # another length than traced (3)
    from tritonize.verify import run_onnx
    np.testing.assert_allclose(run_onnx(converted, longer)["output_1"], converted.reference(longer)["output_1"],
                               rtol=1e-6)  # float32 cumulative sums of small integers: exact or last-bit


def test_pytorch_dict_outputs_are_named_after_their_keys(workdir):
    model = {"name": "dict_heads", "source": {"framework": "pytorch", "factory": "converter_factories:dict_heads"},
             "inputs": TORCH_INPUTS}
    _, converted, report = converted_and_verified(workdir, model)
    assert signature(converted.outputs) == [("probs", "FP32", [4], None), ("label", "INT64", [1], [])]
    assert report.passed and converted.summary.startswith("pytorch DictHeads (36 parameters)")
    # Spec outputs naming the keys match them by name, in any order.
    renamed = {**model, "outputs": [{"name": "label", "dtype": "INT64", "dims": [1]},
                                    {"name": "probs", "dtype": "FP32", "dims": [4]}]}
    _, converted, report = converted_and_verified(workdir, renamed)
    assert [t.name for t in converted.outputs] == ["probs", "label"] and report.passed
    # Some keys named, not all: by position "probs" would carry the label; refused.
    partly = {**model, "outputs": [{"name": "label", "dtype": "INT64", "dims": [1]},
                                   {"name": "scores", "dtype": "FP32", "dims": [4]}]}
    spec = make_spec(workdir, [partly])
    with pytest.raises(ConversionError, match=r"names some of forward\(\)'s dict keys as outputs but not all "
                                              r"\(probs, label\).*fix: name every output after a key"):
        convert(spec.models[0], spec)


def test_pytorch_output_count_mismatch(workdir):
    spec = make_spec(workdir, [{"name": "heads_wrong", "source": {"framework": "pytorch",
                                                                  "factory": "converter_factories:two_heads"},
                                "inputs": TORCH_INPUTS, "outputs": [{"name": "only", "dtype": "FP32", "dims": [4]}]}])
    with pytest.raises(ConversionError, match="declares 1 outputs but forward\\(\\) returns 2"):
        convert(spec.models[0], spec)


def test_pytorch_nested_outputs_are_a_user_error(workdir):
    """forward() -> (x, (a, b)): the exporter flattens it to three outputs named after two (a traceback)."""
    spec = make_spec(workdir, [{"name": "nested", "source": {"framework": "pytorch",
                                                             "factory": "converter_factories:nested_heads"},
                                "inputs": TORCH_INPUTS}])
    with pytest.raises(ConversionError, match=r"item 1 is a tuple, not a tensor.*return a flat tuple of tensors"):
        convert(spec.models[0], spec)


@pytest.mark.parametrize("factory, inputs", [
    ("batch_centered", TORCH_INPUTS),
    ("centered_argmax", TORCH_INPUTS),
    ("gru_time_first", [{"name": "x", "dtype": "FP32", "dims": [-1, 8]}]),  # declared as if axis 0 were the batch
])
def test_a_model_that_mixes_the_rows_of_a_batch_is_refused(workdir, factory, inputs):
    """Source and ONNX agree on one batch of 64; served, Triton's dynamic batching puts other
    clients' rows in that batch, and each answer would change with them."""
    spec = make_spec(workdir, [{"name": factory, "source": {"framework": "pytorch",
                                                            "factory": f"converter_factories:{factory}"},
                                "inputs": inputs}])
    converted = convert(spec.models[0], spec)
    samples = make_samples(spec.models[0], converted.inputs, batch=64, seed=0)
    with pytest.raises(ConversionError, match=r"output 'output': sample \d+ answered alone differs from its answer in a "
                                              r"batch of 64( \(max abs error [0-9.]+\))?: the model mixes the rows.*"
                                              r"or set max_batch_size: 0") as error:
        verify(converted, samples, spec.models[0].verify)
    assert error.value.loc == ("max_batch_size",)
    unbatched = make_spec(workdir, [{**spec.models[0].model_dump(exclude_none=True, mode="json"),
                                     "max_batch_size": 0}])
    _, _, report = converted_and_verified(workdir, unbatched.models[0].model_dump(exclude_none=True, mode="json"))
    assert report.passed  # the fix the error gives


def test_an_output_whose_size_follows_the_values_needs_open_dims(workdir):
    """torch.unique's length depends on the values; the shape probe (zeros) saw 1."""
    model = {"name": "unique", "source": {"framework": "pytorch", "factory": "converter_factories:unique_values"},
             "max_batch_size": 0, "inputs": [{"name": "x", "dtype": "INT64", "dims": [-1], "range": [0, 5]}]}
    with pytest.raises(ConversionError, match=r"output 'output': the ONNX graph answered shape \[\d\] on the "
                                              r"verification samples, where its dims are \[1\].*its size follows the "
                                              r"input values.*fix: declare the output with dims: \[-1\]"):
        converted_and_verified(workdir, model)
    _, converted, report = converted_and_verified(
        workdir, {**model, "outputs": [{"name": "output", "dtype": "INT64", "dims": [-1]}]})
    assert signature(converted.outputs) == [("output", "INT64", [-1], None)] and report.passed


@pytest.mark.parametrize("batching, message", [
    (8, r"output 'output' has no batch axis \(shape \[\] for a batch of inputs\).*fix: answer one value a row"),
    (0, r"output 'output' is a 0-d tensor \(one number\), which a model without batching cannot serve.*"
        r"fix: return it with shape \[1\]"),
])
def test_a_0d_output_is_a_user_error(workdir, batching, message):
    """Before: a batching model's fix asked for the input dims [-1, 8], then [-1, -1, 8], ...;
    an unbatched one failed on a reshape the spec never wrote."""
    spec = make_spec(workdir, [{"name": "total", "source": {"framework": "pytorch",
                                                            "factory": "converter_factories:whole_batch_sum"},
                                "max_batch_size": batching, "inputs": TORCH_INPUTS}])
    with pytest.raises(ConversionError, match=message):
        convert(spec.models[0], spec)


def test_a_module_in_training_mode_is_exported_in_eval_mode_with_a_note(workdir):
    _, converted, report = converted_and_verified(workdir, {
        "name": "training", "source": {"framework": "pytorch", "factory": "converter_factories:in_training_mode"},
        "inputs": TORCH_INPUTS})
    assert converted.notes == ["the module came in training mode (BatchNorm1d, Dropout): it is exported and verified "
                               "in eval mode, as inference runs it (call .eval() before saving or returning it to "
                               "silence this)"]
    assert report.passed
    _, converted, _ = converted_and_verified(workdir, {
        "name": "eval", "source": {"framework": "pytorch", "factory": "converter_factories:mlp"}, "inputs": TORCH_INPUTS})
    assert converted.notes == []


def test_a_trace_that_froze_value_dependent_python_says_so(workdir):
    """Before: the fix spoke of a model's objective, as for a tree model converted wrong."""
    model = {"name": "loop", "source": {"framework": "pytorch", "factory": "converter_factories:value_dependent_loop"},
             "inputs": TORCH_INPUTS}
    with pytest.raises(ConversionError, match=r"the trace froze Python in forward\(\) that depends on the input values "
                                              r"\(torch warned: Converting a tensor to a Python (number|integer)[^.]*\): "
                                              r"write it with tensor operations"):
        converted_and_verified(workdir, model)


def test_a_transformer_encoder_exports_without_its_fast_path_and_frozen_sizes_are_named(workdir):
    """nn.TransformerEncoderLayer's eval-mode fast path (aten::_transformer_encoder_layer_fwd) has
    no ONNX form: export runs with it off. torch's attention then fixes the sequence length at the
    traced size, which the converter finds by running the graph at another."""
    inputs = [{"name": "ids", "dtype": "INT64", "dims": [6], "range": [0, 31]},
              {"name": "padding", "dtype": "BOOL", "dims": [6]}]
    model = {"name": "encoder", "source": {"framework": "pytorch", "factory": "converter_factories:padded_encoder"},
             "inputs": inputs}
    _, converted, report = converted_and_verified(workdir, model)
    assert signature(converted.outputs) == [("output", "FP32", [16], None)] and report.passed
    variable = {**model, "inputs": [{**tensor, "dims": [-1]} for tensor in inputs]}
    spec = make_spec(workdir, [variable])
    with pytest.raises(ConversionError, match=r"the exported graph runs only at the traced size 3 of the -1 dims of "
                                              r"ids, padding; at 5 onnxruntime fails: .*fix: the trace fixed that size "
                                              r"somewhere in forward\(\): give those dims a fixed size"):
        convert(spec.models[0], spec)


@pytest.mark.parametrize("factory, inputs, message", [
    ("rfft", TORCH_INPUTS, r"Exporting the operator 'aten::fft_rfft' to ONNX opset version 17 is not supported "
                           r"\(fix: torch.onnx has no ONNX form of aten::fft_rfft at opset 17: compute it with other "
                           r"operations in forward\(\), or export the ONNX yourself"),
    ("bfloat16_inside", TORCH_INPUTS, r"onnxruntime cannot load the converted graph, so it cannot be verified: "
                                      r".*NOT_IMPLEMENTED.*fix: convert the model to float32 or float16"),
    ("mlp", [{"name": "x", "dtype": "BF16", "dims": [8]}], r"input 'x' is BF16, which tritonize cannot verify.*"
                                                           r"fix: convert the module with .half\(\) and declare FP16"),
])
def test_modules_that_cannot_be_exported_or_verified_say_why(workdir, factory, inputs, message):
    """Before: the control-flow fix for a missing operator, a traceback for the bfloat16 graph,
    and the BF16 input blamed on the declared dims (numpy's stand-in for it is float32)."""
    spec = make_spec(workdir, [{"name": factory, "source": {"framework": "pytorch",
                                                            "factory": f"converter_factories:{factory}"},
                                "inputs": inputs}])
    with pytest.raises(ConversionError, match=message):
        convert(spec.models[0], spec)


def test_a_failed_export_prints_one_line_not_the_torchscript_graph(workdir, capfd):
    """torch.onnx's C++ side prints "Torch IR graph at exception: graph(...)" (the whole graph)
    to file descriptor 1 before raising; the build log has the error's one line instead."""
    spec = make_spec(workdir, [{"name": "rfft", "source": {"framework": "pytorch", "factory": "converter_factories:rfft"},
                                "inputs": TORCH_INPUTS}])
    with pytest.raises(ConversionError, match="aten::fft_rfft"):
        convert(spec.models[0], spec)
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err and "aten::fft_rfft" not in out + err
    print("still printed")  # file descriptor 1 is back where it was
    assert capfd.readouterr().out == "still printed\n"


def test_an_input_forward_does_not_use_is_named(workdir):
    """torch.onnx drops it from the graph; before, the error said the spec declared 2 inputs but the
    graph has 1, and to declare at most 1."""
    spec = make_spec(workdir, [{"name": "ignores", "source": {"framework": "pytorch",
                                                              "factory": "converter_factories:ignores_its_second_input"},
                                "inputs": [*TORCH_INPUTS, {"name": "unused", "dtype": "FP32", "dims": [2]}]}])
    with pytest.raises(ConversionError, match=r"forward\(\) does not use input 'unused', and torch.onnx leaves an "
                                              r"unused input out of the graph") as error:
        convert(spec.models[0], spec)
    assert error.value.loc == ("inputs", 1)


def test_a_training_checkpoint_dict_names_the_module_inside(workdir, factories):
    import torch

    torch.save({"epoch": 3, "model": factories.mlp()}, workdir / "checkpoint.pt")
    spec = make_spec(workdir, [{"name": "checkpoint", "source": {"framework": "pytorch", "path": "checkpoint.pt"},
                                "inputs": TORCH_INPUTS}])
    with pytest.raises(ConversionError, match=r"checkpoint.pt holds a dict \(a checkpoint\) whose 'model' is the "
                                              r"Sequential \(fix: torch.save the module itself, or give a factory that "
                                              r"returns torch.load\(...\)\['model'\]\)"):
        convert(spec.models[0], spec)


# -- onnx pass-through --------------------------------------------------------------------------

def test_onnx_file_pass_through_with_renamed_input(workdir):
    _, source, _ = converted_and_verified(
        workdir, {"name": "to_file", "source": {"framework": "sklearn", "factory": "converter_factories:logistic"}})
    (workdir / "iris.onnx").write_bytes(source.onnx_model.SerializeToString())
    model = {"name": "iris_onnx", "source": {"framework": "onnx", "path": "iris.onnx"},
             "inputs": [{"name": "measurements", "dtype": "FP32", "dims": [4], "range": [0, 8]}]}
    spec, converted, report = converted_and_verified(workdir, model)
    assert converted.reference is None
    assert signature(converted.inputs) == [("measurements", "FP32", [4], None)]
    assert signature(converted.outputs) == signature(source.outputs)
    entry = report.to_manifest()
    assert entry["passed"] and entry["note"] == "no source framework: checked that onnxruntime runs it"
    assert report.onnx_outputs["probabilities"].shape == (64, 3)
    assert digest(convert(spec.models[0], spec)) == digest(converted)


def test_onnx_file_with_strings_and_fixed_shapes(workdir):
    """A hand-built graph: STRING in, STRING out, no batch axis (Triton dims are the full shape)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["words"], ["same"]), helper.make_node("Neg", ["x"], ["negated"])], "strings",
        [helper.make_tensor_value_info("words", TensorProto.STRING, [2]),
         helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, [2]),
         helper.make_tensor_value_info("negated", TensorProto.DOUBLE, [2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), workdir / "strings.onnx")
    spec, converted, report = converted_and_verified(
        workdir, {"name": "strings", "max_batch_size": 0, "source": {"framework": "onnx", "path": "strings.onnx"}})
    assert not converted.batch_axis
    assert signature(converted.inputs) == [("words", "STRING", [2], None), ("x", "FP64", [2, 3], None)]
    assert report.onnx_outputs["same"].tolist() == [b"0.6370", b"0.2698"]  # bytes, as Triton carries STRING
    assert report.tolerances()["negated"] == {"atol": 1e-7, "rtol": 1e-6}


def test_onnx_files_from_other_tools(workdir):
    """What a graph from another tool brought: an input without a shape (refused with the fix, then
    shaped from the spec's dims), a vectorizer lowercasing in a locale this machine lacks, a
    custom operator (its fix spoke of bfloat16), and opset 22 for the container's onnxruntime."""
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import to_onnx
    from sklearn.feature_extraction.text import TfidfVectorizer

    shapeless = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "shapeless",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(shapeless, opset_imports=[helper.make_opsetid("", 17)]), workdir / "shapeless.onnx")
    model = {"name": "shapeless", "source": {"framework": "onnx", "path": "shapeless.onnx"}}
    with pytest.raises(ConversionError, match=r"shapeless.onnx gives graph input 'x' no shape \(fix: declare it with "
                                              r"its dims"):
        converted_and_verified(workdir, model)
    _, converted, report = converted_and_verified(
        workdir, {**model, "inputs": [{"name": "x", "dtype": "FP32", "dims": [4], "range": [-1, 1]}]})
    assert signature(converted.outputs) == [("y", "FP32", [4], None)] and report.passed
    # skl2onnx without tritonize's locale option: its StringNormalizer names no locale (en_US.UTF-8).
    texts = ["Hello World", "the quick brown fox", "tiny models"]
    vectorizer = TfidfVectorizer().fit(texts)
    graph = to_onnx(vectorizer, np.array(texts, dtype=object).reshape(-1, 1), target_opset=17)
    assert not any(a.name == "locale" for n in graph.graph.node if n.op_type == "StringNormalizer" for a in n.attribute)
    onnx.save(graph, workdir / "tfidf.onnx")
    _, converted, report = converted_and_verified(workdir, {"name": "tfidf", "source": {"framework": "onnx",
                                                                                         "path": "tfidf.onnx"}})
    from tritonize.verify import run_onnx

    served = run_onnx(converted, {converted.inputs[0].name: np.array([[t.encode()] for t in texts], dtype=object)})
    # float32 tf-idf against sklearn's float64: 1e-6 is far below any term's weight (> 0.3 here).
    np.testing.assert_allclose(served[converted.outputs[0].name], vectorizer.transform(texts).toarray(), atol=1e-6)
    custom = helper.make_graph([helper.make_node("MyOp", ["x"], ["y"], domain="com.example")], "custom",
                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(custom, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
              workdir / "custom.onnx")
    with pytest.raises(ConversionError, match=r"com.example:MyOp.*is not a registered function/op \(fix: the graph uses "
                                              r"an operator stock onnxruntime does not have"):
        converted_and_verified(workdir, {"name": "custom", "source": {"framework": "onnx", "path": "custom.onnx"}})
    relu22 = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu22",
                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(relu22, opset_imports=[helper.make_opsetid("", 22)], ir_version=10),
              workdir / "relu22.onnx")
    spec = make_spec(workdir, [{"name": "relu22", "source": {"framework": "onnx", "path": "relu22.onnx"}}])
    assert convert(spec.models[0], spec).notes == []  # the embedded runtime runs it
    spec = make_spec(workdir, [{"name": "relu22", "source": {"framework": "onnx", "path": "relu22.onnx"}}])
    spec.runtime = "container"
    assert convert(spec.models[0], spec).notes == [
        "relu22.onnx is ONNX opset 22, IR version 10: tritonserver 24.10's onnxruntime 1.19 loads opsets up to 21 and "
        "IR versions up to 10; re-export it at opset 21 (onnx.version_converter) for that image"]


def test_canonical_opsets_do_not_depend_on_the_converters_order():
    """Converters list opset domains in an order that changes between builds (and sometimes twice);
    the canonical model has one entry per domain, sorted, so its bytes do not change."""
    from onnx import helper

    from tritonize.onnx_signature import canonicalize

    def canonical(opsets: list[tuple[str, int]]) -> list[tuple[str, int]]:
        model = helper.make_model(helper.make_graph([], "g", [], []),
                                  opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
        canonicalize(model, graph_name="g", producer="test", producer_version="1")
        return [(o.domain, o.version) for o in model.opset_import]

    assert canonical([("ai.onnx.ml", 1), ("", 9)]) == canonical([("", 9), ("ai.onnx.ml", 1)]) \
        == [("", 9), ("ai.onnx.ml", 1)]
    assert canonical([("", 13), ("ai.onnx.ml", 1), ("", 17)]) == [("", 17), ("ai.onnx.ml", 1)]


def test_corrupt_onnx_file(workdir):
    (workdir / "broken.onnx").write_bytes(b"this is not a protobuf")
    spec = make_spec(workdir, [{"name": "broken", "source": {"framework": "onnx", "path": "broken.onnx"}}])
    with pytest.raises(ConversionError, match="cannot read broken.onnx as ONNX"):
        convert(spec.models[0], spec)


# -- user errors shared by all converters ------------------------------------------------------

def test_missing_model_file(workdir):
    # load_spec already refuses a missing path; a spec built in memory reaches the converter.
    spec = Spec.model_validate({"models": [{"name": "gone", "source": {"framework": "xgboost", "path": "gone.json"}}]})
    spec._source = SpecSource(workdir / "model.yaml")
    with pytest.raises(ConversionError, match=r"model file not found: gone.json"):
        convert(spec.models[0], spec)


def test_xgboost_and_lightgbm_estimators_convert_as_sklearn(workdir):
    """A Pipeline ending in an XGBClassifier, and an LGBMRegressor pickled with joblib: skl2onnx had
    no converter for either (one of the commonest ways such models are saved)."""
    import joblib
    from lightgbm import LGBMRegressor
    from sklearn.datasets import load_diabetes

    model = {"name": "scaler_xgb", "source": {"framework": "sklearn", "factory": "converter_factories:scaler_xgb_pipeline"}}
    _, converted, report = converted_and_verified(workdir, model)
    assert [(t.name, t.dtype) for t in converted.outputs] == [("label", "INT64"), ("probabilities", "FP32")]
    assert report.passed
    features, targets = load_diabetes(return_X_y=True)
    joblib.dump(LGBMRegressor(n_estimators=5, num_leaves=4, verbose=-1, n_jobs=1).fit(features, targets),
                workdir / "lgbm.joblib")
    _, converted, report = converted_and_verified(workdir, {"name": "lgbm_joblib",
                                                            "source": {"framework": "sklearn", "path": "lgbm.joblib"},
                                                            "inputs": [{"name": "input", "dtype": "FP32", "dims": [10],
                                                                        "range": [-0.2, 0.2]}]})
    assert [(t.name, t.dtype) for t in converted.outputs] == [("prediction", "FP32")] and report.passed
    # The lightgbm framework reads booster files; for a pickle it says which framework takes it.
    spec = make_spec(workdir, [{"name": "as_lightgbm", "source": {"framework": "lightgbm", "path": "lgbm.joblib"}}])
    with pytest.raises(ConversionError, match=r"fix: write framework: sklearn for a pickled scikit-learn-API estimator"):
        convert(spec.models[0], spec)


def test_wrong_file_kind(workdir):
    (workdir / "model.bin").write_bytes(b"\0")
    spec = make_spec(workdir, [{"name": "wrong_kind", "source": {"framework": "lightgbm", "path": "model.bin"}}])
    with pytest.raises(ConversionError, match=r"not a model file of framework lightgbm \(it reads \.txt\).*fix: use a file ending in \.txt"):
        convert(spec.models[0], spec)


def test_every_registered_converter_loads():
    for framework in FRAMEWORKS.values():
        if framework.converter is not None:
            assert callable(framework.load_converter().convert), framework.name


def test_unknown_framework_lists_the_registered_ones(workdir):
    assert converted_frameworks() == ["lightgbm", "onnx", "pytorch", "sklearn", "xgboost"]
    spec = make_spec(workdir, [{"name": "script", "source": {"framework": "python", "path": "model.yaml"},
                                "inputs": TORCH_INPUTS, "outputs": TORCH_INPUTS}])
    with pytest.raises(ConversionError, match="no ONNX converter for framework 'python'.*lightgbm, onnx, pytorch, "
                                              "sklearn, xgboost"):
        convert(spec.models[0], spec)


def test_factory_that_does_not_exist(workdir):
    spec = make_spec(workdir, [{"name": "nofunc", "source": {"framework": "sklearn",
                                                             "factory": "converter_factories:nothing"}},
                               {"name": "nomod", "source": {"framework": "sklearn", "factory": "no_such_module:f"}}])
    with pytest.raises(ConversionError, match="has no function 'nothing'"):
        convert(spec.models[0], spec)
    with pytest.raises(ConversionError, match="cannot import module 'no_such_module'"):
        convert(spec.models[1], spec)
    absent = make_spec(workdir, [{"name": "absent", "source": {"framework": "sklearn",
                                                               "factory": "converter_factories:needs_absent_package"}}])
    with pytest.raises(MissingDependency, match="needs the Python package 'tritonize_absent_package'"):
        convert(absent.models[0], absent)


def test_missing_converter_package_names_the_extra(workdir, monkeypatch):
    # None in sys.modules makes `import skl2onnx` fail exactly as an uninstalled package does.
    monkeypatch.setitem(sys.modules, "skl2onnx", None)
    spec = make_spec(workdir, [{"name": "needs_skl2onnx", "source": {"framework": "sklearn",
                                                                     "factory": "converter_factories:logistic"}}])
    with pytest.raises(MissingDependency, match=r"'skl2onnx'.*pip install \"tritonize\[sklearn\]\""):
        convert(spec.models[0], spec)


# -- the demo's example models ------------------------------------------------------------------

def test_example_models_convert_and_verify(repo_root):
    """The models the root model.yaml builds, with the sample ranges their data live in."""
    spec = Spec.model_validate({"models": [
        {"name": "iris_classifier", "source": {"framework": "sklearn", "factory": "examples.tabular:iris_classifier"},
         "inputs": [{"name": "input", "dtype": "FP32", "dims": [4], "range": [0, 8]}]},
        {"name": "diabetes_xgboost", "source": {"framework": "xgboost", "factory": "examples.tabular:diabetes_xgboost"},
         "inputs": [{"name": "input", "dtype": "FP32", "dims": [10], "range": [-0.2, 0.2]}]},
        {"name": "wine_lightgbm", "source": {"framework": "lightgbm", "factory": "examples.tabular:wine_lightgbm"}},
        {"name": "digits_mlp", "source": {"framework": "pytorch", "factory": "examples.torch_mlp:digits_mlp"},
         "inputs": [{"name": "pixels", "dtype": "FP32", "dims": [64], "range": [0, 16]}]},
    ]})
    spec._source = SpecSource(repo_root / "model.yaml")
    outputs = {}
    for model in spec.models:
        converted = convert(model, spec)
        report = verify(converted, make_samples(model, converted.inputs, batch=64, seed=0), model.verify)
        assert report.passed, model.name
        outputs[model.name] = signature(converted.outputs)
    assert outputs == {
        "iris_classifier": [("label", "INT64", [1], []), ("probabilities", "FP32", [3], None)],
        "diabetes_xgboost": [("prediction", "FP32", [1], None)],
        "wine_lightgbm": [("label", "INT64", [1], []), ("probabilities", "FP32", [3], None)],
        "digits_mlp": [("output", "FP32", [10], None)],
    }


def test_example_classifiers_are_accurate(repo_root, monkeypatch):
    """The demo answers should make sense: the models really learned their datasets."""
    import torch
    from sklearn.datasets import load_digits, load_iris

    monkeypatch.syspath_prepend(str(repo_root))
    from examples.tabular import iris_classifier
    from examples.torch_mlp import digits_mlp

    features, species = load_iris(return_X_y=True)
    assert (iris_classifier().predict(features) == species).mean() > 0.95
    pixels, digits = load_digits(return_X_y=True)
    model = digits_mlp()
    with torch.no_grad():
        predicted = model(torch.from_numpy(pixels.astype(np.float32))).argmax(dim=1).numpy()
    assert (predicted == digits).mean() > 0.95


# -- python-backend ONNX runner -----------------------------------------------------------------

def load_backend_model(path: Path, module_name: str):
    """A python-backend model.py, imported with Triton's own triton_python_backend_utils (shipped in
    the pytriton wheel; its Tensor/InferenceResponse classes exist only inside the stub, and the
    functions tested without a server do not use them)."""
    import importlib.util

    import pytriton

    utils_dir = Path(pytriton.__file__).parent / "tritonserver" / "backends" / "python"
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(utils_dir))
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # dataclasses look their module up here
        module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runner_module(repo_root):
    return load_backend_model(repo_root / "python_backends" / "onnx_runner" / "model.py", "onnx_runner_model")


@pytest.fixture(scope="module")
def iris_onnx(workdir):
    _, converted, _ = converted_and_verified(
        workdir, {"name": "iris_runner", "source": {"framework": "sklearn", "factory": "converter_factories:forest"}})
    return converted


def runner_config(converted, max_batch_size: int = 8) -> dict:
    """The JSON form of config.pbtxt that Triton hands to initialize()."""
    def tensor(t):
        entry = {"name": t.name, "data_type": f"TYPE_{t.dtype}", "dims": [str(d) for d in t.dims]}
        if t.reshape is not None:
            entry["reshape"] = {"shape": [str(d) for d in t.reshape]}
        return entry

    return {"max_batch_size": max_batch_size, "input": [tensor(t) for t in converted.inputs],
            "output": [tensor(t) for t in converted.outputs]}


def test_runner_batches_requests_and_isolates_a_bad_one(runner_module, iris_onnx):
    from tritonize.onnx_signature import session

    config = runner_config(iris_onnx)
    inputs, outputs = runner_module.layouts(config, "input"), runner_module.layouts(config, "output")
    assert outputs[0] == runner_module.Layout("label", "INT64", (1,), (), False)
    ort_session = session(iris_onnx.onnx_model, iris_onnx.name)
    calls = []

    def run(feeds):
        calls.append({name: array.shape for name, array in feeds.items()})
        return dict(zip([o.name for o in outputs], ort_session.run([o.name for o in outputs], feeds)))

    rng = np.random.default_rng(0)
    requests = [rng.uniform(0, 8, (rows, 4)).astype(np.float32) for rows in (1, 3, 2)]
    feeds = [runner_module.read_request(lambda name, a=a: a, inputs, True) for a in requests]
    results = runner_module.run_requests(run, feeds, batched=True)
    assert calls == [{"input": (6, 4)}]  # one session.run for the three requests
    for array, result in zip(requests, results):
        alone = iris_onnx.reference({"input": array})
        assert np.array_equal(runner_module.to_client(result["label"], outputs[0], True), alone["label"])
        # Same graph, batched or alone: identical float32 answers (tree sums do not depend on batch).
        assert result["probabilities"].shape == (len(array), 3)
        np.testing.assert_allclose(result["probabilities"], alone["probabilities"], atol=1e-5)

    # A request with 5 features cannot join the others: it runs alone and only it fails.
    calls.clear()
    feeds.insert(1, {"input": rng.uniform(0, 8, (2, 5)).astype(np.float32)})
    results = runner_module.run_requests(run, feeds, batched=True)
    assert isinstance(results[1], Exception)
    assert all(isinstance(results[i], dict) for i in (0, 2, 3))
    assert sorted(calls, key=str) == sorted([{"input": (6, 4)}, {"input": (2, 5)}], key=str)


def test_runner_rejects_missing_and_mistyped_inputs(runner_module, iris_onnx):
    inputs = runner_module.layouts(runner_config(iris_onnx), "input")
    with pytest.raises(ValueError, match="input 'input' is missing"):
        runner_module.read_request(lambda name: None, inputs, True)
    with pytest.raises(ValueError, match="has dtype float64, expected FP32"):
        runner_module.read_request(lambda name: np.zeros((1, 4)), inputs, True)


def test_runner_combined_failure_falls_back_to_single_requests(runner_module):
    def run(feeds):  # a model that fails on any row with a negative value
        if (feeds["x"] < 0).any():
            raise RuntimeError("negative input")
        return {"y": feeds["x"] * 2}

    feeds = [{"x": np.array([[1.0]])}, {"x": np.array([[-1.0], [2.0]])}, {"x": np.array([[3.0]])}]
    results = runner_module.run_requests(run, feeds, batched=True)
    assert results[0]["y"].tolist() == [[2.0]] and results[2]["y"].tolist() == [[6.0]]
    assert str(results[1]) == "negative input"


class StubTensor:
    """What the runner's fast path reads of the python backend stub's input tensors."""

    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


def test_runner_gathers_a_batch_once_and_answers_views(runner_module):
    names, dtypes = ["a", "b"], [np.dtype(np.float32), np.dtype(np.int64)]
    requests = [[StubTensor("b", np.full((rows, 1), rows, np.int64)), StubTensor("a", np.ones((rows, 3), np.float32))]
                for rows in (1, 3, 2)]  # inputs in the client's order, not the config's
    feeds, rows = runner_module.gather(requests, names, dtypes)
    assert rows == [1, 3, 2]
    assert feeds["a"].shape == (6, 3) and feeds["b"][:, 0].tolist() == [1, 3, 3, 3, 2, 2]
    answers = {"y": np.arange(12).reshape(6, 2)}
    parts = runner_module.split(answers, rows)
    assert [part["y"][:, 0].tolist() for part in parts] == [[0], [2, 4, 6], [8, 10]]
    assert all(np.shares_memory(part["y"], answers["y"]) for part in parts)  # slices, not copies
    # Anything but the config's inputs, dtypes and one row shape goes to the request-by-request path.
    wrong_dtype = [[StubTensor("a", np.ones((1, 3))), StubTensor("b", np.ones((1, 1), np.int64))]]
    missing = [[StubTensor("a", np.ones((1, 3), np.float32))]]
    other_rows = requests[:1] + [[StubTensor("a", np.ones((1, 4), np.float32)), StubTensor("b", np.ones((1, 1), np.int64))]]
    for batch in (wrong_dtype, missing, other_rows):
        assert runner_module.gather(batch, names, dtypes) is None


def test_runner_thread_defaults_follow_model_size_instances_and_cores(runner_module):
    small, large = 100_000, runner_module.SMALL_MODEL_BYTES
    assert runner_module.thread_counts({}, small, instances=1, cores=16) == (1, 1)
    assert runner_module.thread_counts({}, large, instances=2, cores=16) == (8, 1)
    assert runner_module.thread_counts({}, large, instances=4, cores=2) == (1, 1)
    given = {"intra_op_num_threads": {"string_value": "3"}, "inter_op_num_threads": {"string_value": "2"}}
    assert runner_module.thread_counts(given, large, instances=1, cores=16) == (3, 2)  # the spec's values win
    assert runner_module.instance_count({"instance_group": [{"count": 2}, {"count": 3}]}) == 5
    assert runner_module.instance_count({}) == 1


@pytest.mark.parametrize(("runtime", "max_batch_size", "batching", "expected_delay_us"), [
    ("embedded", 8, None, 0),             # empty dynamic_batching, as onnxruntime's auto-complete adds
    ("embedded", 8, {"max_queue_delay_microseconds": 200}, 200),   # the spec's block as written
    ("embedded", 1, None, None),          # nothing to batch
    ("container", 8, None, None),         # onnxruntime's backend adds it itself when it loads the model
])
def test_onnx_config_dynamic_batching_default(runtime, max_batch_size, batching, expected_delay_us):
    from tritonize.spec import ContainerTarget, ModelSpec, TensorSpec
    from tritonize.triton.config import onnx_model_config

    spec = {"name": "m", "source": {"framework": "onnx", "path": "m.onnx"}, "max_batch_size": max_batch_size}
    if batching is not None:
        spec["dynamic_batching"] = batching
    tensor = TensorSpec(name="x", dtype="FP32", dims=[4])
    config = onnx_model_config(ModelSpec.model_validate(spec), [tensor], [tensor], runtime=runtime,
                               container=ContainerTarget(device="cpu"))
    if expected_delay_us is None:
        assert not config.HasField("dynamic_batching")
    else:
        assert config.HasField("dynamic_batching")
        assert config.dynamic_batching.max_queue_delay_microseconds == expected_delay_us
        assert not config.dynamic_batching.preferred_batch_size
    assert "intra_op_num_threads" not in config.parameters  # the runner picks it when it loads


def test_iris_preprocess_parses_csv_rows(repo_root):
    module = load_backend_model(repo_root / "examples" / "iris_preprocess" / "model.py", "iris_preprocess_model")
    rows = np.array([[b"5.1,3.5,1.4,0.2"], [b" 6.7, 3.0 ,5.2,2.3"]], dtype=object)
    features = module.parse_rows(rows, 4)
    assert features.dtype == np.float32 and features.tolist() == np.float32([[5.1, 3.5, 1.4, 0.2],
                                                                              [6.7, 3.0, 5.2, 2.3]]).tolist()
    with pytest.raises(ValueError, match="row 1: expected 4 comma-separated numbers, got 3"):
        module.parse_rows(np.array([[b"1,2,3,4"], [b"1,2,3"]], dtype=object), 4)
    with pytest.raises(ValueError, match="row 0: 'a,b,c,d' is not 4 numbers"):
        module.parse_rows(np.array([[b"a,b,c,d"]], dtype=object), 4)


# -- the runner and the preprocessing step inside a real tritonserver ----------------------------

@pytest.mark.server
def test_runner_and_preprocess_served_by_tritonserver(repo_root, iris_onnx, triton_server, tmp_path):
    import tritonclient.http as httpclient
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc
    from tritonclient.utils import InferenceServerException

    repo = tmp_path / "repo"
    (repo / "iris" / "1").mkdir(parents=True)
    (repo / "iris" / "1" / "model.onnx").write_bytes(iris_onnx.onnx_model.SerializeToString())
    (repo / "iris" / "1" / "model.py").write_bytes(
        (repo_root / "python_backends" / "onnx_runner" / "model.py").read_bytes())
    config = mc.ModelConfig(name="iris", backend="python", max_batch_size=8)
    for tensor, field in [*((t, config.input) for t in iris_onnx.inputs), *((t, config.output) for t in iris_onnx.outputs)]:
        entry = field.add(name=tensor.name, data_type=mc.DataType.Value(f"TYPE_{tensor.dtype}"), dims=tensor.dims)
        if tensor.reshape is not None:
            entry.reshape.shape.extend(tensor.reshape)
    # The scheduler holds requests until 8 rows are queued (or 0.5 s pass), so the four concurrent
    # requests below (8 rows) reach execute() together and take the runner's concatenating path.
    config.dynamic_batching.max_queue_delay_microseconds = 500_000
    config.dynamic_batching.preferred_batch_size.append(8)
    config.parameters["intra_op_num_threads"].string_value = "1"
    (repo / "iris" / "config.pbtxt").write_text(text_format.MessageToString(config))

    (repo / "iris_preprocess" / "1").mkdir(parents=True)
    (repo / "iris_preprocess" / "1" / "model.py").write_bytes(
        (repo_root / "examples" / "iris_preprocess" / "model.py").read_bytes())
    preprocess = mc.ModelConfig(name="iris_preprocess", backend="python", max_batch_size=8)
    preprocess.input.add(name="CSV", data_type=mc.TYPE_STRING, dims=[1])
    preprocess.output.add(name="FEATURES", data_type=mc.TYPE_FP32, dims=[4])
    (repo / "iris_preprocess" / "config.pbtxt").write_text(text_format.MessageToString(preprocess))

    server = triton_server(repo)
    client = httpclient.InferenceServerClient(server.http_url, concurrency=4)

    def send(rows: np.ndarray):
        tensor = httpclient.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        return client.async_infer("iris", [tensor])

    rng = np.random.default_rng(1)
    batches = [rng.uniform(0, 8, (rows, 4)).astype(np.float32) for rows in (1, 2, 3, 2)]
    pending = [send(rows) for rows in batches]  # in flight together (client concurrency 4)
    answers = [(r.as_numpy("label"), r.as_numpy("probabilities")) for r in (p.get_result() for p in pending)]
    for rows, (label, probabilities) in zip(batches, answers):
        expected = iris_onnx.reference({"input": rows})
        assert label.shape == (len(rows), 1) and label.dtype == np.int64  # dims [1] as the config says
        assert np.array_equal(label, expected["label"])
        # float32 ONNX trees vs float64 sklearn averaging: atol 1e-5 is 10x the error seen (~1e-7).
        np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)
    stats = client.get_inference_statistics("iris")["model_stats"][0]
    assert stats["inference_count"] == 8
    assert stats["execution_count"] < 4  # some requests shared one execute()

    wrong = httpclient.InferInput("input", [1, 4], "FP64")
    wrong.set_data_from_numpy(np.zeros((1, 4)))
    with pytest.raises(InferenceServerException) as wrong_type:
        client.infer("iris", [wrong])
    assert wrong_type.value.status() == "400"  # the client's mistake, not a server fault

    csv = httpclient.InferInput("CSV", [2, 1], "BYTES")
    csv.set_data_from_numpy(np.array([[b"5.1,3.5,1.4,0.2"], [b"6.7,3.0,5.2,2.3"]], dtype=object))
    features = client.infer("iris_preprocess", [csv]).as_numpy("FEATURES")
    assert features.shape == (2, 4) and features[1].tolist() == np.float32([6.7, 3.0, 5.2, 2.3]).tolist()
    bad = httpclient.InferInput("CSV", [1, 1], "BYTES")
    bad.set_data_from_numpy(np.array([[b"5.1,oops"]], dtype=object))
    with pytest.raises(InferenceServerException, match="input CSV: row 0: expected 4 comma-separated numbers") as bad_row:
        client.infer("iris_preprocess", [bad])
    assert bad_row.value.status() == "400"
    assert client.is_server_live()
    client.close()
