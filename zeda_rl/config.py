"""Typed run configuration; the Hydra YAML under conf/ mirrors these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from zeda_rl.losses.group_aux_loss import GroupAuxLossConfig

MODEL_FAMILIES = ("qwen3_moe", "glm4_moe_lite")


@dataclass
class ModelConfig:
    family: str = "qwen3_moe"  # qwen3_moe | glm4_moe_lite
    # Mandatory ("???"): every experiment names its teacher.
    #   "teacher": the project's trained small teacher (python -m zeda_rl.teacher), cached;
    #   "random":  a random tiny model (plumbing checks only);
    #   otherwise a Hugging Face folder of the teacher.
    source: str = "???"
    teacher_preset: str = "cpu"  # with source="teacher"
    num_zero_experts: Optional[int] = None  # default N/2  # noqa: UP045 (OmegaConf needs Optional)
    zero_expert_type: str = "zero"
    seed: int = 0


@dataclass
class EvalConfig:
    suite: str = "tiny"  # tiny | full
    enabled: bool = True
    backend: str = "vllm"  # vllm (the ZEDA plugin serves students) | hf (plain transformers)


@dataclass
class RunConfig:
    name: str = "zeda"
    model: ModelConfig = field(default_factory=ModelConfig)
    group_aux_loss: GroupAuxLossConfig = field(default_factory=GroupAuxLossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dry_run: bool = False


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)
