"""`tritonize check`: ask a running Triton server the recorded sample questions, compare its answers.

For every model in `<repo>/tritonize.manifest.json` that carries samples, the sample inputs go to the
server over HTTP and/or gRPC (tritonclient) and each output is compared with the recorded expected
output: floats within the recorded tolerance (numpy.allclose semantics: |got - want| <= atol +
rtol * |want|), integers, booleans and strings exactly. Without recorded outputs only the names,
datatypes and shapes are checked against the server's model metadata.

Decoupled models answer over gRPC streaming only: their responses are collected until the final one
and joined as `samples.stream_join` says (see STREAM_JOINS) before the comparison.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import manifest as manifest_file
from .errors import TritonizeError
from .manifest import MANIFEST_NAME, ModelEntry, Samples, TensorSample, Tolerance
from .terminal import Terminal
from .triton.client import Client, GrpcClient, HttpClient, server_exception, wire_datatype

Protocol = Literal["http", "grpc", "both"]


@dataclass
class TensorCheck:
    name: str
    passed: bool
    max_abs_error: float | None = None  # None for strings and when shapes differ
    message: str = ""  # why it failed, with the numbers
    served: Any = None  # the server's answer (joined, for streams), for display


@dataclass
class ModelCheck:
    model: str
    protocol: str  # "http", "grpc" or "grpc-stream"
    status: Literal["passed", "failed", "skipped"]
    tensors: list[TensorCheck] = field(default_factory=list)
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def max_abs_error(self) -> float | None:
        errors = [t.max_abs_error for t in self.tensors if t.max_abs_error is not None]
        return max(errors) if errors else None

    @property
    def detail(self) -> str:
        failed = [f"{t.name}: {t.message}" for t in self.tensors if not t.passed]
        return "; ".join([self.message] * bool(self.message) + failed)


@dataclass
class CheckResult:
    repository: Path
    http_url: str | None
    grpc_url: str | None
    checks: list[ModelCheck] = field(default_factory=list)

    @property
    def failures(self) -> list[ModelCheck]:
        return [c for c in self.checks if c.status == "failed"]

    @property
    def passed(self) -> bool:
        """No check failed and at least one ran (a manifest without samples verifies nothing)."""
        return not self.failures and any(c.status == "passed" for c in self.checks)


def check_deployment(repository: str | Path, url: str = "localhost:8000", protocol: Protocol = "both",
                     models: list[str] | None = None, terminal: Terminal | None = None, *,
                     grpc_url: str | None = None, timeout_s: float = 60.0) -> CheckResult:
    """Check the models of `repository` as served at `url`.

    `url` is the endpoint of `protocol` ("http" or "grpc"); with "both" it is the HTTP endpoint and
    the gRPC one is `grpc_url`, by default the next port on the same host (Triton's own
    8000/8001 layout, which `tritonize serve` keeps).
    """
    terminal = terminal or Terminal()
    repository = Path(repository)
    entries = manifest_file.load(repository).models
    names = list(entries) if models is None else list(models)
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise TritonizeError(f"no model named {', '.join(map(repr, unknown))} in the manifest",
                             file=repository / MANIFEST_NAME, fix=f"choose from: {', '.join(entries)}")
    if protocol not in ("http", "grpc", "both"):
        raise TritonizeError(f"unknown protocol '{protocol}'", fix="use http, grpc or both")

    http_url, grpc_url = _endpoints(url, protocol, grpc_url)
    clients: dict[str, Client] = {}
    if http_url:
        clients["http"] = HttpClient(http_url, timeout_s)
    if grpc_url:
        clients["grpc"] = GrpcClient(grpc_url, timeout_s)
    for client in clients.values():
        _require_live(client, repository)

    result = CheckResult(repository=repository, http_url=http_url, grpc_url=grpc_url)
    for name in names:
        result.checks.extend(_check_model(name, entries[name], clients, protocol))
    _report(result, terminal)
    return result


# -- stream joins: how a decoupled model's responses become one answer ---------------------------
# Each join takes one output's arrays, one per response in arrival order, and the recorded expected
# array, and returns (served, expected) to compare. samples.stream_join names one (default concat).
StreamJoin = Callable[[list[np.ndarray], np.ndarray], tuple[np.ndarray, np.ndarray]]


def _join_concat(parts: list[np.ndarray], expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p.reshape(-1) if p.ndim == 0 else p for p in parts], axis=0), expected


def _join_last(parts: list[np.ndarray], expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return parts[-1], expected


def _join_concat_strings(parts: list[np.ndarray], expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token-by-token text: every string piece of every response, joined into one string."""
    served = "".join(_text(item) for part in parts for item in part.reshape(-1))
    wanted = "".join(_text(item) for item in expected.reshape(-1))
    return np.array([served], dtype=object), np.array([wanted], dtype=object)


