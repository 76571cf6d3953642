"""The ZEDA MoE block inside vLLM: the same routing functions as the transformers model,
real experts only through ``zeda_kernels``, and the chosen ids handed to vLLM's
routed-experts capture (for rollout routing replay).

vLLM's own fused MoE is not used: it has no zero experts, and the ways to fake them (zero
slot -> expert 0 with weight 0, or raw ids >= N) either compute the skipped slots or read
out of bounds (docs/design.md). Experts are replicated across tensor-parallel ranks, so
each rank computes the full MoE output and no all-reduce is needed; expert-parallel serving
comes with the fused kernels (zeda_kernels/, issue #6) behind this same block.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from zeda_rl.models.moe_block import route_by_config, routed_output
from zeda_rl.models.zero_experts import router_dtype

_PER_EXPERT = re.compile(r"^experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


class ZedaRouter(nn.Module):
    """``N + N_Z`` router rows; GLM's sigmoid router also has a frozen correction bias."""

    def __init__(self, num_router_experts: int, hidden_size: int, sigmoid: bool):
        super().__init__()
        # GLM routes in fp32 (its checkpoints keep the router in fp32 too); Qwen3 in the
        # activation dtype, like the transformers model.
        dtype = torch.float32 if sigmoid else torch.get_default_dtype()
        self.weight = nn.Parameter(
            torch.empty(num_router_experts, hidden_size, dtype=dtype), requires_grad=False
        )
        if sigmoid:
            self.e_score_correction_bias = nn.Parameter(
                torch.zeros(num_router_experts, dtype=torch.float32), requires_grad=False
            )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == torch.float32 and hidden.dtype != torch.float32:
            dtype = router_dtype(hidden)
            return F.linear(hidden.to(dtype), self.weight.to(dtype))
        return F.linear(hidden, self.weight)


