"""Training samples and their collation into padded tensors.

A sample is a prompt and a response. The model is fed ``prompt + response[:-1]`` (the last
response token is only a target, and a rollout engine never fed it either), so position
``t`` predicts token ``t + 1`` and replayed routes, recorded for exactly the fed tokens,
line up row for row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    # Stage 2: the rollout engine's log-probabilities of the sampled response tokens, the
    # teacher's for the same tokens, and the expert ids the rollout used ([fed, layers, K]).
    rollout_logprobs: list[float] | None = None
    teacher_logprobs: list[float] | None = None
    routes: np.ndarray | None = None
    # ``stage2.loss=topk_kl``: the teacher's top-k ids and log-probabilities at each response
    # token's position, ``[len(response), k]``, or at every fed position, ``[fed_length, k]``.
    teacher_topk_ids: np.ndarray | None = None
    teacher_topk_logprobs: np.ndarray | None = None

    @property
    def fed_length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids) - 1


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, S] fed tokens, right-padded
    attention_mask: torch.Tensor  # [B, S]
    targets: torch.Tensor  # [B, S] next tokens
    loss_mask: torch.Tensor  # [B, S] True where the target is a response token
    rollout_logprobs: torch.Tensor | None = None  # [B, S], aligned with targets
    teacher_logprobs: torch.Tensor | None = None
    replay: dict[int, torch.Tensor] | None = None  # MoE layer -> [B * S, K]
    teacher_topk_ids: torch.Tensor | None = None  # [B, S, k], aligned with targets
    teacher_topk_logprobs: torch.Tensor | None = None
    teacher_topk_mask: torch.Tensor | None = None  # [B, S] where the teacher's top-k is

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def to(self, device: torch.device) -> Batch:
        def move(t):
            return None if t is None else t.to(device)

        return Batch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.targets),
            move(self.loss_mask),
            move(self.rollout_logprobs),
            move(self.teacher_logprobs),
            None if self.replay is None else {k: v.to(device) for k, v in self.replay.items()},
            move(self.teacher_topk_ids),
            move(self.teacher_topk_logprobs),
            move(self.teacher_topk_mask),
        )


def collate(samples: list[Sample], *, pad_id: int, moe_layers: list[int] | None = None) -> Batch:
    """Right-pad ``samples`` into one batch; ``moe_layers`` orders the routes' columns."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    for i, s in enumerate(samples):
        if not s.prompt_ids or not s.response_ids:
            raise ValueError(f"sample {i}: empty prompt or response")
    length = max(s.fed_length for s in samples)
    b = len(samples)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    targets = torch.full((b, length), pad_id, dtype=torch.long)
    attention = torch.zeros(b, length, dtype=torch.long)
    loss_mask = torch.zeros(b, length, dtype=torch.bool)
    with_rollout = all(s.rollout_logprobs is not None for s in samples)
    with_teacher = all(s.teacher_logprobs is not None for s in samples)
    rollout = torch.zeros(b, length) if with_rollout else None
    teacher = torch.zeros(b, length) if with_teacher else None
    for i, s in enumerate(samples):
        seq = s.prompt_ids + s.response_ids
        fed, p, r = s.fed_length, len(s.prompt_ids), len(s.response_ids)
        input_ids[i, :fed] = torch.tensor(seq[:-1])
        targets[i, :fed] = torch.tensor(seq[1:])
        attention[i, :fed] = 1
        loss_mask[i, p - 1 : p - 1 + r] = True
        if rollout is not None:
            rollout[i, p - 1 : p - 1 + r] = torch.tensor(s.rollout_logprobs)
        if teacher is not None:
            teacher[i, p - 1 : p - 1 + r] = torch.tensor(s.teacher_logprobs)
    topk_ids = topk_logprobs = topk_mask = None
    if all(s.teacher_topk_ids is not None for s in samples):
        k = samples[0].teacher_topk_ids.shape[-1]
        # Padding rows point at token 0 with log-probability 0; they are masked out.
        topk_ids = torch.zeros(b, length, k, dtype=torch.long)
        topk_logprobs = torch.zeros(b, length, k)
        topk_mask = torch.zeros(b, length, dtype=torch.bool)
        for i, s in enumerate(samples):
            p, r = len(s.prompt_ids), len(s.response_ids)
            rows = s.teacher_topk_ids.shape[0]
            # Response positions only, or every fed position.
            start = {r: p - 1, s.fed_length: 0}.get(rows)
            if (
                start is None
                or s.teacher_topk_ids.shape != (rows, k)
                or (s.teacher_topk_logprobs.shape != (rows, k))
            ):
                raise ValueError(
                    f"sample {i}: teacher top-k of shape {s.teacher_topk_ids.shape}, "
                    f"expected ({r}, {k}) or ({s.fed_length}, {k})"
                )
            span = slice(start, start + rows)
            topk_ids[i, span] = torch.from_numpy(s.teacher_topk_ids.astype(np.int64))
            topk_logprobs[i, span] = torch.from_numpy(s.teacher_topk_logprobs.astype(np.float32))
            topk_mask[i, span] = True
    replay = None
    if moe_layers is not None and all(s.routes is not None for s in samples):
        top_k = samples[0].routes.shape[-1]
        # Padding rows replay slots 0..K-1 (valid, distinct ids); they are masked out.
        ids = torch.arange(top_k).expand(b, length, len(moe_layers), top_k).clone()
        for i, s in enumerate(samples):
            if s.routes.shape != (s.fed_length, len(moe_layers), top_k):
                raise ValueError(
                    f"sample {i}: routes of shape {s.routes.shape}, expected "
                    f"({s.fed_length}, {len(moe_layers)}, {top_k})"
                )
            ids[i, : s.fed_length] = torch.from_numpy(s.routes.astype(np.int64))
        replay = {
            layer: ids[:, :, j].reshape(b * length, top_k) for j, layer in enumerate(moe_layers)
        }
    return Batch(
        input_ids,
        attention,
        targets,
        loss_mask,
        rollout,
        teacher,
        replay,
        topk_ids,
        topk_logprobs,
        topk_mask,
    )


