"""HuggingFace encoders (BERT, RoBERTa, DistilBERT, XLM-R, ...) -> a text-in Triton ensemble.

`framework: huggingface` without an `llm` block (spec: `encoder`). For a spec model NAME:

    NAME            ensemble: text STRING[1] -> embeddings FP32[hidden]              (feature-extraction)
                                             -> label STRING[1], scores FP32[labels]  (text-classification)
    NAME_tokenizer  python (python_backends/hf_tokenizer): text -> input_ids, attention_mask INT64[max_length],
                    every text truncated or padded to encoder.max_length (the tokenizer's tokenizer.json
                    ships in its version directory)
    NAME_encoder    the encoder as ONNX with pooling (mean or CLS, optional L2 normalization) or the
                    classification head (softmax scores, argmax -> id2label) inside the graph; served
                    like every converted model (onnx_runner embedded, onnxruntime in a container), with
                    the spec's dynamic batching: padding to one length lets it join requests.

Export: torch.onnx.export (the TorchScript exporter), as the pytorch converter does. optimum's
exporter (PyPI optimum 2.3.0) is not installed here and would add a second exporter and its own
transformers pins for the same graph; an encoder with pooling is one traced forward, which
torch.onnx handles, and the pooling/labels are ours to add either way.

Verification: onnxruntime on tokenized sample texts against transformers (the model called with
its own 2-D attention mask, pooled in torch), FP32 tolerances of verify.py; labels exact.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import REQUIREMENTS_FILE, ModelArtifact
from .converters.base import ONNX_OPSET, ConvertedModel, finish
from .errors import ConversionError, SpecError, first_line
from .factory import call_factory
from .manifest import ModelEntry, Samples
from .optional import optional
from .resources import ONNX_RUNNER, builtin_backend_source
from .spec import EncoderSpec, EnsembleSpec, EnsembleStep, ModelSpec, Spec, TensorSpec
from .terminal import Terminal
from .triton.config import ensemble_config, onnx_model_config, python_model_config
from .versions import installed_versions

torch = optional("torch", purpose="exporting a HuggingFace encoder", extra="llm")
transformers = optional("transformers", purpose="exporting a HuggingFace encoder", extra="llm")
onnx = optional("onnx", purpose="exporting a HuggingFace encoder")

TOKENIZER_BACKEND = "hf_tokenizer"
TOKENIZER_DIR = "tokenizer"  # inside the tokenizer model's version directory
TEXT = TensorSpec(name="text", dtype="STRING", dims=[1])
TOKEN_TENSORS = ("input_ids", "attention_mask")
# Files one of which a model directory's tokenizer is saved as (fast, or slow ones transformers converts).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")
# Rows of the verification samples recorded in the manifest for `tritonize check`.
CHECK_SAMPLE_ROWS = 4
# Example input traced for export: batch 2 keeps the batch axis from being specialized to 1.
TRACE_TEXTS = ("tritonize traces this encoder", "twice")


@dataclass(frozen=True)
class EncoderPlan:
    task: str
    pooling: str
    normalize: bool
    max_length: int
    labels: tuple[str, ...] = ()  # text-classification: id2label in id order


def build_encoder(model: ModelSpec, spec: Spec, terminal: Terminal) -> list[ModelArtifact]:
    from .samples import as_bytes
    from .verify import verify

    top = _model_dir(model, spec)
    hf_dir = _transformer_dir(top)
    config = _config(hf_dir)
    plan = encoder_plan(model.encoder or EncoderSpec(), top, config)
    names = {"ensemble": model.name, "tokenizer": f"{model.name}_tokenizer", "encoder": f"{model.name}_encoder"}
    head = next((a for a in config.get("architectures") or [] if "For" in a), None)
    if plan.task == "feature-extraction" and head:
        terminal.warning(f"{model.name}: {hf_dir.name} is a {head}; feature-extraction serves its encoder's pooled "
                         "states, without that head (text-classification serves *ForSequenceClassification heads)")
    with terminal.status(f"{model.name}: exporting the {config.get('model_type')} encoder to ONNX"):
        tokenizer, network = _load(hf_dir, plan, config)
        converted = _export(model.model_copy(update={"name": names["encoder"]}), spec, network, tokenizer, plan)
    step_tokenizer = served_tokenizer(tokenizer, plan.max_length)
    texts = sample_texts(tokenizer, model.verify.samples, model.verify.seed, plan.max_length)
    samples = tokenize_as_served(model.name, step_tokenizer, tokenizer, texts, plan.max_length)
    with terminal.status(f"{model.name}: verifying against transformers on {len(texts)} texts"):
        report = verify(converted, samples, model.verify)
    version = model.version

    encoder_spec = model.model_copy(update={"name": names["encoder"]})
    encoder_files: dict[str, bytes | Path] = {f"{version}/model.onnx": converted.onnx_model.SerializeToString()}
    if spec.runtime == "embedded":
        encoder_files[f"{version}/model.py"] = builtin_backend_source(ONNX_RUNNER)
    encoder = ModelArtifact(names["encoder"], onnx_model_config(encoder_spec, converted.inputs, converted.outputs,
                                                                runtime=spec.runtime, container=spec.container),
                            encoder_files, version=version)
    check_inputs = {name: array[:CHECK_SAMPLE_ROWS] for name, array in samples.items()}
    assert converted.reference is not None
    expected = converted.reference(check_inputs)
    encoder.entry = ModelEntry(kind="onnx", framework="huggingface", source=converted.summary,
                               verification=report.to_manifest(),
                               samples=Samples.of(check_inputs, expected, report.tolerances()))

    token_outputs = [TensorSpec(name=name, dtype="INT64", dims=[plan.max_length]) for name in TOKEN_TENSORS]
    tokenizer_spec = model.model_copy(update={
        "name": names["tokenizer"], "inputs": [TEXT], "outputs": token_outputs, "dynamic_batching": None,
        "warmup": [], "parameters": {"tokenizer_dir": TOKENIZER_DIR}})
    tokenizer_files: dict[str, bytes | Path] = {
        f"{version}/model.py": builtin_backend_source(TOKENIZER_BACKEND),
        # The fast tokenizer as the `tokenizers` library stores it, with its padding and truncation
        # set (served_tokenizer): what the python step loads and runs, as verified above.
        f"{version}/{TOKENIZER_DIR}/tokenizer.json": step_tokenizer.to_str().encode()}
    if spec.runtime == "container":
        # NGC's tritonserver images install only numpy (and wheel, setuptools, virtualenv) for the
        # python backend (triton-inference-server/server v2.51.0 build.py): docker/Dockerfile and
        # docker/serve.sh install what a model directory's requirements.txt names.
        tokenizers_version = installed_versions("tokenizers")["tokenizers"]
        tokenizer_files[REQUIREMENTS_FILE] = f"tokenizers=={tokenizers_version}\n".encode()
    tokenizer_artifact = ModelArtifact(
        names["tokenizer"], python_model_config(tokenizer_spec, runtime=spec.runtime, container=spec.container),
        tokenizer_files, version=version)
    tokenizer_artifact.entry = ModelEntry(kind="python", framework="huggingface")

    outputs = [t.model_copy(update={"reshape": None}) for t in converted.outputs]
    ensemble_spec = EnsembleSpec(
        name=names["ensemble"], max_batch_size=model.max_batch_size, inputs=[TEXT], outputs=outputs,
        steps=[EnsembleStep(model=names["tokenizer"], input_map={TEXT.name: TEXT.name},
                            output_map={name: name for name in TOKEN_TENSORS}),
               EnsembleStep(model=names["encoder"], input_map={name: name for name in TOKEN_TENSORS},
                            output_map={t.name: t.name for t in outputs})])
    ensemble = ModelArtifact(names["ensemble"], ensemble_config(ensemble_spec), entry=ModelEntry(
        kind="ensemble", framework="huggingface", steps=[names["tokenizer"], names["encoder"]],
        samples=Samples.of({TEXT.name: as_bytes(np.asarray(texts[:CHECK_SAMPLE_ROWS], dtype=object)
                                                 ).reshape(-1, 1)}, expected, report.tolerances())))
    described = (f"{plan.pooling} pooling{', normalized' if plan.normalize else ''}"
                 if plan.task == "feature-extraction" else f"{len(plan.labels)} labels")
    terminal.success(f"{model.name}: {plan.task} ({described}, max_length {plan.max_length}): ensemble "
                     f"{names['ensemble']} = {names['tokenizer']} -> {names['encoder']}; {converted.summary}; "
                     f"verified on {len(texts)} texts")
    return [tokenizer_artifact, encoder, ensemble]


def _model_dir(model: ModelSpec, spec: Spec) -> Path:
    """`path`, or the directory a factory returns (it may create it first)."""
    if model.source.factory is not None:
        return Path(call_factory(model, spec)).resolve()
    assert model.source.path is not None
    return spec.resolve(model.source.path)


def _transformer_dir(top: Path) -> Path:
    """The directory the transformer's config.json and weights are in: `top`, or for a
    sentence-transformers directory of the older layout the path its modules.json gives the
    Transformer module (0_Transformer/), with the pooling and normalization still read from `top`."""
    modules_file = top / "modules.json"
    if (top / "config.json").is_file() or not modules_file.is_file():
        return top
    for module in _json_file(modules_file, list):
        if isinstance(module, dict) and str(module.get("type", "")).endswith(".Transformer") and module.get("path"):
            return top / str(module["path"])
    return top


def _config(hf_dir: Path) -> dict[str, Any]:
    config_file = hf_dir / "config.json"
    if not config_file.is_file():
        raise SpecError(f"{hf_dir} is not a HuggingFace model directory (no config.json)", loc=("source",),
                        fix="point source at a directory written by save_pretrained")
    config = _json_file(config_file, dict)
    return config


def _json_file(path: Path, kind: type) -> Any:
    """A JSON file of the model directory, or a located one-line error naming it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"{path.parent.name}/{path.name} is not readable JSON: {exc}", loc=("source",),
                        fix=f"repair {path.parent.name}/{path.name}, or save the model directory again") from None
    if not isinstance(value, kind):
        raise SpecError(f"{path.parent.name}/{path.name} holds a JSON {type(value).__name__}, not a "
                        f"{'list' if kind is list else 'object'}", loc=("source",),
                        fix=f"repair {path.parent.name}/{path.name}, or save the model directory again")
    return value


