"""A torch model of the transformer-engine calls the ``te`` experts backend makes, for CPU
tests of its control flow (TE itself is CUDA-only and not installable here; tests/test_gpu.py
runs the backend on the real one).

It follows TE 2.x's documented and observed behaviour, including the parts the backend
must work around:
- ``moe_permute(map_type="index")`` sorts the flattened ids as signed integers (stable), so
  ``-1`` picks come first, and ``num_out_tokens`` keeps only the head of that order;
  ``row_id_map`` is k-major (``[k * T + t]``), ``-1`` for a dropped pick;
- ``moe_unpermute`` merges ``sum_k probs[t, k] * rows[row_id_map[k * T + t]]``, skipping -1;
  ``num_out_tokens <= 0`` means "keep everything";
- ``GroupedLinear`` reads ``weight{i}`` on every forward, needs ``len(m_splits) ==
  num_gemms``, and looks up its first parameter (as TE's FP8 weight caching does).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


class Calls:
    """What the fake saw: rows entering each grouped GEMM, the permute's arguments."""

    def __init__(self) -> None:
        self.gemm_rows: list[int] = []
        self.permute_ids: list[torch.Tensor] = []


def build(calls: Calls) -> types.ModuleType:
    def moe_permute(inp, routing_map, num_out_tokens=-1, max_token_num=-1, map_type="mask"):
        assert map_type == "index", "the backend uses the index map"
        assert routing_map.dtype == torch.int32
        calls.permute_ids.append(routing_map.clone())
        tokens, top_k = routing_map.shape
        flat = routing_map.reshape(-1).long()
        order = torch.argsort(flat, stable=True)  # signed: -1 first, as TE's radix sort
        kept = order if num_out_tokens <= 0 else order[:num_out_tokens]
        row_id_map = torch.full((tokens * top_k,), -1, dtype=torch.int32)
        positions = torch.arange(kept.numel(), dtype=torch.int32)
        slot_t, slot_k = kept // top_k, kept % top_k
        row_id_map[slot_k * tokens + slot_t] = positions
        return inp.index_select(0, slot_t), row_id_map

    def moe_unpermute(inp, row_id_map, merging_probs=None, restore_shape=None, map_type="mask"):
        assert map_type == "index" and merging_probs is not None
        tokens, top_k = merging_probs.shape
        rows = row_id_map.view(top_k, tokens).t().long()  # [T, K]
        kept = rows >= 0
        gathered = inp.index_select(0, rows.clamp(min=0).reshape(-1)).view(tokens, top_k, -1)
        weights = (merging_probs * kept).to(torch.float32).unsqueeze(-1)
        return (gathered.float() * weights).sum(1).to(inp.dtype)

    class GroupedLinear(nn.Module):
        def __init__(
            self,
            num_gemms,
            in_features,
            out_features,
            bias=True,
            params_dtype=None,
            device="cuda",
            **_,
        ):
            super().__init__()
            self.num_gemms = num_gemms
            for i in range(num_gemms):
                weight = torch.empty(out_features, in_features, dtype=params_dtype, device=device)
                self.register_parameter(f"weight{i}", nn.Parameter(weight))

        def forward(self, inp, m_splits, is_first_microbatch=None):
            assert isinstance(m_splits, list) and len(m_splits) == self.num_gemms
            if is_first_microbatch is None:
                list(self.named_parameters())[0]  # noqa: B018 (TE does this lookup)
            calls.gemm_rows.append(sum(m_splits))
            parts = torch.split(inp, m_splits)
            outs = [F.linear(x, getattr(self, f"weight{i}")) for i, x in enumerate(parts)]
            return torch.cat(outs)

    pytorch = types.ModuleType("transformer_engine.pytorch")
    pytorch.moe_permute = moe_permute
    pytorch.moe_unpermute = moe_unpermute
    pytorch.GroupedLinear = GroupedLinear
    package = types.ModuleType("transformer_engine")
    package.pytorch = pytorch
    package.__version__ = "2.9.0+fake"
    return package
