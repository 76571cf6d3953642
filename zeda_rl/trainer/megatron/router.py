"""The ZEDA router for megatron-core: scores N real + N_Z zero experts, hands the token
dispatcher only the real picks, and records what the Group Auxiliary Loss needs.

The routing itself is the transformers model's (``route_by_config``: softmax for Qwen3,
sigmoid + frozen correction bias + routed scaling for GLM, zero slots competing for the K
slots, replay for R3), so the two trainers cannot disagree on semantics. Megatron lays
tokens out sequence-major ([s, b] flattened); the router works batch-major like the
transformers model (so recorded statistics, token masks and replayed ids line up with
``trainer/batch.py``) and turns the result back for the dispatcher.

What reaches the dispatcher: ``probs [s*b, N]`` (gate weight of each real pick, 0 elsewhere)
and ``routing_map [s*b, N]`` with between 0 and K ``True`` per row. Zero picks are neither
dispatched, padded nor computed. Megatron's allgather dispatcher and SequentialMLP take a
variable number of picks per token; its alltoall dispatcher sizes its output for exactly
``tokens x K`` picks and is not used with this router (stack.md).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.moe.router import TopKRouter

from zeda_rl.models.moe_block import route_by_config
from zeda_rl.models.zero_experts import RoutingState, layer_routing_stats, router_dtype


class ZedaMegatronRouter(TopKRouter):
    """Set ``zeda_config`` (the transformers ZEDA config) and ``routing_state`` (shared by
    every router of the model) on a subclass: :func:`router_class` does."""

    zeda_config = None
    routing_state: RoutingState | None = None

    def __init__(self, config, pg_collection=None) -> None:
        super().__init__(config=config, pg_collection=pg_collection)
        zeda = self.zeda_config
        if zeda is None or self.routing_state is None:
            raise TypeError("use router_class(zeda_config, routing_state) to build this router")
        self.num_real = zeda.num_routed_experts
        self.num_router = zeda.num_router_experts
        if config.num_moe_experts != self.num_real:
            raise ValueError(
                f"megatron num_moe_experts={config.num_moe_experts} but the ZEDA config has "
                f"{self.num_real} real experts"
            )
        # N + N_Z rows: the zero experts have router rows but no weights anywhere else.
        self.weight = torch.nn.Parameter(
            torch.empty(self.num_router, config.hidden_size, dtype=config.params_dtype)
        )
        if config.perform_initialization:
            config.init_method(self.weight)
        self.weight.sequence_parallel = config.sequence_parallel
        self.sigmoid = getattr(zeda, "n_routed_experts", None) is not None
        if self.sigmoid:
            # GLM's correction bias over N + N_Z experts, frozen during ZEDA adaptation.
            self.register_buffer(
                "e_score_correction_bias", torch.zeros(self.num_router, dtype=torch.float32)
            )

    @property
    def layer_idx(self) -> int:
        """The transformers layer index (megatron numbers layers from 1)."""
        return self.layer_number - 1

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # As the transformers routers: GLM in fp32 at least, Qwen3 in the activation dtype.
        dtype = router_dtype(hidden) if self.sigmoid else hidden.dtype
        return torch.nn.functional.linear(hidden.to(dtype), self.weight.to(dtype))

    def forward(self, input: torch.Tensor, padding_mask: torch.Tensor | None = None):
        seq, batch, hidden_size = input.shape
        hidden = input.transpose(0, 1).reshape(-1, hidden_size)  # batch-major, as transformers
        state = self.routing_state
        decision = route_by_config(
            self.zeda_config,
            self.logits(hidden),
            self.e_score_correction_bias if self.sigmoid else None,
            state.take_replay(self.layer_idx),
        )
        state.records[self.layer_idx] = layer_routing_stats(
            decision,
            num_real=self.num_real,
            layer_idx=self.layer_idx,
            token_mask=state.tokens_mask_for(hidden.shape[0]),
        )
        tokens = hidden.shape[0]
        weights = decision.topk_weights.to(torch.float32)
        probs = torch.zeros(tokens, self.num_router, dtype=weights.dtype, device=weights.device)
        probs = probs.scatter(1, decision.topk_ids, weights)[:, : self.num_real]
        picked = torch.zeros(tokens, self.num_router, dtype=torch.bool, device=weights.device)
        picked = picked.scatter(1, decision.topk_ids, True)[:, : self.num_real]

        def sequence_major(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, seq, -1).transpose(0, 1).reshape(seq * batch, -1)

        return sequence_major(probs), sequence_major(picked)


def router_class(zeda_config, routing_state: RoutingState) -> type[ZedaMegatronRouter]:
    """A router class bound to one model's ZEDA config and routing state (megatron builds
    routers from a class and its own config only)."""
    return type(
        "BoundZedaMegatronRouter",
        (ZedaMegatronRouter,),
        {"zeda_config": zeda_config, "routing_state": routing_state},
    )
