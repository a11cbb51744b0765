"""HuggingFace encoders (BERT, RoBERTa, DistilBERT, XLM-R, ...) -> a text-in Triton ensemble.

`framework: huggingface` without an `llm` block (spec: `encoder`). For a spec model NAME:

    NAME            ensemble: text STRING[1] -> embeddings FP32[hidden]              (feature-extraction)
                                             -> label STRING[1], scores FP32[labels]  (text-classification)
    NAME_tokenizer  python (python_backends/hf_tokenizer): text -> input_ids, attention_mask INT64[-1],
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

from .artifacts import ModelArtifact
from .converters.base import ONNX_OPSET, ConvertedModel, finish
from .errors import ConversionError, SpecError
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

    hf_dir = _model_dir(model, spec)
    config = _config(hf_dir)
    plan = encoder_plan(model.encoder or EncoderSpec(), hf_dir, config)
    names = {"ensemble": model.name, "tokenizer": f"{model.name}_tokenizer", "encoder": f"{model.name}_encoder"}
    with terminal.status(f"{model.name}: exporting the {config.get('model_type')} encoder to ONNX"):
        tokenizer, network = _load(hf_dir, plan)
        converted = _export(model.model_copy(update={"name": names["encoder"]}), spec, network, tokenizer, plan)
    texts = sample_texts(tokenizer, model.verify.samples, model.verify.seed, plan.max_length)
    samples = tokenize(tokenizer, texts, plan.max_length)
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

    token_outputs = [TensorSpec(name=name, dtype="INT64", dims=[-1]) for name in TOKEN_TENSORS]
    tokenizer_spec = model.model_copy(update={
        "name": names["tokenizer"], "inputs": [TEXT], "outputs": token_outputs, "dynamic_batching": None,
        "warmup": [], "parameters": {"tokenizer_dir": TOKENIZER_DIR, "max_length": str(plan.max_length),
                                     "pad_id": str(tokenizer.pad_token_id), "pad_token": tokenizer.pad_token}})
    tokenizer_artifact = ModelArtifact(
        names["tokenizer"], python_model_config(tokenizer_spec, runtime=spec.runtime, container=spec.container),
        {f"{version}/model.py": builtin_backend_source(TOKENIZER_BACKEND),
         # The fast tokenizer as the `tokenizers` library stores it: what the python step loads.
         f"{version}/{TOKENIZER_DIR}/tokenizer.json": tokenizer.backend_tokenizer.to_str().encode()},
        version=version)
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


def _config(hf_dir: Path) -> dict[str, Any]:
    config_file = hf_dir / "config.json"
    if not config_file.is_file():
        raise SpecError(f"{hf_dir} is not a HuggingFace model directory (no config.json)", loc=("source",),
                        fix="point source at a directory written by save_pretrained")
    config: dict[str, Any] = json.loads(config_file.read_text())
    return config


def encoder_plan(block: EncoderSpec, hf_dir: Path, config: dict[str, Any]) -> EncoderPlan:
    """The spec's encoder block, its gaps filled from the model directory."""
    architectures = config.get("architectures") or []
    task = block.task or ("text-classification" if any(a.endswith("ForSequenceClassification")
                                                       for a in architectures) else "feature-extraction")
    pooling_file, modules_file = hf_dir / "1_Pooling" / "config.json", hf_dir / "modules.json"
    pooling, normalize = block.pooling, block.normalize
    # sentence-transformers writes its pooling choice and a Normalize module next to the model.
    if pooling is None and pooling_file.is_file():
        pooling = "cls" if json.loads(pooling_file.read_text()).get("pooling_mode_cls_token") else "mean"
    if normalize is None and modules_file.is_file():
        normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules_file.read_text()))
    positions = config.get("max_position_embeddings")
    if positions is not None and block.max_length > int(positions):
        raise SpecError(f"encoder.max_length {block.max_length} exceeds the model's max_position_embeddings "
                        f"{positions}", loc=("encoder", "max_length"), fix=f"write max_length: {positions} or less")
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
    return EncoderPlan(task, pooling or "mean", bool(normalize), block.max_length, labels)


def _load(hf_dir: Path, plan: EncoderPlan) -> tuple[Any, Any]:
    # Loading progress bars and notices would interleave with the build log.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    if not getattr(tokenizer, "is_fast", False):
        raise ConversionError(f"the tokenizer in {hf_dir} has no fast (tokenizer.json) form, which the served "
                              "tokenizer step loads", loc=("source",),
                              fix="save the model directory with a fast tokenizer (tokenizer.json)")
    if tokenizer.pad_token_id is None:
        raise ConversionError(f"the tokenizer in {hf_dir} has no pad token, which padding to max_length needs",
                              loc=("source",), fix="set tokenizer.pad_token and save the tokenizer again")
    auto = (transformers.AutoModelForSequenceClassification if plan.task == "text-classification"
            else transformers.AutoModel)
    try:
        # Eager attention: the exported graph is plain MatMul/Softmax, what every ONNX runtime runs.
        network, loading = auto.from_pretrained(str(hf_dir), attn_implementation="eager", output_loading_info=True)
    except (ValueError, KeyError, OSError) as exc:
        raise ConversionError(f"transformers cannot load {hf_dir.name} for {plan.task}: "
                              f"{str(exc).strip().splitlines()[0]}", loc=("source",),
                              fix="use an encoder model directory (BERT, RoBERTa, DistilBERT, XLM-R ...)") from None
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
    """sentence-transformers' pooling: the mean over real tokens, or the first token's state."""
    if plan.pooling == "cls":
        pooled = hidden[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if not plan.normalize:
        return pooled
    # torch.nn.functional.normalize's arithmetic (L2 norm, eps 1e-12), broadcast rather than
    # expand_as: its Expand node left the exported embeddings' dims unknown ([-1] in the config).
    return pooled / pooled.norm(p=2.0, dim=1, keepdim=True).clamp(min=1e-12)


# Architectures that build their attention mask from the 2-D one in their own code and take no 4-D
# mask (DeBERTa: "size of tensor a (32) must match b (16)"); verification at another batch size
# than the trace's catches a mask that tracing froze.
OWN_MASK_MODEL_TYPES = {"deberta", "deberta-v2"}


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
    from .converters.pytorch import single_thread

    example = tokenize(tokenizer, list(TRACE_TEXTS), plan.max_length)
    tensors = tuple(torch.from_numpy(example[name]) for name in TOKEN_TENSORS)
    first_output = "logits" if plan.task == "text-classification" else "embeddings"
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter warns that it is the legacy one: chosen above
        try:
            torch.onnx.export(_export_module(network, plan), tensors, buffer, dynamo=False,
                              input_names=list(TOKEN_TENSORS), output_names=[first_output],
                              dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in TOKEN_TENSORS},
                                            first_output: {0: "batch"}},
                              opset_version=ONNX_OPSET, do_constant_folding=True)
        except Exception as exc:  # the exporter raises many types; all mean "this model does not export"
            raise ConversionError(f"model '{model.name}': torch.onnx.export failed: "
                                  f"{str(exc).strip().splitlines()[0]}", loc=("source",),
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
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(count):
        length = int(rng.integers(1, max_length + 8))
        texts.append(tokenizer.decode(rng.choice(vocabulary, size=length).tolist()).strip() or "empty")
    return texts


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """What the tokenizer step sends the encoder: every text truncated or padded to max_length."""
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in TOKEN_TENSORS}
