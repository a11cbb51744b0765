"""Gradient-boosted trees -> ONNX with onnxmltools: XGBoost and LightGBM.

Both follow the sklearn converter's conventions: one FP32 feature tensor ("input" unless the spec
names it), classifiers answer `label` INT64 and `probabilities` FP32[classes] as plain tensors (no
ZipMap), regressors answer `prediction` FP32[1].
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError, first_line
from ..factory import call_factory
from ..optional import optional
from ..spec import ModelSpec, Spec
from ..versions import installed_versions
from .base import ONNXMLTOOLS_OPSET, ConvertedModel, Converter, finish, source_file
from .sklearn import describe, feature_input

onnx = optional("onnx", purpose="converting a tree model")
xgboost = optional("xgboost", purpose="converting an XGBoost model", extra="xgboost", package="xgboost-cpu")
lightgbm = optional("lightgbm", purpose="converting a LightGBM model", extra="lightgbm")
onnxmltools = optional("onnxmltools", purpose="converting a tree model", extra="xgboost")
onnxmltools_xgboost = optional("onnxmltools.convert.xgboost._parse", purpose="converting an XGBoost model",
                               extra="xgboost", package="onnxmltools")
onnxmltools_types = optional("onnxmltools.convert.common.data_types", purpose="converting a tree model",
                             extra="xgboost", package="onnxmltools")

Predict = Callable[[np.ndarray], dict[str, np.ndarray]]


def _convert_trees(model: ModelSpec, spec: Spec, *, framework_packages: tuple[str, ...], source: Any, convert: Callable,
                   n_features: int, classifier: bool, predict: Predict, description: str,
                   extra_kwargs: dict | None = None, output_name: str = "prediction",
                   patch: Callable[[Any], None] | None = None) -> ConvertedModel:
    input_name, dtype = feature_input(model, spec)
    if dtype != "FP32":
        raise ConversionError(f"model '{model.name}': onnxmltools converts {model.source.framework} models with FP32 "
                              "features only", loc=("inputs", 0, "dtype"),
                              fix="write dtype: FP32")
    try:
        onnx_model = convert(source, initial_types=[(input_name, onnxmltools_types.FloatTensorType([None, n_features]))],
                             target_opset=ONNXMLTOOLS_OPSET, **(extra_kwargs or {}))
    except (RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError) as exc:
        message = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        # onnxmltools reads XGBoost's split features as f0, f1, ...: a booster fitted on a DataFrame
        # names them after its columns (its error: "feature names should follow pattern 'f%d'").
        fix = ("fit on a numpy array, or clear the names before saving (booster.feature_names = None)"
               if "f%d" in message or "feature names" in message.lower() else
               "use an objective onnxmltools supports (regression, binary, multiclass)")
        raise ConversionError(f"model '{model.name}': onnxmltools cannot convert this {model.source.framework} model: "
                              f"{message}", loc=("source",), fix=fix) from None
    if patch is not None:
        patch(onnx_model)
    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return predict(np.asarray(inputs[input_name], dtype=np.float32))

    converted = finish(model, spec, onnx_model, tool="onnxmltools", reference=reference,
                       tools=installed_versions(*framework_packages, "onnxmltools"),
                       rename_outputs={} if classifier else {"variable": output_name})
    converted.summary = (f"{model.source.framework} {description}, {n_features} features: "
                         f"{converted.signature}")
    return converted


def _sklearn_api_predict(estimator: Any, classifier: bool) -> Predict:
    def predict(features: np.ndarray) -> dict[str, np.ndarray]:
        if classifier:
            return {"label": estimator.predict(features), "probabilities": estimator.predict_proba(features)}
        return {"prediction": np.asarray(estimator.predict(features)).reshape(len(features), -1)}

    return predict


# Objectives onnxmltools converts with their own output transform; every other one (rank:*,
# survival:*, ...) is served as the booster's raw margin, `scores` (what XGBRanker.predict answers).
# Objectives onnxmltools converts into a graph that answers something else (seen: every value
# off in verification): refused before converting, with what to train instead.
XGBOOST_WRONG_OBJECTIVES = {
    "multi:softmax": "onnxmltools answers raw margins as its probabilities; train with objective multi:softprob "
                     "(the same labels, with probabilities)",
    "reg:logistic": "onnxmltools leaves out its sigmoid; train an XGBClassifier (binary:logistic), or "
                    "reg:squarederror",
}
LIGHTGBM_WRONG_OBJECTIVES = {
    "multiclassova": "onnxmltools converts it as softmax multiclass; train with objective multiclass",
}


def refuse_wrong_conversion(model: ModelSpec, source: Any) -> str:
    """The objective of a booster (or of a scikit-learn-API estimator of one), read once (a
    LightGBM dump_model() writes every tree); raise where its conversion is known to answer wrong:
    an objective above, or more than one regression target (onnxmltools converts one)."""
    package = type(source).__module__.split(".")[0]
    if package == "xgboost":
        booster = source if isinstance(source, xgboost.Booster) else source.get_booster()
        learner = json.loads(booster.save_config())["learner"]
        objective = learner["objective"]["name"]
        targets = int(learner.get("learner_model_param", {}).get("num_target", "1") or 1)
        shown, wrong = objective, XGBOOST_WRONG_OBJECTIVES.get(objective)
        kind = learner.get("gradient_booster", {}).get("name", "gbtree")
        if kind != "gbtree":  # onnxmltools reads gbtree's parameters: KeyError 'gbtree_model_param'
            raise ConversionError(f"model '{model.name}': xgboost booster {kind} does not convert to ONNX: "
                                  "onnxmltools converts tree boosters (gbtree) only", loc=("source",),
                                  fix="train with booster='gbtree'")
        if targets > 1:
            shown, wrong = f"{objective} with {targets} targets", "onnxmltools converts one target; train a model per target"
    else:
        booster = source if isinstance(source, lightgbm.Booster) else source.booster_
        objective = booster.dump_model().get("objective", "custom").split()[0]
        shown, wrong = objective, LIGHTGBM_WRONG_OBJECTIVES.get(objective)
    if wrong is not None:
        fix = wrong.split("; ", 1)[1]
        raise ConversionError(f"model '{model.name}': {package} objective {shown} does not convert to ONNX "
                              f"faithfully: {wrong.split('; ', 1)[0]}", loc=("source",), fix=fix)
    return objective


XGBOOST_CLASSIFIER_OBJECTIVES = ("binary:", "multi:")
XGBOOST_REGRESSOR_OBJECTIVES = ("reg:", "count:poisson")


def load_booster(model: ModelSpec, load: Any, path: Path, package: str, fix: str) -> Any:
    """A booster read from its file, or a located one-line error: xgboost and lightgbm raise their
    own error types (XGBoostError "map::at", LightGBMError "Unknown model format") on a file that
    is not one of their models."""
    try:
        return load(model_file=str(path))
    except Exception as exc:  # XGBoostError, LightGBMError, and OSError from either
        raise ConversionError(f"model '{model.name}': {package} cannot read {path.name} as a model: "
                              f"{first_line(exc)}", loc=("source", "path"), fix=fix) from None


class XGBoostConverter(Converter):
    # .model and .bin: xgboost 2+ writes UBJSON into any other name (its save_model), which it reads back.
    suffixes = (".json", ".ubj", ".model", ".bin")

    def convert(self, model: ModelSpec, spec: Spec) -> ConvertedModel:
        if model.source.factory:
            source = call_factory(model, spec)
        else:
            source = load_booster(model, xgboost.Booster, source_file(model, spec, self.suffixes), "xgboost",
                                  "give a file written by save_model (booster.save_model('model.json'))")
        return self.convert_source(model, spec, source)

    def convert_source(self, model: ModelSpec, spec: Spec, source: Any) -> ConvertedModel:
        """A Booster or an estimator of xgboost's scikit-learn API (also a pickled XGBRanker, which
        the sklearn converter hands over: skl2onnx has no ranker)."""
        if isinstance(source, (xgboost.Booster, xgboost.XGBModel)):
            objective = refuse_wrong_conversion(model, source)
        if isinstance(source, xgboost.XGBRanker):
            return self._margin(model, spec, source.get_booster(), describe(source))
        if isinstance(source, xgboost.Booster):
            wrapper = (xgboost.XGBClassifier() if objective.startswith(XGBOOST_CLASSIFIER_OBJECTIVES) else
                       xgboost.XGBRegressor() if objective.startswith(XGBOOST_REGRESSOR_OBJECTIVES) else None)
            if wrapper is None:
                return self._margin(model, spec, source, f"Booster(objective={objective}, "
                                                         f"trees={source.num_boosted_rounds()})")
            wrapper.load_model(bytearray(source.save_raw("ubj")))
            source = wrapper
        if not isinstance(source, (xgboost.XGBClassifier, xgboost.XGBRegressor)):
            raise ConversionError(f"model '{model.name}': the xgboost source is a {type(source).__name__}",
                                  loc=("source",),
                                  fix="return an XGBClassifier, XGBRegressor, XGBRanker or Booster (trained), "
                                      "or save one with save_model")
        classifier = isinstance(source, xgboost.XGBClassifier)
        return _convert_trees(model, spec, framework_packages=("xgboost", "xgboost-cpu"), source=source,
                              convert=onnxmltools.convert_xgboost, n_features=int(source.n_features_in_),
                              classifier=classifier, predict=_sklearn_api_predict(source, classifier),
                              description=describe(source))

    @staticmethod
    def _margin(model: ModelSpec, spec: Spec, booster: Any, description: str) -> ConvertedModel:
        """The booster's raw margin as a TreeEnsembleRegressor: onnxmltools' regressor converter on
        the trees, with the base margin measured from xgboost itself (the stored base_score is in
        the objective's output space, not always the margin's)."""
        n_features = booster.num_features()
        # onnxmltools wraps a Booster in WrappedBooster and guesses its kind from the objective
        # (onnxmltools 1.16, onnxmltools/convert/xgboost/_parse.py): a rank:* booster is taken for a
        # binary classifier. Told it is a regressor, it converts the trees as they are.
        wrapped = onnxmltools_xgboost.WrappedBooster(booster)
        wrapped.kwargs.update(objective="reg:squarederror", num_class=0)
        wrapped.operator_name = "XGBRegressor"
        probe = xgboost.DMatrix(np.zeros((1, n_features), np.float32))
        trees_only = xgboost.DMatrix(np.zeros((1, n_features), np.float32), base_margin=np.zeros(1))
        base_margin = float(booster.predict(probe, output_margin=True)[0]
                            - booster.predict(trees_only, output_margin=True)[0])

        def set_base_margin(onnx_model: Any) -> None:
            for node in onnx_model.graph.node:
                if node.op_type == "TreeEnsembleRegressor":
                    for attribute in node.attribute:
                        if attribute.name == "base_values":
                            attribute.floats[:] = [base_margin]
                            break
                    else:
                        node.attribute.append(onnx.helper.make_attribute("base_values", [base_margin]))

        def predict(features: np.ndarray) -> dict[str, np.ndarray]:
            margin = booster.predict(xgboost.DMatrix(features), output_margin=True)
            return {"scores": np.asarray(margin).reshape(len(features), -1)}

        return _convert_trees(model, spec, framework_packages=("xgboost", "xgboost-cpu"), source=wrapped,
                              convert=onnxmltools.convert_xgboost, n_features=n_features, classifier=False,
                              predict=predict, description=description, output_name="scores",
                              patch=set_base_margin)


class LightGBMConverter(Converter):
    suffixes = (".txt",)

    def convert(self, model: ModelSpec, spec: Spec) -> ConvertedModel:
        if model.source.factory:
            source = call_factory(model, spec)
        else:
            source = load_booster(model, lightgbm.Booster, source_file(model, spec, self.suffixes), "lightgbm",
                                  "give a file written by booster.save_model('model.txt')")
        return self.convert_source(model, spec, source)

    def convert_source(self, model: ModelSpec, spec: Spec, source: Any) -> ConvertedModel:
        """A Booster or an estimator of lightgbm's scikit-learn API (also a pickled LGBMRanker)."""
        if isinstance(source, (lightgbm.Booster, lightgbm.LGBMModel)):
            objective = refuse_wrong_conversion(model, source)
        if isinstance(source, (lightgbm.LGBMClassifier, lightgbm.LGBMRegressor, lightgbm.LGBMRanker)):
            classifier = isinstance(source, lightgbm.LGBMClassifier)
            predict = _sklearn_api_predict(source, classifier)
            n_features, description = int(source.n_features_in_), describe(source)
        elif isinstance(source, lightgbm.Booster):
            classifier = objective in ("binary", "multiclass", "multiclassova")
            predict = _booster_predict(source, objective)
            n_features = source.num_feature()
            description = f"Booster(objective={objective}, trees={source.num_trees()})"
        else:
            raise ConversionError(f"model '{model.name}': the lightgbm source is a {type(source).__name__}",
                                  loc=("source",),
                                  fix="return an LGBMClassifier, LGBMRegressor, LGBMRanker or Booster (trained)")
        # A ranker (LGBMRanker, a lambdarank/rank_xendcg Booster) answers its scores.
        ranker = isinstance(source, lightgbm.LGBMRanker) or description.startswith(LIGHTGBM_RANK_OBJECTIVES)
        return _convert_trees(model, spec, framework_packages=("lightgbm",), source=source,
                              convert=onnxmltools.convert_lightgbm, n_features=n_features, classifier=classifier,
                              predict=_renamed(predict, "scores") if ranker else predict, description=description,
                              extra_kwargs={"zipmap": False}, output_name="scores" if ranker else "prediction")


LIGHTGBM_RANK_OBJECTIVES = ("Booster(objective=lambdarank", "Booster(objective=rank_xendcg")


def _renamed(predict: Predict, name: str) -> Predict:
    """A regressor's single answer under another name."""
    return lambda features: {name: predict(features)["prediction"]}


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