# sentence-transformers' pooling modes (1_Pooling/config.json) -> the pooling served; the others
# (weighted mean, last token, several at once) are refused rather than served as another.
SENTENCE_TRANSFORMERS_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                                 "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len"}
# Model types whose position ids start after pad_token_id (transformers' create_position_ids_from_input_ids):
# max_position_embeddings - pad_token_id - 1 positions are usable (RoBERTa's 514 hold 512 tokens).
PADDING_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "mpnet",
                            "data2vec-text", "roberta-prelayernorm", "ibert", "luke", "xmod", "esm"}


def _pooling_file(pooling_file: Path) -> str:
    modes = _json_file(pooling_file, dict)
    chosen = [name for name, value in modes.items() if name.startswith("pooling_mode_") and value]
    served = [SENTENCE_TRANSFORMERS_POOLING.get(name) for name in chosen]
    if len(chosen) != 1 or served[0] is None:
        raise SpecError(f"1_Pooling/config.json pools with {', '.join(chosen) or 'no mode'}: tritonize serves one of "
                        f"{', '.join(SENTENCE_TRANSFORMERS_POOLING)}", loc=("encoder", "pooling"),
                        fix="set encoder.pooling to the pooling to serve (mean, cls, max, mean_sqrt_len)")
    return str(served[0])


