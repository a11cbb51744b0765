"""scikit-learn estimators and pipelines -> ONNX with skl2onnx.

Inputs: a pipeline that starts with a ColumnTransformer takes one Triton input per column (dims
[1]), named after the columns it was fitted on (`feature_names_in_` of a DataFrame, else x0, x1,
...), STRING where a fitted encoder holds string categories, INT64 where it holds integer ones,
FP32 otherwise; the spec's inputs, declared one per column, rename them and choose FP32/FP64. A
spec declaring one input takes all columns as one tensor of its dtype (columns picked by
position). A pipeline that starts with a CountVectorizer or TfidfVectorizer takes one STRING input
(dims [1], a text a row; "text" unless the spec names it). Any other estimator takes one feature
tensor (FP32 or FP64).

Outputs, by what the final estimator is (ESTIMATOR_KINDS), each compared in verification with the
sklearn method named there, called on features in the dtype the model was fitted with.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConversionError, TritonizeError
from ..factory import call_factory, spec_dir_on_path
from ..onnx_signature import cast_output, last_column_output, reshape_output
from ..optional import optional
from ..samples import as_str
from ..spec import ModelSpec, Spec
from ..versions import installed_versions
from .base import MAX_ONNX_OPSET, ONNX_ML_OPSET, ONNX_OPSET, ConvertedModel, Converter, finish, source_file

_PURPOSE = "converting a scikit-learn model"
sklearn_base = optional("sklearn.base", purpose=_PURPOSE, extra="sklearn", package="scikit-learn")
skl2onnx = optional("skl2onnx", purpose=_PURPOSE, extra="sklearn")
skl2onnx_shapes = optional("skl2onnx.common.shape_calculator", purpose=_PURPOSE, extra="sklearn", package="skl2onnx")
skl2onnx_types = optional("skl2onnx.common.data_types", purpose=_PURPOSE, extra="sklearn", package="skl2onnx")
sklearn_compose = optional("sklearn.compose", purpose=_PURPOSE, extra="sklearn", package="scikit-learn")
sklearn_text = optional("sklearn.feature_extraction.text", purpose=_PURPOSE, extra="sklearn", package="scikit-learn")
joblib = optional("joblib", purpose="loading a saved scikit-learn model", extra="sklearn")
onnx = optional("onnx", purpose=_PURPOSE, extra="sklearn")
pandas = optional("pandas", purpose="feeding a model fitted on a pandas DataFrame", extra="sklearn")

# Final estimator kind -> (graph output -> (its Triton name, the sklearn method that answers it)).
# skl2onnx names a regressor's and a transformer's single output "variable".
ESTIMATOR_KINDS: dict[str, dict[str, tuple[str, str]]] = {
    "classifier": {"label": ("label", "predict"), "probabilities": ("probabilities", "predict_proba")},
    # A linear classifier without predict_proba (SGDClassifier's hinge loss, Perceptron,
    # RidgeClassifier, LinearSVC): skl2onnx's second output holds decision_function's scores.
    "scored classifier": {"label": ("label", "predict"), "probabilities": ("scores", "decision_function")},
    # GaussianProcessRegressor's graph names its mean GPmean: predict() without return_std.
    "regressor": {"variable": ("prediction", "predict"), "GPmean": ("prediction", "predict")},
    "outlier detector": {"label": ("label", "predict"), "scores": ("scores", "decision_function")},
    "clusterer": {"label": ("label", "predict"), "scores": ("scores", "transform")},
    "transformer": {"variable": ("features", "transform")},
}

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
# Rankers of the boosters' scikit-learn APIs, which skl2onnx cannot convert: their own converter
# (converters/trees.py) serves their scores.
RANKERS = {"XGBRanker": "xgboost", "LGBMRanker": "lightgbm"}


def feature_input(model: ModelSpec, spec: Spec) -> tuple[str, str]:
    """Name and dtype of the single feature tensor: spec inputs[0] where given, else "input" FP32."""
    if model.inputs:
        first = model.inputs[0]
        if first.dtype not in ("FP32", "FP64"):
            fix = "write dtype: FP32"
            if first.dtype == "STRING" and model.source.framework == "sklearn":  # e.g. a OneHotEncoder's strings
                fix = ("fit the pipeline on a pandas DataFrame with a ColumnTransformer: it takes one input per "
                       "column, STRING ones included")
            raise ConversionError(f"model '{model.name}': a {model.source.framework} model takes FP32 (or FP64) "
                                  f"features, not {first.dtype}", loc=("inputs", 0, "dtype"), fix=fix)
        return first.name, first.dtype
    return "input", "FP32"


def n_features(estimator: Any, model: ModelSpec, spec: Spec) -> int:
    count = getattr(estimator, "n_features_in_", None)
    if count is None:
        raise ConversionError(f"model '{model.name}': the {type(estimator).__name__} is not fitted (it has no "
                              "n_features_in_)", loc=("source",),
                              fix="fit the model before saving or returning it")
    return int(count)


def load_pickled(model: ModelSpec, spec: Spec) -> Any:
    """A joblib/pickle file. Unpickling runs code from the file: load only models you trust."""
    path = source_file(model, spec, PICKLE_SUFFIXES)
    with spec_dir_on_path(spec):
        return joblib.load(path)


def describe(estimator: Any) -> str:
    """E.g. RandomForestClassifier(n_estimators=50): the class plus the parameters changed from default."""
    name = type(estimator).__name__
    if name == "FunctionTransformer" and getattr(estimator, "func", None) is None:
        return "passthrough"  # what a fitted ColumnTransformer makes of "passthrough"
    if hasattr(estimator, "steps"):
        return "Pipeline(" + " -> ".join(describe(step) for _, step in estimator.steps) + ")"
    if hasattr(estimator, "transformers_"):
        return "ColumnTransformer(" + ", ".join(
            f"{describe(step)}[{len(columns) if isinstance(columns, list) else columns!r}]"
            for _, step, columns in estimator.transformers_ if not isinstance(step, str)) + ")"
    try:
        defaults = type(estimator)().get_params(deep=False)
        changed = {k: v for k, v in estimator.get_params(deep=False).items()
                   if k in defaults and repr(v) != repr(defaults[k]) and k not in ("random_state", "n_jobs", "verbose")}
    except TypeError:  # estimators whose constructor needs arguments
        changed = {}
    return name + "(" + ", ".join(f"{k}={v!r}" for k, v in sorted(changed.items())) + ")"


@dataclass
class Column:
    """One input column of a ColumnTransformer: its Triton input, the name the transformer knows
    it by, and, for an encoded column, the fitted categories (verification samples them)."""

    name: str
    column: str | int
    dtype: str
    categories: list[str] | list[int] | None = None


def estimator_kind(model: ModelSpec, final: Any) -> str:
    if sklearn_base.is_classifier(final):
        # Fitted on a 2-D y: classes_ is a list (an array per label; predict_proba too, which
        # skl2onnx declares with a frozen batch axis: [labels, 2, 2]), or an MLP's label binarizer
        # saw a label indicator matrix (its n_outputs_ counts classes: not a sign of this).
        binarizer = getattr(final, "_label_binarizer", None)
        if isinstance(getattr(final, "classes_", None), list) or \
                getattr(binarizer, "y_type_", "") == "multilabel-indicator":
            raise ConversionError(f"model '{model.name}': the {type(final).__name__} is a multi-label (multi-output) "
                                  "classifier, fitted on a 2-D y; tritonize serves classifiers of one label a row",
                                  loc=("source",), fix="fit one classifier per label (a model each in the spec)")
        # SVC's binary graph answers other scores than its decision_function: it keeps the refusal below.
        scored = not hasattr(final, "predict_proba") and hasattr(final, "decision_function") and \
            type(final).__name__ not in ("SVC", "NuSVC")
        return "scored classifier" if scored else "classifier"
    if sklearn_base.is_regressor(final):
        return "regressor"
    if sklearn_base.is_outlier_detector(final):
        return "outlier detector"
    if sklearn_base.is_clusterer(final):
        return "clusterer"
    if hasattr(final, "transform") and not hasattr(final, "predict"):
        return "transformer"
    raise ConversionError(f"model '{model.name}': a {type(final).__name__} is not an estimator tritonize serves "
                          f"(not a {', '.join(ESTIMATOR_KINDS)})", loc=("source",),
                          fix="return or save a fitted estimator or Pipeline")


def fitted_dtype(final: Any) -> type:
    """The float type the estimator was fitted with: sklearn keeps float32 fits in float32 for a
    few estimators (KMeans, PCA...), casts everything else to float64."""
    for attribute in ("cluster_centers_", "components_", "coef_", "mean_", "scale_"):
        value = getattr(final, attribute, None)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            return value.dtype.type
    return np.float64


def _first_step(estimator: Any) -> Any:
    return estimator.steps[0][1] if hasattr(estimator, "steps") else estimator


def column_transformer(estimator: Any) -> Any | None:
    first = _first_step(estimator)
    return first if isinstance(first, sklearn_compose.ColumnTransformer) else None


def text_vectorizer(estimator: Any) -> Any | None:
    """The CountVectorizer (TfidfVectorizer is one) a pipeline starts with: it takes raw texts."""
    first = _first_step(estimator)
    return first if isinstance(first, sklearn_text.CountVectorizer) else None


TEXT_SAMPLE_WORDS = 2000  # verification texts are words of the fitted vocabulary, this many at most


def text_input(model: ModelSpec, vectorizer: Any) -> Column:
    if model.inputs and len(model.inputs) > 1:
        raise ConversionError(f"model '{model.name}' declares {len(model.inputs)} inputs but its "
                              f"{type(vectorizer).__name__} takes one text a row", loc=("inputs",),
                              fix="declare one input: {name: text, dtype: STRING, dims: [1]}")
    declared = model.inputs[0] if model.inputs else None
    if declared is not None and (declared.dtype != "STRING" or list(declared.dims) != [1]):
        raise ConversionError(f"model '{model.name}': its {type(vectorizer).__name__} takes one text a row, "
                              f"not {declared.dtype}{list(declared.dims)}", loc=("inputs", 0),
                              fix="write dtype: STRING, dims: [1]")
    vocabulary = getattr(vectorizer, "vocabulary_", None)
    if vocabulary is None:
        raise ConversionError(f"model '{model.name}': the {type(vectorizer).__name__} is not fitted (it has no "
                              "vocabulary_)", loc=("source",), fix="fit the model before saving or returning it")
    words = sorted(str(word) for word in vocabulary)
    words = words[::max(1, len(words) // TEXT_SAMPLE_WORDS)][:TEXT_SAMPLE_WORDS]  # spread over the vocabulary
    name = declared.name if declared is not None else "text"
    return Column(name, name, "STRING", words)


def picks_by_name(transformer: Any) -> bool:
    """Whether some entry of a fitted ColumnTransformer selects its columns by name (strings): those
    come from one tensor each. Positions, slices and masks also select from one feature tensor."""
    for _, _, selection in transformer.transformers_:
        if isinstance(selection, str):
            return True
        if callable(selection):  # resolved against the DataFrame's columns when it was fitted
            return hasattr(transformer, "feature_names_in_")
        values = list(selection) if isinstance(selection, (list, tuple, np.ndarray)) else []
        if values and isinstance(values[0], str):
            return True
    return False


def _encoder(transformer: Any) -> Any | None:
    """The step of a ColumnTransformer entry that holds fitted categories (OneHot/Ordinal encoders)."""
    steps = [step for _, step in transformer.steps] if hasattr(transformer, "steps") else [transformer]
    return next((step for step in steps if hasattr(step, "categories_")), None)


def _tensor_name(column: str | int) -> str:
    name = re.sub(r"[^A-Za-z0-9_.:\-]", "_", str(column))
    return name if re.match(r"^[A-Za-z_]", name) else f"x{name}"


def columns(transformer: Any, model: ModelSpec) -> list[Column]:
    """The ColumnTransformer's input columns, in the order it was fitted on, spec overrides applied."""
    count = int(transformer.n_features_in_)
    fitted_on_frame = hasattr(transformer, "feature_names_in_")
    found = [Column(_tensor_name(n), str(n), "FP32") for n in transformer.feature_names_in_] if fitted_on_frame \
        else [Column(f"x{i}", i, "FP32") for i in range(count)]
    # Resolved column indices per entry (names, slices, masks and callables all end up here).
    indices: dict[str, list[int]] = transformer._transformer_to_input_indices
    for entry, step, _ in transformer.transformers_:
        encoder = None if isinstance(step, str) else _encoder(step)
        if encoder is None:
            continue
        for position, index in enumerate(indices.get(entry, [])):
            categories = encoder.categories_[position]
            if categories.dtype.kind in "OUS":
                found[index].dtype = "STRING"
                found[index].categories = [str(c) for c in categories if isinstance(c, str)]
            elif categories.dtype.kind in "iub":
                found[index].dtype = "INT64"
                # Sampled from them: an encoder raises on (or ignores) a value it was not fitted on.
                found[index].categories = [int(c) for c in categories]
    declared = model.inputs or []
    by_name = picks_by_name(transformer)
    if len(declared) == count:
        for index, (column, tensor) in enumerate(zip(found, declared)):
            if column.dtype == "STRING" and tensor.dtype != "STRING" or column.dtype != "STRING" and \
                    tensor.dtype not in ("FP32", "FP64", "INT64"):
                wanted = "STRING" if column.dtype == "STRING" else "FP32"
                raise ConversionError(f"model '{model.name}': column {column.column!r} takes {wanted}, not "
                                      f"{tensor.dtype}", loc=("inputs", index, "dtype"), fix=f"write dtype: {wanted}")
            column.dtype = tensor.dtype
    elif len(declared) > 1 or declared and by_name:
        # Columns picked by name come from one tensor each: a single feature tensor has no column
        # names (skl2onnx: "Unable to find column name").
        raise ConversionError(f"model '{model.name}' declares {len(declared)} input{'s' if len(declared) > 1 else ''} "
                              f"but its ColumnTransformer takes {count} columns {'by name ' if by_name else ''}"
                              f"({', '.join(str(c.column) for c in found)})",
                              loc=("inputs",),
                              fix=f"declare one input per column ({count}), in that order, or leave inputs out to "
                                  "name each after its column" if by_name else
                                  f"declare one input per column ({count}), or one input for all columns")
    return found


