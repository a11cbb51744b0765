"""Text-level checks of a config.pbtxt: parse errors as one line, and map keys written twice
(which the parsed message no longer shows)."""
from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .violation import WARNING, Violation


def parse_message(exc: text_format.ParseError) -> str:
    text = str(exc)
    # "3:17 : Message type ..." -> "line 3, column 17: Message type ..."
    match = re.match(r"^(\d+):(\d+) : (.*)$", text, re.S)
    if match:
        return f"line {match[1]}, column {match[2]}: {match[3]}"
    return text


@lru_cache(maxsize=1)
def _raw_config_class() -> type:
    """ModelConfig with its maps declared as plain repeated entries, so a parse keeps every
    `input_map { key: ... }` written (the real map keeps only the last of duplicated keys)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto()
    mc.DESCRIPTOR.CopyToProto(proto)

    def unmap(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            message.options.map_entry = False
            unmap(message.nested_type)

    unmap(proto.message_type)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    raw: type = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))
    return raw


def duplicate_map_keys(name: str, text: str) -> list[Violation]:
    """Step input/output maps whose key is written twice: protobuf keeps only the last one, and
    Triton 2.51 loads the ensemble (seen), so this is a warning."""
    raw = _raw_config_class()()
    text_format.Parse(text, raw)  # the real parse of the same text already succeeded
    out: list[Violation] = []
    for s, step in enumerate(raw.ensemble_scheduling.step):
        for field, rule, what in (("input_map", "ensemble-input-mapped-once", "input"),
                                  ("output_map", "ensemble-output-mapped-once", "output")):
            values: dict[str, list[str]] = {}
            for entry in getattr(step, field):
                values.setdefault(entry.key, []).append(entry.value)
            for key, mapped in values.items():
                if len(mapped) > 1:
                    out.append(Violation(
                        name, ("ensemble_scheduling", "step", s, field, key), rule,
                        f"step {s} (model '{step.model_name}') maps {what} '{key}' {len(mapped)} "
                        f"times (to {', '.join(repr(v) for v in mapped)}); only the last one takes "
                        "effect (Triton loads it)", f"keep one {field} entry for '{key}'", WARNING))
    return out
