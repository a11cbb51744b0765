"""Rules for the batcher's extra tensors: `batch_input` / `batch_output` and sequence-batching
control tensors.

Written from triton-inference-server/core r24.10 src/model_config_utils.cc: `ValidateBatchIO`
(batch_input, batch_output), `GetBooleanSequenceControlProperties` /
`GetTypedSequenceControlProperties` and the sequence-batching part of `ValidateModelConfig`
(control tensors). Triton stops at the first problem; these rules report every one. Messages
quote Triton's wording.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tritonclient.grpc import model_config_pb2 as mc

from .violation import Loc, Violation

Control = mc.ModelSequenceBatching.Control
BOOLEAN_CONTROLS = (Control.CONTROL_SEQUENCE_START, Control.CONTROL_SEQUENCE_END,
                    Control.CONTROL_SEQUENCE_READY)
# ValidateModelConfig: the data types a CONTROL_SEQUENCE_CORRID tensor may have.
CORRID_TYPES = (mc.TYPE_UINT64, mc.TYPE_INT64, mc.TYPE_UINT32, mc.TYPE_INT32, mc.TYPE_STRING)
BATCH_INPUT_TYPES = (mc.TYPE_INT32, mc.TYPE_FP32)
FALSE_TRUE_FIELDS = ("int32_false_true", "fp32_false_true", "bool_false_true")


def check_batch_io(name: str, config: mc.ModelConfig) -> list[Violation]:
    """ValidateBatchIO: kinds take exactly one source input, which must be a model input; batch
    inputs are INT32 or FP32; batch output targets are model outputs, each named once."""
    out: list[Violation] = []
    inputs = {io.name for io in config.input}
    outputs = {io.name for io in config.output}

    def sources(field: str, i: int, kind: str, batch_io: mc.BatchInput | mc.BatchOutput) -> None:
        if len(batch_io.source_input) != 1:
            out.append(Violation(name, (field, i, "source_input"), field.replace("_", "-"),
                                 f"{field.replace('_', ' ')} kind '{kind}' expects 1 source input, "
                                 f"got {len(batch_io.source_input)}", "name exactly one model input "
                                 "in source_input"))
        for source in batch_io.source_input:
            if source not in inputs:
                out.append(Violation(name, (field, i, "source_input"), field.replace("_", "-"),
                                     f"unknown source input name '{source}' in {field} {i}",
                                     f"use one of the model's inputs ({_names(inputs)})"))

    for i, batch_input in enumerate(config.batch_input):
        sources("batch_input", i, mc.BatchInput.Kind.Name(batch_input.kind), batch_input)
        if batch_input.data_type not in BATCH_INPUT_TYPES:
            out.append(Violation(name, ("batch_input", i, "data_type"), "batch-input",
                                 f"batch input data type must be TYPE_INT32 or TYPE_FP32, got "
                                 f"{_type(batch_input.data_type)}", "set data_type: TYPE_INT32 or "
                                 "TYPE_FP32"))
    for i, batch_output in enumerate(config.batch_output):
        sources("batch_output", i, mc.BatchOutput.Kind.Name(batch_output.kind), batch_output)
        for target, count in Counter(batch_output.target_name).items():
            if target not in outputs:
                out.append(Violation(name, ("batch_output", i, "target_name"), "batch-output",
                                     f"unknown target output name '{target}' in batch_output {i}",
                                     f"use one of the model's outputs ({_names(outputs)})"))
            elif count > 1:
                out.append(Violation(name, ("batch_output", i, "target_name"), "batch-output",
                                     f"target output name '{target}' can only be specified once",
                                     "list each target output once"))
    return out


def check_sequence_controls(name: str, config: mc.ModelConfig) -> list[Violation]:
    """Control tensors: each named, each name once, each kind in at most one tensor; START, END
    and READY give exactly one of int32/fp32/bool_false_true with 2 entries; CORRID gives none
    of them and a data type Triton can carry a correlation id in."""
    out: list[Violation] = []
    controls = config.sequence_batching.control_input

    def add(loc: Loc, message: str, fix: str) -> None:
        out.append(Violation(name, ("sequence_batching", "control_input") + loc, "sequence-control",
                             message, fix))

    names = Counter(tensor.name for tensor in controls)
    kinds: dict[int, list[str]] = {}
    for t, tensor in enumerate(controls):
        if not tensor.name:
            add((t, "name"), "sequence batching control tensor must have a name",
                "give the control tensor the input name the model reads it from")
        elif names[tensor.name] > 1 and _first(controls, tensor.name) == t:
            add((t, "name"), f"sequence batching control tensor '{tensor.name}' is specified for "
                "multiple control kinds", "give each control tensor its own name, or list all its "
                "controls in one control_input entry")
        for c, control in enumerate(tensor.control):
            kinds.setdefault(control.kind, []).append(tensor.name)
            out.extend(_control_values(name, (t, "control", c), control))
    for kind, tensors in sorted(kinds.items()):
        if len(tensors) > 1:
            add((), f"sequence batching specifies multiple {Control.Kind.Name(kind)} tensors "
                f"({', '.join(repr(t) for t in tensors)})", "keep one control tensor per kind")
    return out


def _control_values(name: str, loc: Loc, control: mc.ModelSequenceBatching.Control) -> list[Violation]:
    kind = Control.Kind.Name(control.kind)
    given = [field for field in FALSE_TRUE_FIELDS if len(getattr(control, field))]

    def violation(message: str, fix: str) -> list[Violation]:
        return [Violation(name, ("sequence_batching", "control_input") + loc, "sequence-control",
                          message, fix)]

    if control.kind == Control.CONTROL_SEQUENCE_CORRID:
        if given:
            return violation(f"sequence batching must not specify either 'int32_false_true', "
                             f"'fp32_false_true' or 'bool_false_true' for {kind}",
                             f"remove {given[0]}; give data_type instead")
        if control.data_type not in CORRID_TYPES:
            return violation(f"unexpected data type {_type(control.data_type)} for control {kind}. "
                             "Allowed data types are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, "
                             "TYPE_INT32 and TYPE_STRING", "set data_type to one of them")
        return []
    if not given:
        return violation(f"sequence batching must specify either 'int32_false_true', "
                         f"'fp32_false_true' or 'bool_false_true' for {kind}",
                         "add e.g. int32_false_true: [0, 1]")
    if len(given) > 1:
        return violation(f"sequence batching specifies more than one from 'int32_false_true', "
                         f"'fp32_false_true' and 'bool_false_true' for {kind}",
                         f"keep one of {', '.join(given)}")
    values = getattr(control, given[0])
    if len(values) != 2:
        return violation(f"sequence batching control '{given[0]}' must have exactly 2 entries for "
                         f"{kind}, got {len(values)}", f"write {given[0]}: [<false>, <true>]")
    return []


def _first(controls: Sequence[mc.ModelSequenceBatching.ControlInput], tensor_name: str) -> int:
    return next(i for i, tensor in enumerate(controls) if tensor.name == tensor_name)


def _type(data_type: int) -> str:
    return str(mc.DataType.Name(data_type))


def _names(names: set[str]) -> str:
    return ", ".join(f"'{n}'" for n in sorted(names)) or "none"
