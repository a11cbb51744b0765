"""HuggingFace encoders (framework: huggingface, no `llm` block): tiny random-init BERT, RoBERTa and
DistilBERT with tokenizers trained here (WordPiece, byte-level BPE; nothing downloaded), built for
feature-extraction and text-classification, served as text-in ensembles by a real tritonserver and
compared with transformers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tritonize.errors import SpecError
from tritonize.pipeline import build
from tritonize.spec import load_spec

pytestmark = [pytest.mark.server, pytest.mark.slow]

CORPUS = ["the quick brown fox jumps over the lazy dog", "triton serves models fast", "hello world of tiny encoders",
          "a sentence about nothing much", "embeddings and labels for every text"] * 20
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
MAX_LENGTH = 16
# (name, architecture, task settings); the -cls models classify.
MODELS = [
    ("bert", "bert", {"task": "feature-extraction", "pooling": "mean", "normalize": True}),
    ("roberta", "roberta", {"task": "feature-extraction", "pooling": "cls"}),
    ("distilbert", "distilbert", {"task": "feature-extraction", "pooling": "mean"}),
    ("bert_cls", "bert", {"task": "text-classification"}),
    ("roberta_cls", "roberta", {"task": "text-classification"}),
    ("distilbert_cls", "distilbert", {"task": "text-classification"}),
    # A tokenizer that pads and truncates on the left (tokenizer_config.json): the step used to pad
    # on the right whatever it said, and verification fed both sides transformers' own ids.
    ("bert_left", "bert", {"task": "feature-extraction", "pooling": "mean"}),
    # A sentence-transformers directory pooling by max (1_Pooling/config.json), which was served as mean.
    ("st_max", "bert", {"task": "feature-extraction"}),
]
# Pooling the served answer must have where the spec leaves it to the model directory.
DIRECTORY_POOLING = {"st_max": "max"}
TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog and the dog jumps over the fox again",
         "triton", "embeddings for tiny encoders", "a b c"]


def _wordpiece():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def _bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", tokenizer.token_to_id("</s>")),
                                                            ("<s>", tokenizer.token_to_id("<s>")))
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")


def _model(architecture: str, classify: bool):
    import transformers as t

    labels = {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}} if classify else {}
    if architecture == "bert":
        config = t.BertConfig(vocab_size=200, max_position_embeddings=64, **SMALL, **labels)
        return config, t.BertForSequenceClassification if classify else t.BertModel
    if architecture == "roberta":
        # RoBERTa positions start after pad_token_id (1): 64 usable positions need 66.
        config = t.RobertaConfig(vocab_size=300, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                                 eos_token_id=2, **SMALL, **labels)
        return config, t.RobertaForSequenceClassification if classify else t.RobertaModel
    config = t.DistilBertConfig(vocab_size=200, max_position_embeddings=64, dim=32, n_layers=2, n_heads=2,
                                hidden_dim=37, **labels)
    return config, t.DistilBertForSequenceClassification if classify else t.DistilBertModel


@pytest.fixture(scope="module")
def encoder_repo(tmp_path_factory) -> tuple[Path, Path]:
    import torch

    root = tmp_path_factory.mktemp("encoders")
    tokenizers = {"bert": _wordpiece(), "distilbert": _wordpiece(), "roberta": _bpe()}
    models = []
    for name, architecture, encoder in MODELS:
        torch.manual_seed(len(models))
        config, cls = _model(architecture, encoder["task"] == "text-classification")
        cls(config).eval().save_pretrained(root / name)
        tokenizer = tokenizers[architecture]
        if name == "bert_left":
            tokenizer = _wordpiece()
            tokenizer.padding_side = tokenizer.truncation_side = "left"
        tokenizer.save_pretrained(root / name)
        if name in DIRECTORY_POOLING:
            (root / name / "1_Pooling").mkdir()
            (root / name / "1_Pooling" / "config.json").write_text(json.dumps(
                {"word_embedding_dimension": 32, **{f"pooling_mode_{mode}": mode == "max_tokens" for mode in
                                                    ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")}}))
            (root / name / "modules.json").write_text(json.dumps([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
        models.append({"name": name, "source": {"framework": "huggingface", "path": name},
                       "encoder": {**encoder, "max_length": MAX_LENGTH}, "max_batch_size": 8,
                       "dynamic_batching": {"max_queue_delay_microseconds": 200_000, "preferred_batch_size": [4]},
                       "verify": {"samples": 16}})
    (root / "model.yaml").write_text(yaml.safe_dump({"repository": "repo", "models": models}, sort_keys=False))
    result = build(root / "model.yaml")
    return root, result.repository


@pytest.fixture(scope="module")
def served(encoder_repo, triton_server):
    return triton_server(encoder_repo[1])


def _transformers_answer(model_dir: Path, texts: list[str], encoder: dict) -> dict[str, np.ndarray]:
    """The encoder's answer computed with transformers alone (numpy pooling, not tritonize's)."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        if encoder["task"] == "text-classification":
            model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
            logits = model(**batch).logits.numpy().astype(np.float64)
            scores = np.exp(logits - logits.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
            return {"label": np.array([model.config.id2label[i] for i in logits.argmax(axis=1)]), "scores": scores}
        hidden = AutoModel.from_pretrained(model_dir).eval()(**batch).last_hidden_state.numpy().astype(np.float64)
    mask = batch["attention_mask"].numpy()[:, :, None]
    pooling = encoder.get("pooling") or DIRECTORY_POOLING.get(model_dir.name, "mean")
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "max":  # sentence-transformers: padding set to -1e9, then the max over tokens
        pooled = np.where(mask == 1, hidden, -1e9).max(axis=1)
    else:
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    if encoder.get("normalize"):
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    return {"embeddings": pooled}


@pytest.mark.parametrize("name,architecture,encoder", MODELS, ids=[m[0] for m in MODELS])
def test_served_answer_matches_transformers(encoder_repo, served, name, architecture, encoder):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(served.http_url)
    text = httpclient.InferInput("text", [len(TEXTS), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=object))
    answer = client.infer(name, [text])
    expected = _transformers_answer(encoder_repo[0] / name, TEXTS, encoder)
    # Tolerance: float32 onnxruntime vs float32 torch on 2-layer, 32-wide encoders differ by ~1e-6
    # (summation order); 1e-4 absolute is 100x that and far below the ~0.1 spread of random-init
    # outputs, so a wrong pooling, mask or token id shows.
    if encoder["task"] == "feature-extraction":
        embeddings = answer.as_numpy("embeddings")
        assert embeddings.shape == (len(TEXTS), 32)
        np.testing.assert_allclose(embeddings, expected["embeddings"], atol=1e-4)
    else:
        labels = answer.as_numpy("label").reshape(-1)
        assert [v.decode() for v in labels] == expected["label"].tolist()
        assert set(expected["label"]) <= set(LABELS.values())
        np.testing.assert_allclose(answer.as_numpy("scores"), expected["scores"], atol=1e-4)


def test_encoder_batches_concurrent_requests(served):
    """Texts padded to max_length have one shape, so the encoder's dynamic batcher joins requests."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(served.http_url, concurrency=4)
    before = client.get_inference_statistics("bert_encoder")["model_stats"][0]
    pending = []
    for text in TEXTS[:4]:
        tensor = httpclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        pending.append(client.async_infer("bert", [tensor]))
    single = [p.get_result().as_numpy("embeddings")[0] for p in pending]
    after = client.get_inference_statistics("bert_encoder")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 4
    assert after["execution_count"] - before["execution_count"] < 4
    text = httpclient.InferInput("text", [4, 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS[:4]], dtype=object))
    # Batched or not, a text's embedding is the same (padding to one length, masked).
    np.testing.assert_allclose(np.stack(single), client.infer("bert", [text]).as_numpy("embeddings"), atol=1e-5)


def test_repository_layout_and_manifest(encoder_repo):
    from tritonize import manifest

    repo = encoder_repo[1]
    assert (repo / "bert_tokenizer" / "1" / "tokenizer" / "tokenizer.json").is_file()
    assert (repo / "bert_encoder" / "1" / "model.onnx").is_file()
    built = manifest.load(repo)
    assert built.models["bert"].steps == ["bert_tokenizer", "bert_encoder"]
    from tritonize.triton.config import parse_pbtxt

    # Every embedding has the hidden size as its dims, normalized (bert) or not: normalize's export
    # once left them unknown (-1).
    for name in ("bert", "roberta", "distilbert"):
        [output] = parse_pbtxt((repo / f"{name}_encoder" / "config.pbtxt").read_text()).output
        assert list(output.dims) == [32], (name, list(output.dims))
    verification = built.models["roberta_cls_encoder"].verification
    assert verification["passed"] and verification["outputs"]["label"]["compare"] == "exact"


def test_encoder_spec_errors(tmp_path):
    (tmp_path / "model.yaml").write_text(
        "models:\n  - name: m\n    source: {framework: sklearn, path: m.joblib}\n    encoder: {max_length: 8}\n")
    with pytest.raises(SpecError, match="'encoder' applies only to source.framework: huggingface"):
        load_spec(tmp_path / "model.yaml")


def test_max_length_beyond_positions_is_a_located_error(encoder_repo, tmp_path):
    spec = {"models": [{"name": "m", "source": {"framework": "huggingface", "path": str(encoder_repo[0] / "bert")},
                        "encoder": {"max_length": 100}}]}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(SpecError) as error:
        build(tmp_path / "model.yaml", tmp_path / "out")
    assert "models[0].encoder.max_length: encoder.max_length 100 exceeds the model's max_position_embeddings 64" \
        in str(error.value)


@pytest.mark.parametrize(("head", "message"), [
    ({"num_labels": 1, "problem_type": "regression"}, r"has a regression head with 1 label \(fix:"),
    ({"num_labels": 3, "problem_type": "multi_label_classification"},
     "has a multi_label_classification head with 3 labels"),
    (None, "has no trained weights for classifier.bias, classifier.weight"),  # a base model, no head
], ids=["regression", "multi-label", "no-head"])
def test_heads_the_softmax_classifier_would_serve_wrong_are_user_errors(encoder_repo, tmp_path, head, message):
    """A regression head answered LABEL_0 with score 1.0, a multi-label one softmax scores, a base
    model a random head: each with `check` passing against tritonize's own softmax."""
    import transformers as t

    from tritonize.errors import TritonizeError

    source = tmp_path / "m"
    if head is None:
        source = encoder_repo[0] / "bert"  # a BertModel: no classifier weights
    else:
        config = t.BertConfig(vocab_size=200, max_position_embeddings=64, **SMALL, **head)
        t.BertForSequenceClassification(config).save_pretrained(source)
        _wordpiece().save_pretrained(source)
    spec = {"models": [{"name": "m", "source": {"framework": "huggingface", "path": str(source)},
                        "encoder": {"task": "text-classification", "max_length": 16}}]}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(TritonizeError, match=message):
        build(tmp_path / "model.yaml", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["feature-extraction", "text-classification"])
def test_deberta_v2_builds_and_verifies(tmp_path, task):
    """DeBERTa builds its attention mask itself and takes no 4-D one: its export failed with "size
    of tensor a (32) must match b (16)". Verification runs at other batch sizes than the trace's."""
    import transformers as t

    config = t.DebertaV2Config(vocab_size=200, max_position_embeddings=64, **SMALL,
                               **({"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
                                  if task == "text-classification" else {}))
    cls = t.DebertaV2ForSequenceClassification if task == "text-classification" else t.DebertaV2Model
    cls(config).eval().save_pretrained(tmp_path / "deberta")
    _wordpiece().save_pretrained(tmp_path / "deberta")
    spec = {"repository": "repo", "models": [{"name": "deberta", "source": {"framework": "huggingface", "path": "deberta"},
                                              "encoder": {"task": task, "max_length": 16}, "verify": {"samples": 16}}]}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    from tritonize import manifest

    result = build(tmp_path / "model.yaml")
    assert manifest.load(result.repository).models["deberta_encoder"].verification["passed"]


def _other_architecture(name: str):
    """(config, model class) of encoders the served set lacks, each as small as the others."""
    import transformers as t

    if name == "electra":
        return t.ElectraConfig(vocab_size=200, max_position_embeddings=64, embedding_size=32, **SMALL), t.ElectraModel
    if name == "albert":
        return t.AlbertConfig(vocab_size=200, max_position_embeddings=64, embedding_size=16, **SMALL), t.AlbertModel
    if name == "mpnet":
        return t.MPNetConfig(vocab_size=200, max_position_embeddings=66, **SMALL), t.MPNetModel
    if name == "funnel":  # pools the sequence inside: traced at max_length, it ran at no other length
        return t.FunnelConfig(vocab_size=200, d_model=32, n_head=2, d_head=16, d_inner=37, block_sizes=[1, 1],
                              max_position_embeddings=64), t.FunnelModel
    if name == "t5_encoder":  # AutoModel loads the whole encoder-decoder, which asks for decoder inputs
        return t.T5Config(vocab_size=200, d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2,
                          architectures=["T5EncoderModel"]), t.T5EncoderModel
    # ModernBERT with a local attention window shorter than max_length: the 4-D mask lost it.
    return t.ModernBertConfig(vocab_size=200, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=37, local_attention=8,
                              global_attn_every_n_layers=2, pad_token_id=0), t.ModernBertModel


@pytest.mark.parametrize("architecture", ["electra", "albert", "mpnet", "funnel", "t5_encoder", "modernbert"])
def test_more_encoder_architectures_build_and_verify(tmp_path, architecture):
    """The README names these; verification compares each with transformers at other batch sizes
    than the trace's, and the rows-alone check compares single texts with the batch."""
    import torch

    config, cls = _other_architecture(architecture)
    torch.manual_seed(0)
    cls(config).eval().save_pretrained(tmp_path / architecture)
    _wordpiece().save_pretrained(tmp_path / architecture)
    spec = {"repository": "repo", "models": [{"name": "m", "source": {"framework": "huggingface", "path": architecture},
                                              "encoder": {"max_length": 16}, "verify": {"samples": 16}}]}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    from tritonize import manifest

    result = build(tmp_path / "model.yaml")
    assert manifest.load(result.repository).models["m_encoder"].verification["passed"]


def test_a_sentence_transformers_directory_of_the_older_layout_builds(encoder_repo, tmp_path):
    """modules.json at the top, the transformer in 0_Transformer/: the build said "not a
    HuggingFace model directory (no config.json)", and pointed at 0_Transformer/ it would lose the
    pooling and normalization beside it."""
    import shutil

    shutil.copytree(encoder_repo[0] / "bert", tmp_path / "st" / "0_Transformer")
    (tmp_path / "st" / "1_Pooling").mkdir()
    (tmp_path / "st" / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "st" / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    spec = {"repository": "repo", "models": [{"name": "st", "source": {"framework": "huggingface", "path": "st"},
                                              "encoder": {"max_length": 16}, "verify": {"samples": 8}}]}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    import torch
    from transformers import AutoModel

    from tritonize import manifest

    samples = manifest.load(build(tmp_path / "model.yaml").repository).models["st_encoder"].samples
    assert samples is not None and samples.outputs is not None
    ids, mask = (torch.from_numpy(samples.inputs[name].to_numpy()) for name in ("input_ids", "attention_mask"))
    with torch.no_grad():
        first = AutoModel.from_pretrained(tmp_path / "st" / "0_Transformer")(input_ids=ids, attention_mask=mask)
    cls = first.last_hidden_state[:, 0].numpy()
    # The recorded answers are the first token's state, L2-normalized, as the directory says
    # (float32 torch against torch: 1e-5 is far below the gap to mean pooling).
    np.testing.assert_allclose(samples.outputs["embeddings"].to_numpy(),
                               cls / np.linalg.norm(cls, axis=1, keepdims=True), atol=1e-5)


def test_the_container_tokenizer_step_names_the_package_it_needs(encoder_repo, tmp_path):
    """NGC's tritonserver image has no tokenizers; docker/Dockerfile and docker/serve.sh install
    what a model directory's requirements.txt names (tests/test_docker.py runs that part)."""
    import tokenizers

    from tritonize.triton.config import parse_pbtxt

    spec = {"repository": "repo", "models": [{"name": "m", "source": {"framework": "huggingface",
                                                                     "path": str(encoder_repo[0] / "bert")},
                                              "encoder": {"max_length": 16}, "verify": {"samples": 8}}]}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    repository = build(tmp_path / "model.yaml", runtime="container").repository
    assert (repository / "m_tokenizer" / "requirements.txt").read_text() == f"tokenizers=={tokenizers.__version__}\n"
    assert [p.name for p in repository.glob("*/requirements.txt")] == ["requirements.txt"]  # the tokenizer's only
    assert parse_pbtxt((repository / "m_encoder" / "config.pbtxt").read_text()).platform == "onnxruntime_onnx"
    embedded = build(tmp_path / "model.yaml", tmp_path / "embedded").repository
    assert not list(embedded.glob("*/requirements.txt"))  # serve's own Python has it


def test_a_float16_checkpoint_is_exported_in_float32(tmp_path):
    """transformers loaded it in float16 and the export met the float32 mask ("expected m1 and m2
    to have the same dtype"): it loads in float32, as it is verified and served."""
    import torch
    import transformers as t

    t.BertModel(t.BertConfig(vocab_size=200, max_position_embeddings=64, **SMALL)).half().save_pretrained(tmp_path / "m")
    _wordpiece().save_pretrained(tmp_path / "m")
    spec = {"repository": "repo", "models": [{"name": "m", "source": {"framework": "huggingface", "path": "m"},
                                              "encoder": {"max_length": 16}, "verify": {"samples": 8}}]}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert t.BertModel.from_pretrained(tmp_path / "m").dtype == torch.float16  # what it was saved as
    from tritonize.triton.config import parse_pbtxt

    result = build(tmp_path / "model.yaml")
    config = parse_pbtxt((result.repository / "m_encoder" / "config.pbtxt").read_text())
    assert [o.data_type for o in config.output] == [11]  # TYPE_FP32


def _broken(directory: Path, defect: str) -> str:
    """Break a saved BERT directory one way; returns the pooling the spec asks for, if any."""
    if defect == "config.json":
        (directory / "config.json").write_text('{"model_type": "bert", oops}')
    elif defect == "modules.json":
        (directory / "modules.json").write_text('{"0": "sentence_transformers.models.Transformer"}')
    elif defect == "tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            (directory / name).unlink(missing_ok=True)
    elif defect == "pooling":
        (directory / "1_Pooling").mkdir()
        (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    return ""


@pytest.mark.parametrize(("defect", "message"), [
    ("config.json", r"m/config.json is not readable JSON: Expecting property name enclosed in double quotes.*"
                    r"\(fix: repair m/config.json, or save the model directory again\)"),
    ("modules.json", r"m/modules.json holds a JSON dict, not a list"),
    ("tokenizer", r"m has no tokenizer \(tokenizer.json, tokenizer_config.json, vocab.txt, ...\)"),
    ("pooling", r"1_Pooling/config.json pools with pooling_mode_weightedmean_tokens: tritonize serves one of "
                r"pooling_mode_cls_token, .*\(fix: set encoder.pooling"),
])
def test_a_broken_model_directory_is_a_located_error_not_a_traceback(encoder_repo, tmp_path, defect, message):
    import shutil

    from tritonize.errors import TritonizeError

    shutil.copytree(encoder_repo[0] / "bert", tmp_path / "m")
    _broken(tmp_path / "m", defect)
    spec = {"models": [{"name": "m", "source": {"framework": "huggingface", "path": "m"}, "encoder": {"max_length": 16}}]}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(TritonizeError, match=message) as error:
        build(tmp_path / "model.yaml", tmp_path / "out")
    assert "models[0]" in str(error.value) and not (tmp_path / "out").exists()


def test_encoder_settings_the_model_would_ignore_are_refused(encoder_repo, tmp_path):
    spec = {"models": [{"name": "m", "source": {"framework": "huggingface", "path": str(encoder_repo[0] / "bert_cls")},
                        "encoder": {"pooling": "cls", "max_length": 16}}]}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(SpecError, match=r"models\[0\].encoder: encoder.pooling applies to feature-extraction"):
        build(tmp_path / "model.yaml", tmp_path / "out")
    # RoBERTa's positions start after pad_token_id: of its 66, 64 hold tokens.
    spec["models"][0].update(source={"framework": "huggingface", "path": str(encoder_repo[0] / "roberta")},
                             encoder={"max_length": 66})
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(SpecError, match=r"encoder.max_length 66 exceeds the model's max_position_embeddings 66 less "
                                        r"the 2 before its first position \(pad_token_id \+ 1\) \(fix: write "
                                        r"max_length: 64 or less\)"):
        build(tmp_path / "model.yaml", tmp_path / "out")


def test_check_replays_the_recorded_texts(encoder_repo, served):
    """`tritonize check` sends the manifest's sample texts to every ensemble and encoder and compares
    with transformers' recorded answers (labels exact, floats within the verification tolerance)."""
    from tritonize.check import check_deployment
    from tritonize.terminal import Terminal

    result = check_deployment(encoder_repo[1], served.http_url, "http", terminal=Terminal(quiet=True))
    assert result.passed, [c.detail for c in result.checks]
    checked = {c.model for c in result.checks if c.status == "passed"}
    assert {"bert", "roberta_cls", "distilbert_cls_encoder"} <= checked
