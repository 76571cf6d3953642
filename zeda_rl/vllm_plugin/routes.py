"""Per-request expert ids recorded inside vLLM, for rollout routing replay (R3).

vLLM's own routed-experts output needs its GPU model runner (V2, Triton); this recorder does
the same on any platform. Each forward of the engine is one scheduler step whose rows are
the scheduled tokens of its requests, in batch order. The model hands the recorder the
step's input ids and positions, every ZEDA MoE block its chosen ids (zero experts included),
and the worker extension closes the step with the batch's request ids and token counts.
Rows are stored by position, so a request recomputed after preemption overwrites rather
than duplicates; a position never computed (a prefix-cache hit) is an error when taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class RecordedRoutes:
    """The rows a request's forwards computed: ``tokens[t]`` went in at position ``t`` and
    was routed to ``routes[t, layer, k]`` (columns follow ``moe_layers``)."""

    tokens: np.ndarray  # [T] int64
    routes: np.ndarray  # [T, num_moe_layers, K] int16


@dataclass
class _Track:
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    routes: np.ndarray | None = None
    filled: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def write(self, positions: np.ndarray, tokens: np.ndarray, routes: np.ndarray) -> None:
        need = int(positions.max()) + 1
        if self.routes is None:
            self.routes = np.zeros((0, *routes.shape[1:]), dtype=np.int16)
        if need > len(self.tokens):
            grow = max(need, 2 * len(self.tokens))
            self.tokens = np.resize(self.tokens, grow)
            self.filled = np.concatenate([self.filled, np.zeros(grow - len(self.filled), bool)])
            extra = np.zeros((grow - len(self.routes), *routes.shape[1:]), dtype=np.int16)
            self.routes = np.concatenate([self.routes, extra])
        self.tokens[positions] = tokens
        self.routes[positions] = routes
        self.filled[positions] = True

    def result(self, request_id: str) -> RecordedRoutes:
        length = int(np.flatnonzero(self.filled).max()) + 1 if self.filled.any() else 0
        if not self.filled[:length].all():
            missing = np.flatnonzero(~self.filled[:length])[:5].tolist()
            raise RuntimeError(
                f"request {request_id}: no routes recorded for positions {missing}...; route "
                "capture needs every position computed (disable prefix caching)"
            )
        return RecordedRoutes(self.tokens[:length].copy(), self.routes[:length].copy())


class RouteRecorder:
    def __init__(self, moe_layers: list[int]):
        self.moe_layers = list(moe_layers)
        self._in_step = False
        self._tokens: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._layer_ids: dict[int, torch.Tensor] = {}
        self._requests: dict[str, _Track] = {}

    # -- called from the forward -----------------------------------------------------------

    def begin_step(self) -> None:
        self._in_step = True
        self._tokens = self._positions = None
        self._layer_ids.clear()

    def record_inputs(self, input_ids: torch.Tensor, positions: torch.Tensor) -> None:
        if self._in_step:
            self._tokens, self._positions = input_ids.detach().cpu(), positions.detach().cpu()

    def capture(self, layer_id: int, topk_ids: torch.Tensor) -> None:
        # Warm-up and profiling forwards run outside a scheduler step: ignored.
        if self._in_step:
            self._layer_ids[layer_id] = topk_ids.detach().to("cpu", torch.int16)

    def end_step(self, request_ids: list[str], num_tokens: list[int]) -> None:
        """Split the step's rows among its requests (batch order, ``num_tokens`` each)."""
        self._in_step = False
        if self._tokens is None:
            return
        total = sum(num_tokens)
        missing = [layer for layer in self.moe_layers if layer not in self._layer_ids]
        if missing:
            raise RuntimeError(f"route capture: MoE layers {missing} reported no routes")
        routes = torch.stack([self._layer_ids[layer][:total] for layer in self.moe_layers], 1)
        tokens, positions, routes = (
            self._tokens[:total].numpy(),
            self._positions[:total].numpy(),
            routes.numpy(),
        )
        start = 0
        for request_id, count in zip(request_ids, num_tokens, strict=True):
            rows = slice(start, start + count)
            track = self._requests.setdefault(request_id, _Track())
            track.write(positions[rows], tokens[rows], routes[rows])
            start += count

    # -- called by the driver --------------------------------------------------------------

    def take(self) -> dict[str, RecordedRoutes]:
        """Every request recorded since the last call (and forget them)."""
        requests, self._requests = self._requests, {}
        return {rid: track.result(rid) for rid, track in requests.items()}
