"""Rules for ensembles: steps, the tensors between them, data flow, edges, decoupled steps and
ensembles that contain themselves (triton-inference-server/core r24.10
src/ensemble_scheduler/ensemble_utils.cc `ValidateEnsembleConfig`, src/model_config_utils.cc
`ValidateEnsembleSchedulingConfig`, src/model_repository_manager/model_repository_manager.cc
`CheckNode` for the steps' versions)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from ..config import data_type_name
from .model import WILDCARD
from .violation import WARNING, Loc, Violation


@dataclass(frozen=True)
class _End:
    """One end of an ensemble edge: who declares the tensor, with which type and shape."""

    who: str  # e.g. "ensemble input 'RAW'", "step 1 (model 'clf') input 'X'"
    batching: bool
    dtype: int
    dims: tuple[int, ...]

    @property
    def full_dims(self) -> tuple[int, ...]:
        return ((WILDCARD,) if self.batching else ()) + self.dims


Step = Any  # mc.ModelEnsembling.Step: tritonclient ships no type stubs for nested messages
Steps = list[Step]  # the ensemble's steps
Producers = dict[str, tuple[int, str]]  # ensemble tensor -> (step, step output)
Consumers = dict[str, list[tuple[int, str]]]  # ensemble tensor -> [(step, step input)]


def check_ensemble(name: str, config: mc.ModelConfig, configs: dict[str, mc.ModelConfig],
                   unreadable: frozenset[str],
                   loaded_versions: dict[str, list[int]] | None = None) -> list[Violation]:
    """An ensemble's steps and data flow. loaded_versions (model -> the versions Triton loads
    from its directory) lets steps' model_version be checked; models missing there are not."""
    steps = list(config.ensemble_scheduling.step)
    if not steps:
        return [Violation(name, ("ensemble_scheduling", "step"), "ensemble-steps",
                          f"must specify 'step' for ensemble '{name}'", "add at least one step")]
    out, producers, consumers = _map_tensors(name, config, steps)
    for s, step in enumerate(steps):
        out += _check_step(name, config, s, step, configs, unreadable, loaded_versions or {})
    out += _check_data_flow(name, config, steps, producers, consumers)
    order = _step_order(steps, producers, consumers)
    if order is None:
        cycle = _find_cycle(steps, producers)
        # Triton names an ensemble output that the cycle keeps from being written.
        stuck = sorted(t for t, (s, _) in producers.items() if s in cycle and t in {io.name for io in config.output})
        head = f"output '{stuck[0]}' for ensemble '{name}' is not written: " if stuck else ""
        out.append(Violation(name, ("ensemble_scheduling", "step"), "ensemble-cycle", f"{head}steps "
                             "depend on each other in a cycle: " + " -> ".join(
                                 f"step {s} (model '{steps[s].model_name}')" for s in cycle),
                             "break the cycle: a step may only read ensemble inputs and outputs "
                             "of earlier steps"))
    out += _check_edges(name, config, steps, configs, producers, consumers, config.max_batch_size > 0)
    if order is not None:
        out += _check_decoupled(name, config, steps, configs, order)
    return out