_TENSOR_TYPES = {"FP32": "FloatTensorType", "FP64": "DoubleTensorType", "INT64": "Int64TensorType",
                 "STRING": "StringTensorType"}


class SklearnConverter(Converter):

    def convert(self, model: ModelSpec, spec: Spec) -> ConvertedModel:
        estimator = call_factory(model, spec) if model.source.factory else load_pickled(model, spec)
        if not hasattr(estimator, "fit"):
            raise ConversionError(f"model '{model.name}': the sklearn source is a {type(estimator).__name__}, "
                                  "not an estimator", loc=("source",),
                                  fix="return or save a fitted estimator or Pipeline")
        if (package := RANKERS.get(type(estimator).__name__)) and type(estimator).__module__.startswith(package):
            from .trees import LightGBMConverter, XGBoostConverter  # trees imports this module

            booster_converter = XGBoostConverter() if package == "xgboost" else LightGBMConverter()
            return booster_converter.convert_source(model, spec, estimator)
        final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
        kind = estimator_kind(model, final)
        vectorizer = text_vectorizer(estimator)
        transformer = column_transformer(estimator)
        # One tensor for all columns only where they are picked by position.
        per_column = transformer is not None and not (model.inputs and len(model.inputs) == 1 and
                                                      not picks_by_name(transformer))
        if vectorizer is not None:  # its lowercasing runs in C.UTF-8 (finish: onnx_signature.lowercase_in_c_locale)
            inputs = [text_input(model, vectorizer)]
            features = len(vectorizer.vocabulary_)
            initial_types = [(inputs[0].name, skl2onnx_types.StringTensorType([None, 1]))]
        elif per_column:
            features = n_features(estimator, model, spec)
            inputs = columns(transformer, model)
            initial_types = [(str(c.column), getattr(skl2onnx_types, _TENSOR_TYPES[c.dtype])([None, 1]))
                             for c in inputs]
        else:
            features = n_features(estimator, model, spec)
            input_name, dtype = (model.inputs[0].name, model.inputs[0].dtype) if transformer is not None and \
                model.inputs else feature_input(model, spec)
            if dtype not in _TENSOR_TYPES:
                raise ConversionError(f"model '{model.name}': skl2onnx takes FP32, FP64, INT64 or STRING features, "
                                      f"not {dtype}", loc=("inputs", 0, "dtype"), fix="write dtype: FP32")
            inputs = [Column(input_name, input_name, dtype)]
            initial_types = [(input_name, getattr(skl2onnx_types, _TENSOR_TYPES[dtype])([None, features]))]
        if kind == "classifier" and not hasattr(final, "predict_proba"):  # what the probabilities are checked with
            svc = type(final).__name__ in ("SVC", "NuSVC")
            raise ConversionError(f"model '{model.name}': the {type(final).__name__} has no predict_proba "
                                  f"({'fitted with probability=False' if svc else 'it answers labels and scores only'})"
                                  ", which its served probabilities are checked against", loc=("source",),
                                  fix=f"fit {type(final).__name__} with probability=True" if svc else
                                      "wrap the classifier in sklearn.calibration.CalibratedClassifierCV, which "
                                      "gives it predict_proba")
        categorical = getattr(final, "is_categorical_", None)  # HistGradientBoosting*'s native categories
        if categorical is not None and np.any(categorical):
            raise ConversionError(f"model '{model.name}': the {type(final).__name__} splits on categorical features, "
                                  "which skl2onnx's converter reads as numeric thresholds (labels off in verification)",
                                  loc=("source",), fix="one-hot encode those columns (a OneHotEncoder in a "
                                                       "ColumnTransformer) instead of categorical_features")
        if type(final).__module__.split(".")[0] in BOOSTERS:
            from .trees import refuse_wrong_conversion

            refuse_wrong_conversion(model, final)
        register_booster_converters(estimator)
        # ZipMap turns probabilities into a sequence of maps, which Triton cannot serve.
        classifier = kind in ("classifier", "scored classifier")
        options = {id(final): {"zipmap": False}} if classifier else None
        opset = ONNX_OPSET
        while True:
            try:
                onnx_model = skl2onnx.convert_sklearn(
                    estimator, initial_types=initial_types, options=options,
                    target_opset={"": opset, "ai.onnx.ml": ONNX_ML_OPSET})
                break
            except TritonizeError:
                raise
            except Exception as exc:  # skl2onnx raises many types; all mean "this estimator does not convert"
                # "This converter no longer works for opset 17 < 18": once more at the opset it needs.
                needed = re.search(r"for opset (\d+) < (\d+)", str(exc))
                if needed and opset < int(needed.group(2)) <= MAX_ONNX_OPSET:
                    opset = int(needed.group(2))
                    continue
                if "Option 'zipmap' not in" in str(exc) and options:
                    options = None  # LinearSVC's converter answers a tensor and takes no zipmap option
                    continue
                raise unconvertible(model, estimator, exc) from None
        mend_graph(onnx_model, final, kind)
        outputs = ESTIMATOR_KINDS[kind]
        graph_outputs = [o.name for o in onnx_model.graph.output]
        unknown = [name for name in graph_outputs if name not in outputs]
        if unknown:
            raise ConversionError(f"model '{model.name}': skl2onnx's graph of this {kind} answers "
                                  f"{', '.join(unknown)}, which tritonize cannot compare with a sklearn method",
                                  loc=("source",), fix=f"use a {kind} whose graph answers "
                                                       f"{' and '.join(outputs)}")
        renames = {graph: triton for graph, (triton, _) in outputs.items()}
        # skl2onnx names the graph inputs after the columns; Triton names must be identifiers.
        renames.update({i.name: c.name for i, c in zip(onnx_model.graph.input, inputs)})
        methods = {outputs[name][0]: outputs[name][1] for name in graph_outputs}
        # A numpy array when fitted on a DataFrame: the reference then gets one (sklearn warned
        # "X does not have valid feature names" for every array it was given).
        names_in = getattr(transformer if transformer is not None else estimator, "feature_names_in_", None)
        frame_names = [str(name) for name in names_in] if names_in is not None else []
        reference = _reference(estimator, inputs, methods, fitted_dtype(final), frame=per_column and bool(frame_names),
                               texts=vectorizer is not None,
                               frame_columns=frame_names if frame_names and not per_column else None)
        choices = {c.name: c.categories for c in inputs if c.categories}
        converted = finish(model, spec, onnx_model, tool="skl2onnx", reference=reference,
                           tools=installed_versions("scikit-learn", "skl2onnx", "pandas"), rename_outputs=renames,
                           choices=choices)
        converted.summary = f"sklearn {kind} {describe(estimator)}, {features} features: {converted.signature}"
        return converted