def encoder_plan(block: EncoderSpec, hf_dir: Path, config: dict[str, Any]) -> EncoderPlan:
    """The spec's encoder block, its gaps filled from the model directory."""
    architectures = config.get("architectures") or []
    task = block.task or ("text-classification" if any(a.endswith("ForSequenceClassification")
                                                       for a in architectures) else "feature-extraction")
    pooling_file, modules_file = hf_dir / "1_Pooling" / "config.json", hf_dir / "modules.json"
    pooling: str | None = block.pooling
    normalize = block.normalize
    if task == "text-classification" and (pooling is not None or normalize is not None):
        raise SpecError(f"encoder.{'pooling' if pooling is not None else 'normalize'} applies to feature-extraction; "
                        "a text-classification model's head pools for itself", loc=("encoder",),
                        fix="remove pooling and normalize, or serve the model with task: feature-extraction")
    # sentence-transformers writes its pooling choice, a Normalize module and its max_seq_length
    # next to the model.
    if task == "feature-extraction" and pooling is None and pooling_file.is_file():
        pooling = _pooling_file(pooling_file)
    if task == "feature-extraction" and normalize is None and modules_file.is_file():
        modules = _json_file(modules_file, list)
        normalize = any(isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize") for m in modules)
    max_length = block.max_length
    sentence_config = hf_dir / "sentence_bert_config.json"
    if "max_length" not in block.model_fields_set and sentence_config.is_file():
        max_length = int(_json_file(sentence_config, dict).get("max_seq_length") or max_length)
    positions = config.get("max_position_embeddings")
    if positions is not None:
        offset = int(config.get("pad_token_id") or 0) + 1 if config.get("model_type") in PADDING_OFFSET_POSITIONS else 0
        usable = int(positions) - offset
        if max_length > usable:
            after = f" less the {offset} before its first position (pad_token_id + 1)" if offset else ""
            raise SpecError(f"encoder.max_length {max_length} exceeds the model's max_position_embeddings "
                            f"{positions}{after}", loc=("encoder", "max_length"), fix=f"write max_length: {usable} or less")
    labels: tuple[str, ...] = ()
    if task == "text-classification":
        id2label = config.get("id2label") or {}
        count = len(id2label) or int(config.get("num_labels", 2))
        problem = config.get("problem_type")
        if problem in ("regression", "multi_label_classification") or count == 1:
            # The served head is softmax + argmax (transformers' pipeline: single_label_classification);
            # a regression head's value or a multi-label head's sigmoid would come out wrong.
            kind = problem or "one-label (sigmoid)"
            raise SpecError(f"encoder task text-classification serves single-label heads (softmax scores, argmax "
                            f"label); this model's config.json has a {kind} head with {count} label{'s' if count != 1 else ''}",
                            loc=("encoder", "task"), fix="serve it with task: feature-extraction and apply the head "
                                                         "in a later step, or use a single-label classifier")
        labels = tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count))
    return EncoderPlan(task, pooling or "mean", bool(normalize), max_length, labels)