def _map_tensors(name: str, config: mc.ModelConfig,
                 steps: Steps) -> tuple[list[Violation], Producers, Consumers]:
    """Who writes and who reads each ensemble tensor; each step has maps; each tensor one writer."""
    out: list[Violation] = []
    ensemble_inputs = {io.name for io in config.input}
    producers: Producers = {}
    consumers: Consumers = {}

    def add(loc: Loc, rule: str, message: str, fix: str, severity: str = "error") -> None:
        out.append(Violation(name, ("ensemble_scheduling",) + loc, rule, message, fix, severity))

    for s, step in enumerate(steps):
        where = f"step {s} (model '{step.model_name}')"
        if not step.model_name:
            add(("step", s, "model_name"), "ensemble-step", f"must specify 'model_name' in step {s} of "
                f"ensemble '{name}'",
                "name the model this step runs")
        if not step.input_map:
            add(("step", s, "input_map"), "ensemble-step", f"must specify 'input_map' in step {s} of "
                f"ensemble '{name}' ({where})",
                "map the step model's inputs: key = its input name, value = an ensemble tensor")
        if not step.output_map:
            add(("step", s, "output_map"), "ensemble-step", f"must specify 'output_map' in step {s} of "
                f"ensemble '{name}' ({where})",
                "map the step model's outputs: key = its output name, value = an ensemble tensor")
        for key, tensor in sorted(step.output_map.items()):
            if tensor in ensemble_inputs:
                # Triton 2.51 loads this (seen; ValidateTensorMapping only checks that type and
                # shape agree), but the step's result and the request's input then share a name.
                add(("step", s, "output_map", key), "ensemble-input-overwritten",
                    f"{where} writes output '{key}' to ensemble tensor '{tensor}', which is an "
                    "ensemble input (Triton loads it; the input and the step output then share "
                    "one tensor)", "give the step output its own ensemble tensor name", WARNING)
            elif tensor in producers:
                first, first_key = producers[tensor]
                add(("step", s, "output_map", key), "ensemble-tensor-produced-once",
                    f"ensemble tensor '{tensor}' can appear in an output map only once: written by "
                    f"{where} output '{key}' and already by step {first} (model "
                    f"'{steps[first].model_name}') output '{first_key}'",
                    "give each step output its own ensemble tensor name")
            else:
                producers[tensor] = (s, key)
        for key, tensor in sorted(step.input_map.items()):
            consumers.setdefault(tensor, []).append((s, key))
    return out, producers, consumers


def _check_step(name: str, config: mc.ModelConfig, s: int, step: Step, configs: dict[str, mc.ModelConfig],
                unreadable: frozenset[str], loaded_versions: dict[str, list[int]]) -> list[Violation]:
    """The step's model exists, batches enough, loads the version asked for, and has the tensors
    the maps name (ensemble_utils.cc ValidateEnsembleConfig / ValidateTensorMapping)."""
    out: list[Violation] = []
    where = f"step {s} (model '{step.model_name}')"

    def add(loc: Loc, rule: str, message: str, fix: str) -> None:
        out.append(Violation(name, ("ensemble_scheduling", "step", s) + loc, rule, message, fix))

    model = configs.get(step.model_name)
    if model is None:
        if step.model_name and step.model_name not in unreadable:
            add(("model_name",), "ensemble-unknown-model", f"ensemble {name} contains models "
                f"that are not available or ambiguous: {step.model_name} ({where}; not in the "
                "repository)",
                f"add model '{step.model_name}' or fix the step's model_name")
        return out
    if model.max_batch_size != 0 and model.max_batch_size < config.max_batch_size:
        add(("model_name",), "ensemble-batch-size", f"ensemble {name} allows maximum "
            f"batch size {config.max_batch_size}, but it contains model {step.model_name} which "
            f"only allows maximum batch size to be {model.max_batch_size} ({where})",
            f"lower the ensemble's max_batch_size to {model.max_batch_size} or raise "
            f"'{step.model_name}''s")
    versions = loaded_versions.get(step.model_name)
    # model_repository_manager.cc CheckNode: a step's model_version other than -1 must be one
    # of the versions its model loaded. proto3 reads an omitted model_version as 0.
    if versions and step.model_version != -1 and step.model_version not in versions:
        add(("model_version",), "ensemble-step-version", f"ensemble '{name}' depends on "
            f"'{step.model_name}' whose required version {step.model_version} is not loaded "
            f"('{step.model_name}' loads version{'s' if len(versions) > 1 else ''} "
            f"{', '.join(map(str, versions))}"
            + ("; an omitted model_version is 0" if step.model_version == 0 else "") + ")",
            f"set model_version: -1 (the latest loaded) or one of {versions}")
    model_inputs = {io.name: io for io in model.input}
    model_outputs = {io.name: io for io in model.output}
    for key in sorted(step.input_map):
        if key not in model_inputs:
            add(("input_map", key), "ensemble-step-input", f"in ensemble '{name}', ensemble tensor "
                f"'{step.input_map[key]}' is mapping to non-existing input '{key}' in model "
                f"'{step.model_name}' (step {s}; its inputs: {_names(model_inputs)})",
                "use one of the model's input names as the key")
    for io in model.input:
        if io.name not in step.input_map and not io.optional:
            add(("input_map",), "ensemble-input-mapped-once", f"in ensemble '{name}', input '{io.name}' in "
                f"model '{step.model_name}' is not mapped to any ensemble tensors (step {s})", f"add input_map {{ key: \"{io.name}\" value: <ensemble "
                "tensor> }")
    for key in sorted(step.output_map):
        if key not in model_outputs:
            add(("output_map", key), "ensemble-step-output", f"in ensemble '{name}', ensemble tensor "
                f"'{step.output_map[key]}' is mapped from non-existing output '{key}' in model "
                f"'{step.model_name}' (step {s}; its outputs: {_names(model_outputs)})",
                "use one of the model's output names as the key")
    return out