STREAM_JOINS: dict[str, StreamJoin] = {
    "concat": _join_concat,
    "last": _join_last,
    "concat_strings": _join_concat_strings,
}
DEFAULT_STREAM_JOIN = "concat"


# -- one model ------------------------------------------------------------------------------------
def _check_model(name: str, entry: ModelEntry, clients: dict[str, Client], protocol: str) -> list[ModelCheck]:
    samples = entry.samples
    if samples is None or not samples.inputs:
        return [ModelCheck(name, protocol, "skipped", message="no samples recorded in the manifest")]
    if entry.is_decoupled:
        if "grpc" not in clients:
            return [ModelCheck(name, "http", "skipped",
                               message="decoupled: answers over gRPC streaming only (use --protocol grpc or both)")]
        join = samples.stream_join or DEFAULT_STREAM_JOIN
        if join not in STREAM_JOINS:
            return [ModelCheck(name, "grpc-stream", "failed",
                               message=f"unknown stream_join '{join}' (known: {', '.join(STREAM_JOINS)})")]
        return [_run_check(name, samples, clients["grpc"], stream_join=join)]
    return [_run_check(name, samples, client) for client in clients.values()]


def _run_check(name: str, samples: Samples, client: Client, stream_join: str | None = None) -> ModelCheck:
    label = "grpc-stream" if stream_join else client.protocol
    inputs, datatypes = _request(samples.inputs)
    try:
        if not client.is_model_ready(name):
            return ModelCheck(name, label, "failed", message=f"not ready on the server: {_model_reason(client, name)}")
        expected = samples.outputs or {}
        declared: dict[str, dict[str, Any]] = {} if expected else {o["name"]: o for o in client.output_metadata(name)}
        output_names = list(expected or samples.checked_outputs or declared)
        if stream_join:
            assert isinstance(client, GrpcClient)  # decoupled models are checked over gRPC only
            parts = client.stream(name, inputs, output_names, samples.parameters, datatypes)
            served = {n: [p[n] for p in parts if n in p] for n in output_names}
        else:
            answer = client.infer(name, inputs, output_names, samples.parameters, datatypes)
            served = {n: [answer[n]] if n in answer else [] for n in output_names}
    except server_exception() as exc:
        return ModelCheck(name, label, "failed", message=_one_line(str(exc)))
    except TimeoutError as exc:
        return ModelCheck(name, label, "failed", message=str(exc))

    if expected:
        tolerances = samples.tolerance or {}
        tensors = [_compare(n, served[n], recorded, tolerances.get(n) or Tolerance(), stream_join)
                   for n, recorded in expected.items()]
    else:
        # checked_outputs (LLM ensembles): datatype only, as upstream's postprocessing answers
        # text_output flat ([batch * beams]) under the declared [-1, -1].
        tensors = [_check_declared(n, served[n], declared[n], check_shape=not samples.checked_outputs)
                   for n in output_names]
    return ModelCheck(name, label, "passed" if all(t.passed for t in tensors) else "failed", tensors)


def _compare(name: str, parts: list[tuple[str, np.ndarray]], recorded: TensorSample, tolerance: Tolerance,
             stream_join: str | None) -> TensorCheck:
    if not parts:
        return TensorCheck(name, False, message="missing from the server's answer")
    datatype = wire_datatype(recorded.datatype)
    served_types = {t for t, _ in parts}
    if served_types != {datatype}:
        return TensorCheck(name, False, message=f"datatype {'/'.join(sorted(served_types))}, expected {datatype}")
    want = recorded.to_numpy()
    arrays = [a for _, a in parts]
    got, want = STREAM_JOINS[stream_join](arrays, want) if stream_join else (arrays[0], want)
    if got.shape != want.shape:
        return TensorCheck(name, False, message=f"shape {list(got.shape)}, expected {list(want.shape)}", served=got)
    if datatype == "BYTES":
        got_text, want_text = _texts(got), _texts(want)
        wrong = np.argwhere(got_text != want_text)
        if wrong.size:
            index = tuple(int(i) for i in wrong[0])
            return TensorCheck(name, False, message=f"{len(wrong)} of {want.size} strings differ, first at "
                               f"{list(index)}: got {got_text[index]!r}, expected {want_text[index]!r}", served=got)
        return TensorCheck(name, True, served=got)

    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    if datatype.startswith(("FP", "BF")):
        atol, rtol = tolerance.atol, tolerance.rtol
        ok = np.isclose(got, want, atol=atol, rtol=rtol, equal_nan=True)
        rule = f"atol {atol:g}, rtol {rtol:g}"
    else:  # integers and booleans: labels, counts, token ids are exact
        ok = got == want
        rule = "exact"
    if ok.all():
        return TensorCheck(name, True, max_abs, served=got)
    excess = np.where(ok, -np.inf, np.nan_to_num(diff, nan=np.inf))
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), got.shape))
    verdict = "outside tolerance" if rule != "exact" else "differ"
    return TensorCheck(name, False, max_abs,
                       f"{int((~ok).sum())} of {ok.size} values {verdict} ({rule}); max |error| "
                       f"{max_abs:.6g} at {list(index)}: got {got[index]!r}, expected {want[index]!r}", served=got)


