"""Typed run configuration; the Hydra YAML under conf/ mirrors these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from zeda_rl.losses.group_aux_loss import GroupAuxLossConfig

MODEL_FAMILIES = ("qwen3_moe", "glm4_moe_lite")


@dataclass
class ModelConfig:
    family: str = "qwen3_moe"  # qwen3_moe | glm4_moe_lite
    # "tiny": build the built-in small teacher; otherwise a Hugging Face folder of the teacher.
    # Mandatory ("???"): every experiment names its teacher.
    source: str = "???"
    num_zero_experts: Optional[int] = None  # default N/2  # noqa: UP045 (OmegaConf needs Optional)
    zero_expert_type: str = "zero"
    seed: int = 0


@dataclass
class RunConfig:
    name: str = "zeda"
    model: ModelConfig = field(default_factory=ModelConfig)
    group_aux_loss: GroupAuxLossConfig = field(default_factory=GroupAuxLossConfig)
    dry_run: bool = False


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)