# The boosters with a scikit-learn API: package -> (class prefix, onnxmltools converter module and
# function, the alias prefix skl2onnx's examples register them under).
BOOSTERS = {
    "xgboost": ("XGB", "onnxmltools.convert.xgboost.operator_converters.XGBoost", "convert_xgboost", "XGBoost"),
    "lightgbm": ("LGBM", "onnxmltools.convert.lightgbm.operator_converters.LightGbm", "convert_lightgbm", "LightGbm"),
}


def mend_graph(onnx_model: Any, final: Any, kind: str) -> None:
    """Where skl2onnx 1.20's graph answers otherwise than the estimator's methods, and how."""
    route_missing_values(onnx_model, final)
    graph_outputs = [o.name for o in onnx_model.graph.output]
    if type(final).__name__ == "MLPRegressor" and final.n_outputs_ > 1 and graph_outputs == ["variable"]:
        # A multi-target MLPRegressor is answered flat, [N * targets, 1], in row order.
        reshape_output(onnx_model, "variable", [-1, int(final.n_outputs_)])
    if kind == "scored classifier" and len(final.classes_) == 2 and "probabilities" in graph_outputs:
        # Binary: decision_function answers one score a row; the graph answers (-score, score) or (score).
        last_column_output(onnx_model, "probabilities")
    if kind in ("classifier", "scored classifier") and "label" in graph_outputs and \
            np.asarray(final.classes_).dtype == np.bool_:
        # Bool classes are answered as their INT64 index (0, 1); predict() answers bools.
        cast_output(onnx_model, "label", onnx.TensorProto.BOOL)


