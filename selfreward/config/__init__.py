"""Run parameters: YAML recipes loaded into a typed schema, validated once.

`schema` holds the dataclasses (one per params section) and their rules; `loading` reads YAML, applies
`--set` overrides and checks each value against its field's type. Unknown keys, wrong types and
impossible values raise ConfigError with a one-line message naming the file and the dotted key.
This package imports nothing else of selfreward.
"""
from selfreward.config.loading import apply_overrides, from_dict, load_config
from selfreward.config.schema import (AIFTConfig, CandidatesConfig, Config, ConfigError, DataConfig, DPOConfig, build,
                                      EFTConfig, EvaluationConfig, GenerationConfig, JudgeConfig, LaunchConfig,
                                      ModelConfig, SelfInstructConfig, TrainConfig, load_accelerate_config,
                                      run_models)

__all__ = ["AIFTConfig", "CandidatesConfig", "Config", "ConfigError", "DataConfig", "DPOConfig", "EFTConfig",
           "EvaluationConfig", "GenerationConfig", "JudgeConfig", "LaunchConfig", "ModelConfig",
           "SelfInstructConfig", "TrainConfig", "apply_overrides", "build", "from_dict", "load_accelerate_config",
           "load_config", "run_models"]
