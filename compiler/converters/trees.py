"""Gradient-boosted trees -> ONNX with onnxmltools: XGBoost and LightGBM.

Both follow the sklearn converter's conventions: one FP32 feature tensor ("input" unless the spec
names it), classifiers answer `label` INT64 and `probabilities` FP32[classes] as plain tensors (no
ZipMap), regressors answer `prediction` FP32[1].
"""
from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from ..errors import ConversionError, lazy_import
from ..onnx_signature import fix_batch_output_shapes
from ..spec import ModelSpec, Spec
from ..factory import call_factory
from ..versions import installed_versions
from .base import ONNXMLTOOLS_OPSET, ConvertedModel, Converter, finish, register, source_file
from .sklearn import describe, feature_input


Predict = Callable[[np.ndarray], dict[str, np.ndarray]]


def _convert_trees(model: ModelSpec, spec: Spec, *, framework_packages: tuple[str, ...], source: Any, convert: Callable,
                   n_features: int, classifier: bool, predict: Predict, description: str,
                   extra_kwargs: dict | None = None) -> ConvertedModel:
    data_types = lazy_import("onnxmltools.convert.common.data_types", purpose=f"converting a {model.source.framework} "
                             "model", extra=model.source.framework, package="onnxmltools")
    input_name, dtype = feature_input(model, spec)
    if dtype != "FP32":
        raise ConversionError(f"model '{model.name}': onnxmltools converts {model.source.framework} models with FP32 "
                              "features only", file=spec.path, field=f"models.{model.name}.inputs[0].dtype",
                              fix="write dtype: FP32")
    try:
        onnx_model = convert(source, initial_types=[(input_name, data_types.FloatTensorType([None, n_features]))],
                             target_opset=ONNXMLTOOLS_OPSET, **(extra_kwargs or {}))
    except (RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError) as exc:
        raise ConversionError(f"model '{model.name}': onnxmltools cannot convert this {model.source.framework} model: "
                              f"{str(exc).splitlines()[0]}", file=spec.path, field=f"models.{model.name}.source",
                              fix="use an objective onnxmltools supports (regression, binary, multiclass)") from None
    # onnxmltools declares some output shapes wrongly (LightGBM's label as [1]); take them from real runs.
    fix_batch_output_shapes(onnx_model, {input_name: np.zeros((2, n_features), np.float32)})

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return predict(np.asarray(inputs[input_name], dtype=np.float32))

    converted = finish(model, spec, onnx_model, tool="onnxmltools", reference=reference,
                       tools=installed_versions(*framework_packages, "onnxmltools"),
                       rename_outputs={} if classifier else {"variable": "prediction"})
    converted.summary = (f"{model.source.framework} {description}, {n_features} features: "
                         f"{converted.signature}")
    return converted


def _sklearn_api_predict(estimator: Any, classifier: bool) -> Predict:
    def predict(features: np.ndarray) -> dict[str, np.ndarray]:
        if classifier:
            return {"label": estimator.predict(features), "probabilities": estimator.predict_proba(features)}
        return {"prediction": np.asarray(estimator.predict(features)).reshape(len(features), -1)}

    return predict


@register
class XGBoostConverter(Converter):
    framework = "xgboost"
    suffixes = (".json", ".ubj")

    def convert(self, model: ModelSpec, spec: Spec) -> ConvertedModel:
        xgboost = lazy_import("xgboost", purpose="converting an XGBoost model", extra="xgboost", package="xgboost-cpu")
        onnxmltools = lazy_import("onnxmltools", purpose="converting an XGBoost model", extra="xgboost")
        if model.source.factory:
            estimator = call_factory(model, spec)
        else:
            estimator = self._load(xgboost, source_file(model, spec, self.suffixes))
        if not isinstance(estimator, (xgboost.XGBClassifier, xgboost.XGBRegressor)):
            raise ConversionError(f"model '{model.name}': the xgboost source is a {type(estimator).__name__}",
                                  file=spec.path, field=f"models.{model.name}.source",
                                  fix="return an XGBClassifier or XGBRegressor (fitted), or save one with save_model")
        classifier = isinstance(estimator, xgboost.XGBClassifier)
        return _convert_trees(model, spec, framework_packages=("xgboost", "xgboost-cpu"), source=estimator,
                              convert=onnxmltools.convert_xgboost, n_features=int(estimator.n_features_in_),
                              classifier=classifier, predict=_sklearn_api_predict(estimator, classifier),
                              description=describe(estimator))

    @staticmethod
    def _load(xgboost: Any, path) -> Any:
        """A saved model does not say which sklearn wrapper it came from: the objective does."""
        booster = xgboost.Booster(model_file=str(path))
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        wrapper = xgboost.XGBClassifier() if objective.startswith(("binary:", "multi:")) else xgboost.XGBRegressor()
        wrapper.load_model(str(path))
        return wrapper


@register
class LightGBMConverter(Converter):
    framework = "lightgbm"
    suffixes = (".txt",)

    def convert(self, model: ModelSpec, spec: Spec) -> ConvertedModel:
        lightgbm = lazy_import("lightgbm", purpose="converting a LightGBM model", extra="lightgbm")
        onnxmltools = lazy_import("onnxmltools", purpose="converting a LightGBM model", extra="lightgbm")
        if model.source.factory:
            source = call_factory(model, spec)
        else:
            source = lightgbm.Booster(model_file=str(source_file(model, spec, self.suffixes)))
        if isinstance(source, (lightgbm.LGBMClassifier, lightgbm.LGBMRegressor)):
            classifier = isinstance(source, lightgbm.LGBMClassifier)
            predict = _sklearn_api_predict(source, classifier)
            n_features, description = int(source.n_features_in_), describe(source)
        elif isinstance(source, lightgbm.Booster):
            objective = source.dump_model()["objective"].split()[0]
            classifier = objective in ("binary", "multiclass", "multiclassova")
            predict = _booster_predict(source, objective)
            n_features = source.num_feature()
            description = f"Booster(objective={objective}, trees={source.num_trees()})"
        else:
            raise ConversionError(f"model '{model.name}': the lightgbm source is a {type(source).__name__}",
                                  file=spec.path, field=f"models.{model.name}.source",
                                  fix="return an LGBMClassifier, LGBMRegressor or Booster (trained)")
        return _convert_trees(model, spec, framework_packages=("lightgbm",), source=source,
                              convert=onnxmltools.convert_lightgbm, n_features=n_features, classifier=classifier,
                              predict=predict, description=description, extra_kwargs={"zipmap": False})


def _booster_predict(booster: Any, objective: str) -> Predict:
    """A raw Booster answers probabilities only; labels are their argmax (what the ONNX graph computes)."""
    def predict(features: np.ndarray) -> dict[str, np.ndarray]:
        raw = np.asarray(booster.predict(features))
        if objective == "binary":
            probabilities = np.stack([1 - raw, raw], axis=1)
        elif objective.startswith("multiclass"):
            probabilities = raw
        else:
            return {"prediction": raw.reshape(len(features), -1)}
        return {"label": probabilities.argmax(axis=1), "probabilities": probabilities}

    return predict