def _check_data_flow(name: str, config: mc.ModelConfig, steps: Steps, producers: Producers,
                     consumers: Consumers) -> list[Violation]:
    """Every input read, every output written, every read tensor written, every written tensor
    read (ValidateEnsembleSchedulingConfig)."""
    out: list[Violation] = []
    ensemble_inputs = {io.name for io in config.input}
    ensemble_outputs = {io.name for io in config.output}
    for tensor in ensemble_inputs:
        if tensor not in consumers:
            out.append(Violation(name, ("input", _index(config.input, tensor)), "ensemble-unused-input",
                                 f"ensemble input '{tensor}' for ensemble '{name}' is not used (no "
                                 "step reads it)", "map it into a step's input_map, or remove the "
                                 "input"))
    for tensor in ensemble_outputs:
        if tensor not in producers:
            out.append(Violation(name, ("output", _index(config.output, tensor)),
                                 "ensemble-unproduced-output", f"ensemble output '{tensor}' for "
                                 f"ensemble '{name}' is not used (no step writes it)", "map a step "
                                 "output to it in that step's output_map, or remove the output"))
    for tensor, uses in sorted(consumers.items()):
        if tensor not in producers and tensor not in ensemble_inputs:
            s, key = uses[0]
            out.append(Violation(name, ("ensemble_scheduling", "step", s, "input_map", key),
                                 "ensemble-unconnected-tensor", f"ensemble tensor "
                                 f"'{tensor}' is not connected: step {s} (model "
                                 f"'{steps[s].model_name}') input '{key}' reads it, and it is "
                                 "neither an ensemble input nor written by any step", "map it from an ensemble input or a step output "
                                 "(check the spelling)"))
    for tensor, (s, key) in sorted(producers.items()):
        if tensor not in consumers and tensor not in ensemble_outputs:
            out.append(Violation(name, ("ensemble_scheduling", "step", s, "output_map", key),
                                 "ensemble-unused-tensor", f"ensemble tensor '{tensor}' is unused in "
                                 f"ensemble '{name}': step {s} (model '{steps[s].model_name}') "
                                 f"output '{key}' writes it, and neither a step nor an ensemble "
                                 "output reads it", "remove the "
                                 "mapping, or use the tensor"))
    return out


def _names(tensors: dict[str, mc.ModelInput] | dict[str, mc.ModelOutput]) -> str:
    return ", ".join(f"'{n}'" for n in tensors) or "none"


def _index(ios: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput], name: str) -> int:
    return next(i for i, io in enumerate(ios) if io.name == name)