class ZedaVllmMoe(nn.Module):
    """One ZEDA MoE layer for vLLM (both families).

    Parameters: ``gate.weight`` ``[N + N_Z, H]`` (+ ``gate.e_score_correction_bias``),
    ``experts.gate_up_proj`` ``[N, 2I, H]``, ``experts.down_proj`` ``[N, H, I]``, and for GLM
    ``shared_experts`` (vLLM's own MLP, loaded by the model's loader).

    ``layer_id`` / ``capture_fn`` make it a vLLM ``RoutedExpertsCaptureSource``: when the
    engine runs with ``enable_return_routed_experts``, vLLM binds ``capture_fn`` and every
    request's output carries the ``[tokens, layers, K]`` expert ids, zero experts included.
    """

    def __init__(
        self,
        config,
        *,
        layer_idx: int,
        sigmoid: bool,
        shared_experts: nn.Module | None = None,
    ):
        super().__init__()
        self.layer_id = layer_idx
        self.capture_fn: Callable[[torch.Tensor], None] | None = None
        self.config = config
        self.sigmoid = sigmoid
        self.num_real = config.num_routed_experts
        self.num_zero = config.num_zero_experts
        self.top_k = config.num_experts_per_tok
        self.intermediate_size = config.moe_intermediate_size
        if config.hidden_act != "silu":
            raise ValueError(f"ZEDA vLLM MoE supports hidden_act='silu', got {config.hidden_act!r}")
        self.gate = ZedaRouter(self.num_real + self.num_zero, config.hidden_size, sigmoid)
        self.experts = nn.Module()
        self.experts.gate_up_proj = nn.Parameter(
            torch.empty(self.num_real, 2 * self.intermediate_size, config.hidden_size),
            requires_grad=False,
        )
        self.experts.down_proj = nn.Parameter(
            torch.empty(self.num_real, config.hidden_size, self.intermediate_size),
            requires_grad=False,
        )
        self.shared_experts = shared_experts
        for param in (*self.gate.parameters(), *self.experts.parameters()):
            param.weight_loader = _slice_loader
        # (parameter, expert, part) slices written so far: a parameter counts as loaded
        # once every slice has been, so a checkpoint missing one expert is an error.
        self._written: set[tuple[str, int, str]] = set()

    def route(self, hidden: torch.Tensor):
        bias = self.gate.e_score_correction_bias if self.sigmoid else None
        return route_by_config(self.config, self.gate(hidden), bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        hidden = hidden_states.reshape(-1, shape[-1])
        decision = self.route(hidden)
        if self.capture_fn is not None:
            self.capture_fn(decision.topk_ids)
        out = routed_output(
            hidden,
            decision,
            self.experts,
            num_real=self.num_real,
            activation=F.silu,
            zero_expert_type=self.config.zero_expert_type,
            # vLLM compiles the model unless enforce_eager: keep the grouping out of the graph.
            opaque=True,
        )
        if self.shared_experts is not None:
            out = out + self.shared_experts(hidden)
        return out.reshape(shape)

    # -- weights ---------------------------------------------------------------------------

    def load_weight(self, name: str, tensor: torch.Tensor) -> str:
        """Copy one checkpoint tensor (name relative to this block) into place.

        Accepts per-expert names (``experts.3.up_proj.weight``: how checkpoints are saved)
        and the fused in-memory names of the transformers model (``experts.gate_up_proj``:
        what the trainer sends on weight sync). Every copy goes through the parameter's
        ``weight_loader``, so vLLM's in-place reload can track and defer it like any other
        layer's. Returns the parameter name written.
        """
        size = self.intermediate_size
        if name in ("gate.weight", "gate.e_score_correction_bias"):
            param = self.get_parameter(name)
            param.weight_loader(param, tensor, name=name)
            self._written.add((name, -1, "all"))
            return name
        if name in ("experts.gate_up_proj", "experts.down_proj"):
            param = self.get_parameter(name)
            param.weight_loader(param, tensor, name=name)
            self._written.update((name, e, p) for e in range(self.num_real) for p in _parts(name))
            return name
        match = _PER_EXPERT.match(name)
        if match is None:
            raise KeyError(f"unexpected ZEDA MoE weight {name!r}")
        expert, part = int(match.group(1)), match.group(2)
        if expert >= self.num_real:
            raise KeyError(f"{name!r}: expert {expert} >= {self.num_real} real experts")
        if part == "down_proj":
            param_name, rows = "experts.down_proj", None
        else:
            param_name = "experts.gate_up_proj"
            rows = (0, size) if part == "gate_proj" else (size, 2 * size)
        param = self.get_parameter(param_name)
        param.weight_loader(param, tensor, name=name, expert=expert, rows=rows)
        self._written.add((param_name, expert, part))
        return param_name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        for name, tensor in weights:
            self.load_weight(name, tensor)
        return self.loaded_parameters()

    def loaded_parameters(self) -> set[str]:
        """Parameters (names relative to this block) whose every slice has been written."""
        done = {name for name, e, _ in self._written if e == -1}
        for name in ("experts.gate_up_proj", "experts.down_proj"):
            wanted = {(name, e, p) for e in range(self.num_real) for p in _parts(name)}
            if wanted <= self._written:
                done.add(name)
        return done


def _parts(param_name: str) -> tuple[str, ...]:
    return ("gate_proj", "up_proj") if param_name == "experts.gate_up_proj" else ("down_proj",)


def _slice_loader(
    param: torch.Tensor,
    loaded_weight: torch.Tensor,
    name: str = "",
    expert: int | None = None,
    rows: tuple[int, int] | None = None,
) -> None:
    """vLLM-style weight loader: the whole parameter, one expert, or rows of one expert."""
    target = param.data
    if expert is not None:
        target = target[expert]
    if rows is not None:
        target = target[rows[0] : rows[1]]
    if tuple(target.shape) != tuple(loaded_weight.shape):
        raise ValueError(
            f"ZEDA MoE weight {name!r} has shape {tuple(loaded_weight.shape)}, "
            f"expected {tuple(target.shape)}"
        )
    target.copy_(loaded_weight.to(target.dtype))