def route_missing_values(onnx_model: Any, final: Any) -> None:
    """Send missing values (NaN) down each split as scikit-learn does. Its trees (>= 1.3) route a
    NaN per node (tree_.missing_go_to_left: where NaNs went in training, else to the child that
    took more samples); skl2onnx 1.20 writes nodes_missing_value_tracks_true 0 everywhere, so a
    NaN always took the false branch (a forest fitted with NaNs answered 22 of 200 rows with
    another label). skl2onnx writes a forest as one TreeEnsemble node whose (tree, node) ids are
    (estimators_ index, sklearn node index), an IsolationForest as one node per estimator, in
    order; every node's threshold is checked against that layout before anything is changed."""
    trees = [final] if hasattr(final, "tree_") else list(getattr(final, "estimators_", []))
    trees = [getattr(tree, "tree_", None) for tree in np.ravel(np.asarray(trees, dtype=object))]
    if not trees or any(tree is None or not hasattr(tree, "missing_go_to_left") for tree in trees):
        return
    nodes = [n for n in onnx_model.graph.node if n.op_type in ("TreeEnsembleClassifier", "TreeEnsembleRegressor")]
    if len(nodes) not in (1, len(trees)):
        return
    routes = []
    for index, node in enumerate(nodes):
        attributes = {a.name: a for a in node.attribute}
        if not {"nodes_treeids", "nodes_nodeids", "nodes_values", "nodes_modes"} <= set(attributes):
            return
        tracks = []
        for tree_id, node_id, value, mode in zip(attributes["nodes_treeids"].ints, attributes["nodes_nodeids"].ints,
                                                 attributes["nodes_values"].floats, attributes["nodes_modes"].strings):
            tree = trees[tree_id] if len(nodes) == 1 and tree_id < len(trees) else trees[index] if tree_id == 0 else None
            if mode == b"LEAF":
                tracks.append(0)
            elif tree is not None and node_id < tree.node_count and \
                    np.isclose(value, tree.threshold[node_id], rtol=1e-6, atol=1e-7):
                tracks.append(int(tree.missing_go_to_left[node_id]))
            else:
                return  # not laid out as expected: the graph stays as skl2onnx wrote it
        routes.append((node, attributes.get("nodes_missing_value_tracks_true"), tracks))
    for node, old, tracks in routes:
        if old is not None:
            node.attribute.remove(old)
        node.attribute.append(onnx.helper.make_attribute("nodes_missing_value_tracks_true", tracks))


