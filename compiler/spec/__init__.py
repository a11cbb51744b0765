"""The spec (model.yaml): pydantic models (models.py, llm.py), the line-tracking YAML loader
(yaml_loader.py), where each field sits in the file (source.py), and `load_spec` (load.py)."""
from .llm import LlmSpec, engine_of, release_of
from .load import describe_validation_error, load_spec
from .models import (
                     DATA_TYPES,
                     RUNTIMES,
                     ContainerTarget,
                     DynamicBatching,
                     EncoderSpec,
                     EnsembleSpec,
                     EnsembleStep,
                     InstanceGroup,
                     ModelSpec,
                     PerfSettings,
                     SourceSpec,
                     Spec,
                     TensorSpec,
                     VerifySpec,
                     WarmupSpec,
)
from .source import SpecSource, config_loc_to_spec

__all__ = ["DATA_TYPES", "RUNTIMES", "ContainerTarget", "DynamicBatching", "EncoderSpec", "EnsembleSpec", "EnsembleStep",
           "InstanceGroup", "LlmSpec", "ModelSpec", "PerfSettings", "SourceSpec", "Spec", "SpecSource",
           "TensorSpec", "VerifySpec", "WarmupSpec", "config_loc_to_spec", "describe_validation_error",
           "engine_of", "load_spec", "release_of"]
