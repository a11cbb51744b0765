"""End to end: build the demo spec (model.yaml), serve it with the real tritonserver, and check that
every served answer equals the source framework's answer over HTTP and gRPC.

Converted models carry the source framework's answers in the manifest (recorded at build time from
the original estimator / nn.Module), compared by `tritonize check` within the tolerance the build's
verification recorded. The python step and the ensemble have no recorded answer, so this test
computes them itself: the CSV parse with numpy, and the iris pipeline with the scikit-learn model
from the examples' own factory.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from tritonize import manifest as manifest_file
from tritonize.check import check_deployment
from tritonize.manifest import Manifest
from tritonize.terminal import Terminal

pytestmark = pytest.mark.server

# Models whose served answers this module checks directly (no expected outputs in the manifest).
DIRECTLY_CHECKED = {"iris_preprocess", "iris_pipeline"}


@pytest.fixture(scope="module")
def demo_repo(demo_repository):
    return demo_repository


@pytest.fixture(scope="module")
def demo_server(triton_server, demo_repo):
    return triton_server(demo_repo)


@pytest.fixture(scope="module")
def manifest(demo_repo) -> Manifest:
    return manifest_file.load(demo_repo)


@pytest.fixture(scope="module")
def iris_source(repo_root):
    """The scikit-learn estimator the build converted, re-created by the examples' factory (seeded)."""
    sys.path.insert(0, str(repo_root))
    try:
        from examples.tabular import iris_classifier
    finally:
        sys.path.remove(str(repo_root))
    return iris_classifier()


def _clients(server) -> list:
    from tritonize.triton.client import GrpcClient, HttpClient

    return [HttpClient(server.http_url), GrpcClient(server.grpc_url)]


def _csv_inputs(rows: list[list[str]]) -> dict[str, np.ndarray]:
    return {"CSV": np.array([[row[0].encode()] for row in rows], dtype=object)}


def _csv_rows(manifest: Manifest, model: str) -> list[list[str]]:
    samples = manifest.models[model].samples
    assert samples is not None
    return samples.inputs["CSV"].data


def test_every_built_model_is_served_ready(demo_server, manifest):
    states = {m["name"]: m["state"] for m in demo_server.repository_index()}
    assert states == {name: "READY" for name in manifest.models}


def test_served_answers_match_the_recorded_source_answers(demo_server, demo_repo, manifest):
    result = check_deployment(demo_repo, demo_server.http_url, "both", grpc_url=demo_server.grpc_url,
                              terminal=Terminal(quiet=True, stderr=True))
    assert not result.failures, [f"{c.model} ({c.protocol}): {c.detail}" for c in result.failures]

    with_answers = {name for name, entry in manifest.models.items()
                    if entry.samples is not None and entry.samples.outputs}
    # A step of an ensemble whose end-to-end answer is recorded and checked is covered by it.
    steps_covered = {step for name in with_answers for step in manifest.models[name].steps or []}
    unchecked = set(manifest.models) - with_answers - steps_covered - DIRECTLY_CHECKED
    assert not unchecked, f"models with neither a recorded answer nor a direct check here: {unchecked}"
    passed = {(c.model, c.protocol) for c in result.checks if c.passed}
    for name in with_answers:
        protocols = ["grpc-stream"] if manifest.models[name].is_decoupled else ["http", "grpc"]
        for protocol in protocols:
            assert (name, protocol) in passed, f"{name} was not checked over {protocol}"


def test_iris_preprocess_parses_csv_like_numpy(demo_server, manifest):
    rows = _csv_rows(manifest, "iris_preprocess")
    expected = np.array([[float(v) for v in row[0].split(",")] for row in rows], dtype=np.float32)
    for client in _clients(demo_server):
        _, features = client.infer("iris_preprocess", _csv_inputs(rows), ["FEATURES"])["FEATURES"]
        np.testing.assert_array_equal(features, expected)  # the same float32 parse of the same text: exact


def test_iris_pipeline_matches_scikit_learn(demo_server, manifest, iris_source):
    rows = _csv_rows(manifest, "iris_pipeline")
    # RandomForest compares float32 features (sklearn casts X to float32 internally), like the ONNX
    # tree ensemble, so labels must agree exactly.
    features = np.array([[float(v) for v in row[0].split(",")] for row in rows], dtype=np.float32)
    want_label = iris_source.predict(features).astype(np.int64).reshape(-1, 1)
    want_probabilities = iris_source.predict_proba(features)
    # Probabilities are averaged in float32 by ONNX and float64 by sklearn: use the tolerance the
    # build verified the classifier with.
    samples = manifest.models["iris_classifier"].samples
    assert samples is not None and samples.tolerance is not None
    tolerance = samples.tolerance["probabilities"]
    for client in _clients(demo_server):
        answer = client.infer("iris_pipeline", _csv_inputs(rows), ["label", "probabilities"])
        np.testing.assert_array_equal(answer["label"][1], want_label)
        np.testing.assert_allclose(answer["probabilities"][1], want_probabilities,
                                   atol=tolerance.atol, rtol=tolerance.rtol)