def register_booster_converters(estimator: Any) -> None:
    """Teach skl2onnx the XGBoost and LightGBM scikit-learn estimators a model holds (alone, saved
    with joblib, or inside a Pipeline) with onnxmltools' converters: skl2onnx's own recipe
    (onnx/sklearn-onnx docs/tutorial/plot_gexternal_xgboost.py and plot_gexternal_lightgbm.py,
    update_registered_converter). Without it skl2onnx had "no converter" for a StandardScaler ->
    XGBClassifier pipeline. A model without them imports neither package."""
    parts = [estimator, *(estimator.get_params(deep=True).values() if hasattr(estimator, "get_params") else ())]
    for package in {type(part).__module__.split(".")[0] for part in parts} & BOOSTERS.keys():
        _register_booster(package)


@functools.cache
def _register_booster(package: str) -> None:
    """Once a process: skl2onnx keeps what it is taught."""
    from importlib import import_module

    prefix, converter_module, converter, alias = BOOSTERS[package]
    estimators = import_module(package)
    try:
        convert = getattr(import_module(converter_module), converter)
    except ImportError:  # no onnxmltools: skl2onnx then says it has no converter for the estimator
        return
    classifier, regressor = getattr(estimators, f"{prefix}Classifier"), getattr(estimators, f"{prefix}Regressor")
    skl2onnx.update_registered_converter(
        classifier, f"{alias}{classifier.__name__}", skl2onnx_shapes.calculate_linear_classifier_output_shapes,
        convert, options={"nocl": [True, False], "zipmap": [True, False, "columns"]})
    skl2onnx.update_registered_converter(
        regressor, f"{alias}{regressor.__name__}", skl2onnx_shapes.calculate_linear_regressor_output_shapes, convert)