def _load(hf_dir: Path, plan: EncoderPlan, config: dict[str, Any]) -> tuple[Any, Any]:
    # Loading progress bars and notices would interleave with the build log.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if not any((hf_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ConversionError(f"{hf_dir.name} has no tokenizer ({', '.join(TOKENIZER_FILES[:3])}, ...)", loc=("source",),
                              fix="save the tokenizer into the model directory too (tokenizer.save_pretrained)")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    except Exception as exc:  # transformers raises many types for a tokenizer it cannot read
        raise ConversionError(f"transformers cannot load the tokenizer of {hf_dir.name}: {type(exc).__name__}: "
                              f"{first_line(exc)}", loc=("source",),
                              fix="save the tokenizer again (tokenizer.save_pretrained)") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConversionError(f"the tokenizer in {hf_dir} has no fast (tokenizer.json) form, which the served "
                              "tokenizer step loads", loc=("source",),
                              fix="save the model directory with a fast tokenizer (tokenizer.json)")
    if tokenizer.pad_token_id is None:
        raise ConversionError(f"the tokenizer in {hf_dir} has no pad token, which padding to max_length needs",
                              loc=("source",), fix="set tokenizer.pad_token and save the tokenizer again")
    auto = (transformers.AutoModelForSequenceClassification if plan.task == "text-classification"
            else transformers.AutoModel)
    named = (config.get("architectures") or [""])[0]
    if plan.task == "feature-extraction" and named.endswith("EncoderModel") and hasattr(transformers, named):
        auto = getattr(transformers, named)  # T5EncoderModel: AutoModel would load the encoder-decoder
    try:
        # Eager attention: the exported graph is plain MatMul/Softmax, what every ONNX runtime runs.
        # float32 whatever the checkpoint's dtype: the graph is exported and verified in FP32 (a
        # float16 checkpoint met the exporter's float32 mask: "expected m1 and m2 to have the same dtype").
        network, loading = auto.from_pretrained(str(hf_dir), attn_implementation="eager", output_loading_info=True,
                                                dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:  # RuntimeError: a head of another size
        raise ConversionError(f"transformers cannot load {hf_dir.name} for {plan.task}: "
                              f"{first_line(exc)}", loc=("source",),
                              fix="use an encoder model directory (BERT, RoBERTa, DistilBERT, XLM-R ...) whose "
                                  "config.json matches its weights") from None
    # A checkpoint without a classification head (a base model) loads with one initialized at random
    # (transformers' notice is silenced above). Not checked for feature-extraction: AutoModel may miss
    # a pooler that the checkpoint's own class leaves out (RoBERTa's), which mean/cls pooling never uses.
    missing = sorted(loading.get("missing_keys") or []) if plan.task == "text-classification" else []
    if missing:
        raise ConversionError(f"{hf_dir.name} has no trained weights for {', '.join(missing[:3])}"
                              f"{' ...' if len(missing) > 3 else ''}: its text-classification head would be "
                              "random", loc=("source",),
                              fix="save a model with a trained head (after fine-tuning), or use task: feature-extraction")
    return tokenizer, network.eval()


def _pool(hidden: Any, mask: Any, plan: EncoderPlan) -> Any:
    """sentence-transformers' pooling (sentence_transformers/models/Pooling.py): the first token's
    state, the mean over real tokens (divided by the square root of their count for
    mean_sqrt_len), or their maximum (padding set to -1e9 first)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if plan.pooling == "cls":
        pooled = hidden[:, 0]
    elif plan.pooling == "max":
        pooled = hidden.masked_fill(weights == 0, -1e9).max(dim=1).values
    else:
        counts = weights.sum(dim=1).clamp(min=1e-9)
        pooled = (hidden * weights).sum(dim=1) / (counts.sqrt() if plan.pooling == "mean_sqrt_len" else counts)
    if not plan.normalize:
        return pooled
    # torch.nn.functional.normalize's arithmetic (L2 norm, eps 1e-12), broadcast rather than
    # expand_as: its Expand node left the exported embeddings' dims unknown ([-1] in the config).
    return pooled / pooled.norm(p=2.0, dim=1, keepdim=True).clamp(min=1e-12)


# Architectures that build their attention mask from the 2-D one in their own code and take no 4-D
# mask (DeBERTa: "size of tensor a (32) must match b (16)"); verification at another batch size
# than the trace's catches a mask that tracing froze.
OWN_MASK_MODEL_TYPES = {"deberta", "deberta-v2", "funnel", "modernbert"}


def _export_module(network: Any, plan: EncoderPlan) -> Any:
    class Encoder(torch.nn.Module):  # type: ignore[name-defined]  # torch is an optional module
        """input_ids, attention_mask -> pooled embeddings, or classification logits.

        The attention mask goes in as the 4-D additive mask: transformers 5's mask builder, traced
        by the TorchScript exporter, keeps the example's batch size as a constant (seen with BERT,
        RoBERTa and DistilBERT: errors ~2.5 at batch 3 after tracing at batch 2), while a 4-D mask
        is used as given."""

        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            if network.config.model_type in OWN_MASK_MODEL_TYPES:
                answer = self.network(input_ids=input_ids, attention_mask=attention_mask)
            else:
                additive = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
                additive = additive.expand(-1, 1, input_ids.shape[1], -1)
                answer = self.network(input_ids=input_ids, attention_mask=additive)
            if plan.task == "text-classification":
                return answer.logits
            return _pool(answer.last_hidden_state, attention_mask, plan)

    return Encoder().eval()


def _export(model: ModelSpec, spec: Spec, network: Any, tokenizer: Any, plan: EncoderPlan) -> ConvertedModel:
    from .converters.pytorch import native_output_dropped, single_thread

    example = tokenize(tokenizer, list(TRACE_TEXTS), plan.max_length)
    tensors = tuple(torch.from_numpy(example[name]) for name in TOKEN_TENSORS)
    first_output = "logits" if plan.task == "text-classification" else "embeddings"
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), native_output_dropped():
        warnings.simplefilter("ignore")  # the exporter warns that it is the legacy one: chosen above
        try:
            torch.onnx.export(_export_module(network, plan), tensors, buffer, dynamo=False,
                              input_names=list(TOKEN_TENSORS), output_names=[first_output],
                              # The sequence axis stays max_length: the tokenizer step pads every text
                              # to it, and a graph traced at one length need not run at others.
                              dynamic_axes={**{name: {0: "batch"} for name in TOKEN_TENSORS},
                                            first_output: {0: "batch"}},
                              opset_version=ONNX_OPSET, do_constant_folding=True)
        except Exception as exc:  # the exporter raises many types; all mean "this model does not export"
            raise ConversionError(f"model '{model.name}': torch.onnx.export failed: {first_line(exc)}", loc=("source",),
                                  fix="use an encoder architecture transformers can trace") from None
    onnx_model = onnx.load_from_string(buffer.getvalue())
    if plan.task == "text-classification":
        _add_labels(onnx_model, plan.labels)

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = (torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in TOKEN_TENSORS)
        with torch.no_grad(), single_thread(torch):
            answer = network(input_ids=ids, attention_mask=mask)  # transformers' own 2-D mask handling
            if plan.task == "feature-extraction":
                return {"embeddings": _pool(answer.last_hidden_state, mask, plan).numpy()}
            scores = answer.logits.softmax(dim=-1).numpy()
        return {"label": np.asarray(plan.labels, dtype=object)[scores.argmax(axis=1)], "scores": scores}

    converted = finish(model, spec, onnx_model, tool="torch", reference=reference,
                       tools=installed_versions("torch", "transformers", "tokenizers"))
    parameters = sum(p.numel() for p in network.parameters())
    converted.summary = (f"huggingface {type(network).__name__} ({parameters} parameters), {plan.task}: "
                         f"{converted.signature}")
    return converted


def _add_labels(onnx_model: Any, labels: tuple[str, ...]) -> None:
    """logits -> scores (softmax) and label (argmax looked up in id2label), inside the graph, so the
    served answer is the label text, as transformers' pipeline gives it."""
    helper = onnx.helper
    graph = onnx_model.graph
    graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(labels, dtype=object), "id2label"))
    graph.node.extend([
        helper.make_node("Softmax", ["logits"], ["scores"], axis=-1, name="scores"),
        helper.make_node("ArgMax", ["logits"], ["label_id"], axis=-1, keepdims=0, name="label_id"),
        helper.make_node("Gather", ["id2label", "label_id"], ["label"], axis=0, name="label"),
    ])
    count = len(labels)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("label", onnx.TensorProto.STRING, ["batch"]),
                         helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["batch", count])])