def _step_dependencies(steps: Steps, producers: Producers) -> list[set[int]]:
    """For each step, the steps whose outputs it reads."""
    return [{producers[t][0] for t in step.input_map.values() if t in producers} for step in steps]


def _step_order(steps: Steps, producers: Producers, consumers: Consumers) -> list[int] | None:
    """Steps in an order where each comes after the steps it reads from; None if there is a cycle."""
    deps = _step_dependencies(steps, producers)
    order: list[int] = []
    done: set[int] = set()
    while len(order) < len(steps):
        ready = [s for s in range(len(steps)) if s not in done and deps[s] <= done]
        if not ready:
            return None
        order.extend(ready)
        done.update(ready)
    return order


def _find_cycle(steps: Steps, producers: Producers) -> list[int]:
    deps = _step_dependencies(steps, producers)
    state: dict[int, int] = {}  # 1 on the stack, 2 finished
    stack: list[int] = []

    def visit(s: int) -> list[int] | None:
        state[s] = 1
        stack.append(s)
        for d in sorted(deps[s]):
            if state.get(d) == 1:
                # stack[i] reads from stack[i + 1]: reversed, the cycle runs in data-flow order
                cycle = list(reversed(stack[stack.index(d):]))
                first = cycle.index(min(cycle))
                cycle = cycle[first:] + cycle[:first]
                return cycle + [cycle[0]]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[s] = 2
        return None

    for s in range(len(steps)):
        if s not in state:
            found = visit(s)
            if found:
                return found
    return []  # not reached: _step_order found a cycle


def _check_edges(name: str, config: mc.ModelConfig, steps: Steps, configs: dict[str, mc.ModelConfig],
                 producers: Producers, consumers: Consumers, batching: bool) -> list[Violation]:
    """Data type and shape agree along every edge (ensemble_utils.cc ValidateTensorConsistency)."""
    out: list[Violation] = []

    def ensemble_end(io: mc.ModelInput | mc.ModelOutput, kind: str) -> _End:
        dims = tuple(io.reshape.shape) if io.HasField("reshape") else tuple(io.dims)
        return _End(f"ensemble {kind} '{io.name}'", batching, io.data_type, dims)

    def step_end(s: int, key: str, kind: str) -> _End | None:
        model = configs.get(steps[s].model_name)
        if model is None:
            return None
        io = next((io for io in getattr(model, kind) if io.name == key), None)
        if io is None:
            return None
        return _End(f"step {s} (model '{steps[s].model_name}') {kind} '{key}'",
                    model.max_batch_size > 0, io.data_type, tuple(io.dims))

    sources: dict[str, _End] = {io.name: ensemble_end(io, "input") for io in config.input}
    for tensor, (s, key) in producers.items():
        end = step_end(s, key, "output")
        if end is not None and tensor not in sources:
            sources[tensor] = end

    edges: list[tuple[Loc, str, _End]] = []
    for tensor, uses in sorted(consumers.items()):
        for s, key in uses:
            end = step_end(s, key, "input")
            if end is not None:
                edges.append((("ensemble_scheduling", "step", s, "input_map", key), tensor, end))
    for i, io in enumerate(config.output):
        edges.append((("output", i), io.name, ensemble_end(io, "output")))

    for loc, tensor, sink in edges:
        source = sources.get(tensor)
        if source is None:
            continue
        if source.dtype != sink.dtype:
            out.append(Violation(name, loc, "ensemble-edge-dtype", f"ensemble tensor '{tensor}': "
                                 f"inconsistent data type: {source.who} is "
                                 f"{data_type_name(source.dtype)} but {sink.who} is "
                                 f"{data_type_name(sink.dtype)}", "make both sides the same data_type "
                                 "(convert in a step if needed)"))
        elif not (_same_shape(source.dims, sink.dims) or _same_shape(source.full_dims, sink.full_dims)):
            out.append(Violation(name, loc, "ensemble-edge-shape", f"ensemble tensor '{tensor}': "
                                 f"inconsistent shape: {source.who} has shape "
                                 f"{list(source.full_dims)} but {sink.who} has shape "
                                 f"{list(sink.full_dims)} (batch dimension included)",
                                 "make the dims agree (-1 matches any size; a non-batching model's "
                                 "dims include the batch dimension)"))
    return out