def _check_declared(name: str, parts: list[tuple[str, np.ndarray]], declared: dict,
                    check_shape: bool = True) -> TensorCheck:
    """No recorded answer: the output must still exist with its declared datatype and shape."""
    if not parts:
        return TensorCheck(name, False, message="missing from the server's answer")
    datatype, array = parts[0]
    if datatype != declared["datatype"]:
        return TensorCheck(name, False, message=f"datatype {datatype}, declared {declared['datatype']}")
    dims = [int(d) for d in declared["shape"]]
    if check_shape and (len(dims) != array.ndim or any(d != -1 and d != s for d, s in zip(dims, array.shape))):
        return TensorCheck(name, False, message=f"shape {list(array.shape)} does not fit declared {dims}")
    return TensorCheck(name, True, message="no expected values recorded: checked datatype and shape",
                       served=array)


# -- helpers ---------------------------------------------------------------------------------------
def _require_live(client: Client, repository: Path) -> None:
    try:
        live = client.is_server_live()
    except Exception as exc:  # connection refused, DNS, TLS: all mean "nobody answers here"
        raise TritonizeError(f"no Triton server answers at {client.url} over {client.display_name} "
                             f"({_one_line(str(exc)) or type(exc).__name__})",
                             fix=f"start one with `tritonize serve {repository}` or pass the server's address "
                             "with --url") from None
    if not live:
        raise TritonizeError(f"the Triton server at {client.url} is not live",
                             fix=f"restart it with `tritonize serve {repository}`")


def _model_reason(client: Client, name: str) -> str:
    try:
        index = client.repository_index()
    except Exception:  # noqa: BLE001 - a restricted repository API (tritonize serve) answers 403
        return "not ready (the server's repository index is restricted)"
    for model in index:
        if model.get("name") == name:
            return f"{model.get('state', 'UNKNOWN')} {model.get('reason', '')}".strip()
    return "not in the server's repository (is it serving another repository?)"


def _request(recorded: dict[str, TensorSample]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Recorded sample inputs as numpy arrays and their wire datatypes."""
    return ({name: tensor.to_numpy() for name, tensor in recorded.items()},
            {name: wire_datatype(tensor.datatype) for name, tensor in recorded.items()})


def _endpoints(url: str, protocol: str, grpc_url: str | None) -> tuple[str | None, str | None]:
    url = _strip_scheme(url)
    if protocol == "http":
        return url, None
    if protocol == "grpc":
        return None, url
    if grpc_url is None:
        host, _, port = url.rpartition(":")
        if not port.isdigit():
            raise TritonizeError(f"'{url}' has no port", fix="write the HTTP endpoint as host:port, e.g. localhost:8000")
        grpc_url = f"{host}:{int(port) + 1}"
    return url, _strip_scheme(grpc_url)


def _strip_scheme(url: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme):].rstrip("/")
    return url.rstrip("/")


def _text(item: Any) -> str:
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)


def _texts(array: np.ndarray) -> np.ndarray:
    return np.vectorize(_text, otypes=[object])(array) if array.size else array.astype(object)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _report(result: CheckResult, terminal: Terminal) -> None:
    rows = []
    for check in result.checks:
        error = check.max_abs_error
        rows.append([check.model, check.protocol, check.status.upper(),
                     "" if error is None else f"{error:.3g}", check.detail])
    endpoints = ", ".join(u for u in (result.http_url, result.grpc_url) if u)
    terminal.table(f"tritonize check {result.repository} at {endpoints}",
                   ["Model", "Protocol", "Result", "Max |error|", "Detail"], rows)
    ran = [c for c in result.checks if c.status != "skipped"]
    if result.failures:
        terminal.error(f"{len(result.failures)} of {len(ran)} checks failed: "
                       + ", ".join(sorted({f'{c.model} ({c.protocol})' for c in result.failures})))
    elif not ran:
        terminal.warning("nothing was checked: no model in the manifest carries samples")
    else:
        terminal.success(f"all {len(ran)} checks passed: the served answers match the recorded ones")