def unconvertible(model: ModelSpec, estimator: Any, exc: Exception) -> ConversionError:
    """One line naming the estimator skl2onnx has no converter for (it may sit inside a pipeline)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    missing = re.search(r"<class '([\w.]+)'>", message)
    if missing and ("shape calculator" in message or "converter" in message):
        return ConversionError(f"model '{model.name}': skl2onnx cannot convert {missing.group(1).split('.')[-1]} "
                               f"(no converter for it in skl2onnx {installed_versions('skl2onnx').get('skl2onnx')})",
                               loc=("source",), fix="replace that estimator with one skl2onnx supports (see "
                                                     "skl2onnx's supported_converters())")
    if "flatten_transform" in message:  # skl2onnx: "flatten_transform==True is not implemented yet"
        return ConversionError(f"model '{model.name}': skl2onnx cannot convert {type(estimator).__name__}: {message}",
                               loc=("source",), fix="fit the VotingClassifier with flatten_transform=False (its "
                                                    "predictions are the same)")
    if "invalid literal for int()" in message or "could not convert string to float" in message:
        # An encoder fitted on a numpy array of strings: skl2onnx reads its categories as numbers.
        return ConversionError(f"model '{model.name}': skl2onnx cannot convert {type(estimator).__name__}: {message} "
                               "(an encoder fitted on strings, fed as one numeric tensor)", loc=("source",),
                               fix="fit the pipeline on a pandas DataFrame with a ColumnTransformer: it takes one "
                                   "input per column, STRING ones included")
    return ConversionError(f"model '{model.name}': skl2onnx cannot convert {type(estimator).__name__}: {message}",
                           loc=("source",), fix="use an estimator skl2onnx supports (see skl2onnx's supported list)")


def _reference(estimator: Any, inputs: list[Column], methods: dict[str, str], dtype: type, frame: bool,
               texts: bool = False, frame_columns: list[str] | None = None):
    """sklearn's answer for each output, from the method ESTIMATOR_KINDS names, on the samples in the
    dtype and container (DataFrame, array, or a list of texts) the estimator was fitted with."""
    def column_values(column: Column, array: np.ndarray) -> np.ndarray:
        if column.dtype == "STRING":
            return as_str(array).astype(object)
        return array.astype(np.int64 if column.dtype == "INT64" else dtype)

    def features_of(samples: dict[str, np.ndarray]) -> Any:
        if texts:
            return list(as_str(samples[inputs[0].name][:, 0]))
        if frame_columns is not None:  # one feature tensor for a pipeline fitted on a DataFrame
            return pandas.DataFrame(column_values(inputs[0], samples[inputs[0].name]), columns=frame_columns)
        if frame:
            return pandas.DataFrame({c.column: column_values(c, samples[c.name][:, 0]) for c in inputs})
        if len(inputs) == 1:
            return column_values(inputs[0], samples[inputs[0].name])
        values = [column_values(c, samples[c.name][:, 0]) for c in inputs]
        mixed = any(c.dtype == "STRING" for c in inputs)
        return np.column_stack([v.astype(object) if mixed else v for v in values])

    def reference(samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        features = features_of(samples)
        answer = {}
        for output, method in methods.items():
            value = getattr(estimator, method)(features)
            answer[output] = value.toarray() if hasattr(value, "toarray") else np.asarray(value)
        return answer

    return reference
