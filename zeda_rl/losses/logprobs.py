"""Token log-probabilities from logits: what every objective and the trainer's scoring use."""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):
    """log softmax(logits / T) at ``targets``: ``[B, S, V], [B, S] -> [B, S]`` in fp32."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