def _same_shape(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or WILDCARD in (x, y) for x, y in zip(a, b))


def _check_decoupled(name: str, config: mc.ModelConfig, steps: Steps,
                     configs: dict[str, mc.ModelConfig], order: list[int]) -> list[Violation]:
    """No step, and not the ensemble's outputs, may join tensors that come from different
    decoupled models: each decoupled step starts a new label, others pass on their inputs' label
    (ensemble_utils.cc ValidateEnsembleConfig: "receives inputs originated from different
    decoupled models"; the ensemble's outputs meet in a sink node checked the same way)."""
    label: dict[str, int] = {io.name: 0 for io in config.input}
    origin: dict[str, str] = {}  # tensor -> the decoupled step it comes from
    next_label = 0
    out: list[Violation] = []
    for s in order:
        step = steps[s]
        labels = {label[t] for t in step.input_map.values() if t in label}
        if len(labels) > 1:
            out.append(Violation(name, ("ensemble_scheduling", "step", s), "ensemble-decoupled",
                                 f"in ensemble {name}, step {s} (model '{step.model_name}') receives "
                                 "inputs originated from different decoupled models",
                                 "feed the step from one decoupled model's outputs only"))
        current = min(labels) if labels else 0
        source = next((origin[t] for t in step.input_map.values() if t in origin), "")
        model = configs.get(step.model_name)
        if model is not None and model.model_transaction_policy.decoupled:
            next_label += 1
            current = next_label
            source = f"step {s} (model '{step.model_name}', decoupled)"
        for tensor in step.output_map.values():
            label.setdefault(tensor, current)
            if source:
                origin.setdefault(tensor, source)
    outputs = [io.name for io in config.output if io.name in label]
    if len({label[t] for t in outputs}) > 1:
        described = ", ".join(f"'{t}' from {origin.get(t, 'non-decoupled steps')}" for t in outputs)
        out.append(Violation(name, ("output",), "ensemble-decoupled", f"in ensemble {name}, step "
                             f"of model '{name}' (the ensemble's outputs: {described}) receives "
                             "inputs originated from different decoupled models", "produce all ensemble outputs "
                             "from one decoupled model's responses, or make the step not "
                             "decoupled"))
    return out


def ensemble_model_cycles(configs: dict[str, mc.ModelConfig]) -> list[Violation]:
    """Ensembles that contain themselves through their steps (Triton: circular dependency)."""
    children = {name: sorted({s.model_name for s in c.ensemble_scheduling.step})
                for name, c in configs.items() if c.HasField("ensemble_scheduling")}
    out: list[Violation] = []
    reported: set[frozenset[str]] = set()
    for start in sorted(children):
        path = _path_back(start, children)
        if path and frozenset(path) not in reported:
            reported.add(frozenset(path))
            out.append(Violation(start, ("ensemble_scheduling", "step"), "ensemble-cycle",
                                 "ensemble contains itself: " + " -> ".join(f"'{m}'" for m in path),
                                 "remove the step that leads back to an enclosing ensemble"))
    return out


def _path_back(start: str, children: dict[str, list[str]]) -> list[str] | None:
    """A chain of ensemble steps from start back to start, or None."""
    seen: set[str] = set()
    stack = [(start, [start])]
    while stack:
        node, path = stack.pop()
        for child in children.get(node, ()):
            if child == start:
                return path + [start]
            if child not in seen and child in children:
                seen.add(child)
                stack.append((child, path + [child]))
    return None
