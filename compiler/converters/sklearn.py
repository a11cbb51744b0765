"""scikit-learn estimators and pipelines -> ONNX with skl2onnx."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConversionError, lazy_import
from ..spec import ModelSpec, Spec
from ..factory import call_factory, spec_dir_on_path
from ..versions import installed_versions
from .base import ONNX_ML_OPSET, ONNX_OPSET, ConvertedModel, Converter, finish, register, source_file


PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


def feature_input(model: ModelSpec, spec: Spec) -> tuple[str, str]:
    """Name and dtype of the single feature tensor: spec inputs[0] where given, else "input" FP32."""
    if model.inputs:
        first = model.inputs[0]
        if first.dtype not in ("FP32", "FP64"):
            raise ConversionError(f"model '{model.name}': a {model.source.framework} model takes FP32 (or FP64) "
                                  f"features, not {first.dtype}", file=spec.path,
                                  field=f"models.{model.name}.inputs[0].dtype", fix="write dtype: FP32")
        return first.name, first.dtype
    return "input", "FP32"


def n_features(estimator: Any, model: ModelSpec, spec: Spec) -> int:
    count = getattr(estimator, "n_features_in_", None)
    if count is None:
        raise ConversionError(f"model '{model.name}': the {type(estimator).__name__} is not fitted (it has no "
                              "n_features_in_)", file=spec.path, field=f"models.{model.name}.source",
                              fix="fit the model before saving or returning it")
    return int(count)


def load_pickled(model: ModelSpec, spec: Spec) -> Any:
    """A joblib/pickle file. Unpickling runs code from the file: load only models you trust."""
    path = source_file(model, spec, PICKLE_SUFFIXES)
    joblib = lazy_import("joblib", purpose="loading a saved scikit-learn model", extra="sklearn")
    with spec_dir_on_path(spec):
        return joblib.load(path)


def describe(estimator: Any) -> str:
    """E.g. RandomForestClassifier(n_estimators=50): the class plus the parameters changed from default."""
    name = type(estimator).__name__
    if hasattr(estimator, "steps"):
        return "Pipeline(" + " -> ".join(describe(step) for _, step in estimator.steps) + ")"
    try:
        defaults = type(estimator)().get_params(deep=False)
        changed = {k: v for k, v in estimator.get_params(deep=False).items()
                   if k in defaults and repr(v) != repr(defaults[k]) and k not in ("random_state", "n_jobs", "verbose")}
    except TypeError:  # estimators whose constructor needs arguments
        changed = {}
    return name + "(" + ", ".join(f"{k}={v!r}" for k, v in sorted(changed.items())) + ")"


@register
class SklearnConverter(Converter):
    framework = "sklearn"

    def convert(self, model: ModelSpec, spec: Spec) -> ConvertedModel:
        lazy_import("sklearn", purpose="converting a scikit-learn model", extra="sklearn", package="scikit-learn")
        skl2onnx = lazy_import("skl2onnx", purpose="converting a scikit-learn model", extra="sklearn")
        data_types = lazy_import("skl2onnx.common.data_types", purpose="converting a scikit-learn model", extra="sklearn")
        from sklearn.base import is_classifier

        estimator = call_factory(model, spec) if model.source.factory else load_pickled(model, spec)
        if not hasattr(estimator, "predict"):
            raise ConversionError(f"model '{model.name}': the sklearn source is a {type(estimator).__name__}, "
                                  "not an estimator", file=spec.path, field=f"models.{model.name}.source",
                                  fix="return or save a fitted estimator or Pipeline")
        input_name, dtype = feature_input(model, spec)
        features = n_features(estimator, model, spec)
        tensor_type = data_types.FloatTensorType if dtype == "FP32" else data_types.DoubleTensorType
        final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
        classifier = is_classifier(final)
        # ZipMap turns probabilities into a sequence of maps, which Triton cannot serve.
        options = {id(final): {"zipmap": False}} if classifier else None
        try:
            onnx_model = skl2onnx.convert_sklearn(
                estimator, initial_types=[(input_name, tensor_type([None, features]))], options=options,
                target_opset={"": ONNX_OPSET, "ai.onnx.ml": ONNX_ML_OPSET})
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
            raise ConversionError(f"model '{model.name}': skl2onnx cannot convert {type(estimator).__name__}: "
                                  f"{str(exc).splitlines()[0]}", file=spec.path, field=f"models.{model.name}.source",
                                  fix="use an estimator skl2onnx supports (see skl2onnx's supported list)") from None
        numpy_type = np.float32 if dtype == "FP32" else np.float64
        graph_outputs = [o.name for o in onnx_model.graph.output]
        renames = {"variable": "prediction"} if not classifier else {}
        with_probabilities = "probabilities" in graph_outputs

        def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            features_in = np.asarray(inputs[input_name], dtype=numpy_type)
            if classifier:
                answer = {"label": estimator.predict(features_in)}
                if with_probabilities:
                    answer["probabilities"] = estimator.predict_proba(features_in)
                return answer
            return {"prediction": np.asarray(estimator.predict(features_in)).reshape(len(features_in), -1)}

        converted = finish(model, spec, onnx_model, tool="skl2onnx", reference=reference,
                           tools=installed_versions("scikit-learn", "skl2onnx"), rename_outputs=renames)
        converted.summary = f"sklearn {describe(estimator)}, {features} features: {converted.signature}"
        return converted