def pad_batch(
    batch: Batch | None,
    *,
    rows: int,
    length: int,
    pad_id: int,
    moe_layers: list[int] | None,
    top_k: int,
) -> Batch:
    """``batch`` padded to ``rows x length`` with masked-out padding (``None``: an empty
    batch of that shape), so ranks that must run in step see equal shapes."""
    if batch is None:
        batch = Batch(
            torch.full((0, 0), pad_id, dtype=torch.long),
            torch.zeros(0, 0, dtype=torch.long),
            torch.full((0, 0), pad_id, dtype=torch.long),
            torch.zeros(0, 0, dtype=torch.bool),
        )
    b, s = batch.input_ids.shape
    if b > rows or s > length:
        raise ValueError(f"batch of {b}x{s} does not fit {rows}x{length}")

    def grow(t: torch.Tensor | None, fill) -> torch.Tensor | None:
        if t is None:
            return None
        out = torch.full((rows, length), fill, dtype=t.dtype)
        out[:b, :s] = t
        return out

    def grow_topk(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        out = torch.zeros(rows, length, t.shape[-1], dtype=t.dtype)
        out[:b, :s] = t
        return out

    replay = None
    if moe_layers is not None:
        replay = {}
        for layer in moe_layers:
            # Padding replays slots 0..K-1 (valid, distinct ids), as collate does.
            ids = torch.arange(top_k).expand(rows, length, top_k).clone()
            if batch.replay is not None:
                ids[:b, :s] = batch.replay[layer].view(b, s, top_k)
            replay[layer] = ids.reshape(rows * length, top_k)
    empty = b == 0
    return Batch(
        grow(batch.input_ids, pad_id),
        grow(batch.attention_mask, 0),
        grow(batch.targets, pad_id),
        grow(batch.loss_mask, False),
        grow(batch.rollout_logprobs, 0.0) if not empty else torch.zeros(rows, length),
        grow(batch.teacher_logprobs, 0.0) if not empty else torch.zeros(rows, length),
        replay,
        grow_topk(batch.teacher_topk_ids),
        grow_topk(batch.teacher_topk_logprobs),
        grow(batch.teacher_topk_mask, False),
    )