def sample_texts(tokenizer: Any, count: int, seed: int, max_length: int) -> list[str]:
    """Seeded texts of vocabulary words, from one word to past max_length tokens (truncation)."""
    special = set(tokenizer.all_special_ids)
    vocabulary = sorted(i for i in tokenizer.get_vocab().values() if i not in special)
    if not vocabulary:
        raise ConversionError("the tokenizer has no vocabulary besides its special tokens", loc=("source",),
                              fix="save the trained tokenizer into the model directory (tokenizer.save_pretrained)")
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(count):
        length = int(rng.integers(1, max_length + 8))
        texts.append(tokenizer.decode(rng.choice(vocabulary, size=length).tolist()).strip() or "empty")
    return texts


def served_tokenizer(tokenizer: Any, max_length: int) -> Any:
    """The tokenizer the tokenizer step runs: a copy of the fast tokenizer's `tokenizers` object
    with truncation and padding to max_length set as transformers sets them for
    `tokenizer(texts, padding="max_length", truncation=True)`: the tokenizer's padding_side and
    truncation_side, pad token and pad type id (they travel in its tokenizer.json)."""
    from tokenizers import Tokenizer

    step = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    step.enable_truncation(max_length, direction=tokenizer.truncation_side)
    step.enable_padding(direction=tokenizer.padding_side, pad_id=tokenizer.pad_token_id,
                        pad_type_id=tokenizer.pad_token_type_id, pad_token=tokenizer.pad_token, length=max_length)
    return step


def tokenize_as_served(name: str, step: Any, tokenizer: Any, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """The tokenizer step's answer for `texts` (what verification feeds the encoder), checked
    against transformers' own tokenization of them, which the reference answer is computed on."""
    encodings = step.encode_batch(texts)
    served = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
              "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}
    expected = tokenize(tokenizer, texts, max_length)
    for tensor in TOKEN_TENSORS:
        rows = np.flatnonzero((served[tensor] != expected[tensor]).any(axis=1)) \
            if served[tensor].shape == expected[tensor].shape else [0]
        if len(rows):
            raise ConversionError(f"model '{name}': the tokenizer step would answer {tensor} for {texts[rows[0]]!r} "
                                  f"otherwise than transformers' tokenizer: {served[tensor][rows[0]].tolist()} against "
                                  f"{expected[tensor][rows[0]].tolist()}", loc=("source",),
                                  fix="report it with the tokenizer files; meanwhile save the tokenizer with "
                                      "padding_side and truncation_side right")
    return served


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """transformers' tokenization of `texts`: every text truncated or padded to max_length."""
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in TOKEN_TENSORS}
