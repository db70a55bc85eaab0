"""Run parameters: YAML recipes loaded into a typed schema, validated once.

`loading` reads YAML (a profile may name the one it builds on with `extends:`), applies `--set` overrides
and builds the schema; `schema` holds the dataclasses (one per params section), checks each value against its
field's type and the rules of each section and between sections. Unknown keys, wrong types and impossible
values raise ConfigError with a one-line message naming the file and the dotted key. The small-model fixes'
options of `aift` are declared by the fixes themselves and checked by `method.fixes.check`.
This package imports nothing else of selfreward.
"""
from selfreward.config.loading import apply_overrides, from_dict, load_config
from selfreward.config.schema import (AIFTConfig, CandidatesConfig, Config, ConfigError, DataConfig, DPOConfig, build,
                                      coerce, EFTConfig, EvaluationConfig, GenerationConfig, JudgeConfig, LaunchConfig,
                                      ModelConfig, SelfInstructConfig, TrainConfig, load_accelerate_config,
                                      model_reference_ok, model_sequence, plain_section)

__all__ = ["AIFTConfig", "CandidatesConfig", "Config", "ConfigError", "DataConfig", "DPOConfig", "EFTConfig",
           "EvaluationConfig", "GenerationConfig", "JudgeConfig", "LaunchConfig", "ModelConfig",
           "SelfInstructConfig", "TrainConfig", "apply_overrides", "build", "coerce", "from_dict",
           "load_accelerate_config", "load_config", "model_reference_ok", "model_sequence", "plain_section"]
