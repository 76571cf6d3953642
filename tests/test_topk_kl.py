"""The top-k reverse KL of stage2.loss=topk_kl and the batches that carry the teacher's
top-k (response positions or every fed position)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zeda_rl.losses.topk_kl import topk_reverse_kl
from zeda_rl.trainer.batch import Sample, collate


def _distributions(seed: int = 0, vocab: int = 40):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 3, vocab, generator=g)
    teacher = torch.log_softmax(2 * torch.randn(2, 3, vocab, generator=g), -1)
    student_logp = torch.log_softmax(student, -1)
    full = (student_logp.exp() * (student_logp - teacher)).sum(-1)
    return student, teacher, full


def test_topk_kl_is_the_full_kl_when_the_tail_is_one_token_and_a_lower_bound_below():
    student, teacher, full = _distributions()
    mask = torch.ones(2, 3, dtype=torch.bool)
    values, ids = teacher.topk(teacher.shape[-1] - 1, dim=-1)
    exact, stats = topk_reverse_kl(student, ids, values, mask)
    assert float(exact) == pytest.approx(float(full.mean()), rel=1e-4)
    assert stats["reverse_kl_sum"] == pytest.approx(float(full.sum()), rel=1e-4)
    previous = float(exact)
    for k in (20, 5, 1):  # coarser buckets never raise a KL
        values, ids = teacher.topk(k, dim=-1)
        bound, _ = topk_reverse_kl(student, ids, values, mask)
        assert 0.0 <= float(bound) <= previous + 1e-6
        previous = float(bound)


def test_topk_kl_is_zero_at_the_teacher_and_counts_only_masked_positions():
    _, teacher, _ = _distributions(1)
    values, ids = teacher.topk(8, dim=-1)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    loss, stats = topk_reverse_kl(teacher.clone(), ids, values, mask, normalizer=10.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert stats["tokens"] == 3.0
    student = teacher.clone().requires_grad_(True)
    shifted = student + torch.randn(student.shape, generator=torch.Generator().manual_seed(2))
    loss, _ = topk_reverse_kl(shifted, ids, values, mask)
    loss.backward()
    assert loss.item() > 0
    assert student.grad[~mask].abs().max() == 0 and student.grad[mask].abs().max() > 0


def test_collate_places_the_teacher_top_k_at_the_positions_it_covers():
    k = 3
    response_only = Sample(
        [1, 2, 3],
        [4, 5],
        teacher_topk_ids=np.array([[7, 8, 9], [10, 11, 12]], np.int32),
        teacher_topk_logprobs=np.log(np.full((2, k), 0.2, np.float32)),
    )
    every_position = Sample(
        [1, 2],
        [4, 5, 6],
        teacher_topk_ids=np.arange(4 * k, dtype=np.int32).reshape(4, k),
        teacher_topk_logprobs=np.full((4, k), -1.0, np.float32),
    )
    batch = collate([response_only, every_position], pad_id=0)
    assert batch.teacher_topk_mask.tolist() == [
        [False, False, True, True],
        [True, True, True, True],
    ]
    assert batch.teacher_topk_ids[0, 2].tolist() == [7, 8, 9]
    assert batch.teacher_topk_ids[1, 0].tolist() == [0, 1, 2]
    assert batch.loss_mask[1].tolist() == [False, True, True, True]
    wrong = Sample([1, 2], [4, 5, 6], teacher_topk_ids=np.zeros((2, k), np.int32))
    wrong.teacher_topk_logprobs = np.zeros((2, k), np.float32)
    with pytest.raises(ValueError, match=r"expected \(3, 3\) or \(4, 3\)"):
        collate([wrong], pad_id=0)
