"""The torch trainer backend: data-parallel steps on 2 gloo ranks equal one rank's step on
the whole batch; SFT lowers the response NLL; OPD replays rollout routes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import build_static_model, spawn_ranks, tiny_samples
from zeda_rl.convert import convert
from zeda_rl.losses.group_aux_loss import GroupAuxLossConfig
from zeda_rl.trainer.distributed import local_init_method
from zeda_rl.trainer.interface import OptimConfig, RankSpec
from zeda_rl.trainer.torch_backend import TorchBackend


@pytest.fixture(scope="module")
def zeda_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainer")
    build_static_model("qwen3_moe", 0).save_pretrained(root / "teacher")
    convert(root / "teacher", root / "zeda", log=lambda *_: None)
    return root / "zeda"


def _backend(zeda_dir, rank=0, world=1, init=None, replay=False) -> TorchBackend:
    return TorchBackend(
        str(zeda_dir),
        RankSpec(
            rank=rank,
            world_size=world,
            init_method=init or local_init_method(),
            optim=OptimConfig(lr=1e-3, micro_batch_size=2),
            gal=GroupAuxLossConfig(),
            temperature=1.0,
            routing_replay=replay,
        ),
    )


def _rank_main(rank, world, init, zeda_dir, objective, out_path):
    backend = _backend(zeda_dir, rank, world, init)
    samples = tiny_samples(4)
    tokens = sum(len(s.response_ids) for s in samples)
    share = len(samples) // world  # contiguous shares: the same micro-batches as one rank
    mine = samples[rank * share : (rank + 1) * share]
    metrics = backend.train_step(mine, objective=objective, lr=1e-3, global_tokens=tokens)
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in backend.model.named_parameters()}
        torch.save({"grads": grads, "metrics": metrics}, out_path)
    backend.close()


def _run_ranks(zeda_dir, world, objective, out_path):
    spawn_ranks(_rank_main, world, zeda_dir, objective, out_path, timeout=300)
    return torch.load(out_path, weights_only=False)


@pytest.mark.parametrize("objective", ["sft", "opd", "topk_kl"])
def test_two_gloo_ranks_equal_one_rank(zeda_dir, tmp_path, objective):
    one = _run_ranks(zeda_dir, 1, objective, tmp_path / "one.pt")
    two = _run_ranks(zeda_dir, 2, objective, tmp_path / "two.pt")
    for name, grad in one["grads"].items():
        assert torch.allclose(grad, two["grads"][name], atol=1e-6, rtol=1e-4), name
    assert any(g.abs().sum() > 0 for n, g in one["grads"].items() if "mlp.gate" in n)
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_sft_lowers_the_response_nll(zeda_dir):
    backend = _backend(zeda_dir)
    samples = tiny_samples(4)
    tokens = sum(len(s.response_ids) for s in samples)
    before = -sum(sum(lp) for lp in backend.logprobs(samples, 1.0)) / tokens
    for _ in range(5):
        metrics = backend.train_step(samples, objective="sft", lr=1e-2, global_tokens=tokens)
    after = -sum(sum(lp) for lp in backend.logprobs(samples, 1.0)) / tokens
    assert after < before - 0.5
    assert metrics["nll"] > 0 and 0.0 <= metrics["zero_ratio"] <= 1.0
    backend.close()


def test_opd_replays_rollout_routes(zeda_dir):
    backend = _backend(zeda_dir, replay=True)
    samples = tiny_samples(2)
    tokens = sum(len(s.response_ids) for s in samples)
    with pytest.raises(ValueError, match="routing replay"):
        backend.train_step(samples, objective="opd", lr=1e-3, global_tokens=tokens)
    # Routes of the rollout: here the model's own routing of the fed tokens, replayed.
    for s in samples:
        fed = torch.tensor([(s.prompt_ids + s.response_ids)[:-1]])
        with torch.no_grad():
            routing = backend.model(input_ids=fed).routing
        s.routes = torch.stack([r.topk_ids for r in routing], 1).numpy().astype("int16")
    # Replayed routes reproduce fresh routing exactly: the same logprobs.
    replayed = backend.logprobs(samples, 1.0)
    backend.routing_replay = False
    fresh = backend.logprobs(samples, 1.0)
    backend.routing_replay = True
    for a, b in zip(replayed, fresh, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    metrics = backend.train_step(samples, objective="opd", lr=1e-3, global_tokens=tokens)
    assert metrics["reverse_kl"] == pytest.approx(
        sum(sum(t) - sum(r) for t, r in ((s.rollout_logprobs, s.teacher_logprobs) for s in samples))
        / tokens,
        rel=1e-5,
    )
    # A replay of the wrong length is refused.
    samples[0].routes = samples[0].routes[:-1]
    with pytest.raises(ValueError, match="routes of shape"):
        backend.train_step(samples, objective="opd", lr=1e-3, global_tokens=tokens)
    backend.close()


def test_topk_kl_pulls_the_student_toward_the_teacher(zeda_dir):
    """stage2.loss=topk_kl: with the teacher's top-8 at every response position, a few steps
    lower the student's full-vocabulary reverse KL; the logged figure is a lower bound of it."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(zeda_dir.parent / "teacher").eval()
    samples = tiny_samples(4)

    def response_logp(model, s):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([s.prompt_ids + s.response_ids])).logits[0]
        p = len(s.prompt_ids)
        return torch.log_softmax(logits[p - 1 : p - 1 + len(s.response_ids)].double(), -1)

    for s in samples:
        values, ids = response_logp(teacher, s).topk(8, dim=-1)
        s.teacher_topk_ids, s.teacher_topk_logprobs = ids.int().numpy(), values.float().numpy()
    tokens = sum(len(s.response_ids) for s in samples)
    backend = _backend(zeda_dir)

    def full_reverse_kl() -> float:
        total = 0.0
        for s in samples:
            student, target = response_logp(backend.model, s), response_logp(teacher, s)
            total += float((student.exp() * (student - target)).sum())
        return total / tokens

    # The converted student starts next to the teacher: drift it away first (SFT on the
    # samples' random responses), then distill it back.
    for _ in range(3):
        backend.train_step(samples, objective="sft", lr=1e-2, global_tokens=tokens)
    backend.reset_optimizer(None, None)  # no SFT momentum carried into the distillation
    before = full_reverse_kl()
    assert before > 0.1
    first = backend.train_step(samples, objective="topk_kl", lr=3e-3, global_tokens=tokens)
    assert 0.0 <= first["reverse_kl"] <= before + 1e-5
    for _ in range(5):
        backend.train_step(samples, objective="topk_kl", lr=3e-3, global_tokens=tokens)
    assert full_reverse_kl() < 0.5 * before
    backend.close()


def test_optimizer_offload_takes_the_same_steps(zeda_dir):
    """trainer.optimizer_offload keeps Adam's master weights and moments on the CPU and
    copies the result back: the same weights as stepping in place."""
    samples = tiny_samples(4)
    tokens = sum(len(s.response_ids) for s in samples)
    states = []
    for offload in (False, True):
        backend = _backend(zeda_dir)
        backend.optim.offload = offload
        backend.optimizer = backend._make_optimizer(
            [p for p in backend.model.parameters() if p.requires_grad]
        )
        for objective in ("sft", "opd", "sft"):
            backend.train_step(samples, objective=objective, lr=1e-2, global_tokens=tokens)
        states.append({k: v.clone() for k, v in backend.model.state_dict().items()})
        if offload:
            assert all(m.device.type == "cpu" for m in backend._masters)
            assert all(m is not p for m, p in zip(backend._masters, backend._trained, strict=True))
        backend.close()
    moved = max((states[0][k] - _backend_initial(zeda_dir)[k]).abs().max() for k in states[0])
    assert moved > 1e-3  # the steps did something
    for name, tensor in states[0].items():
        assert torch.equal(states[1][name], tensor), name


def _backend_initial(zeda_dir):
    from zeda_rl.models.registry import load_zeda_model

    return load_zeda_model(str(zeda_dir), dtype=torch.float32).state_dict()


def test_gal_over_response_tokens_counts_only_them(zeda_dir):
    """group_aux_loss.tokens=response: the routing statistics (GAL, logged zero ratio) count
    only the positions that generate response tokens; "all" counts every valid token."""
    samples = tiny_samples(4)
    counted = {}
    for tokens in ("all", "response"):
        backend = _backend(zeda_dir)
        backend.gal = GroupAuxLossConfig(tokens=tokens)
        try:
            ((batch, _), *_) = backend._batches(samples, replay=False)
            with torch.no_grad():
                _, routing = backend._forward(batch)
            counted[tokens] = (routing[0].num_tokens, batch)
        finally:
            backend.close()
    all_tokens, batch = counted["all"]
    assert all_tokens == int(batch.attention_mask.sum())
    assert counted["response"][0] == int(batch.loss_mask.sum()) < all_tokens
    with pytest.raises(ValueError, match="group_aux_loss.tokens"):
        GroupAuxLossConfig(tokens="prompt")


def test_stage_two_resets_adam_with_its_own_settings(zeda_dir):
    backend = _backend(zeda_dir)
    try:
        samples = tiny_samples(2)
        tokens = sum(len(s.response_ids) for s in samples)
        backend.train_step(samples, objective="sft", lr=1e-3, global_tokens=tokens)
        assert backend.optimizer.state
        backend.reset_optimizer(betas=(0.5, 0.9), weight_decay=0.0)
        assert not backend.optimizer.state
        groups = backend.optimizer.param_groups
        assert all(g["betas"] == (0.5, 0.9) and g["weight_decay"] == 0.0 for g in groups)
        backend.reset_optimizer()  # None keeps what the groups have
        assert all(g["betas"] == (0.5, 0.9) for g in groups)
    finally:
        backend.close()


@pytest.mark.parametrize("objective", ["opd", "topk_kl"])
def test_a_non_finite_step_is_skipped_and_never_reaches_a_save(zeda_dir, tmp_path, objective):
    """NaN teacher log-probabilities in one sample make the step's loss NaN: the optimizer
    step is skipped (weights and Adam state untouched), the next clean step trains, and a
    non-finite weight is refused before a checkpoint or a weight export."""
    from dataclasses import replace

    from zeda_rl.orchestrator import RunStopped, SkippedSteps

    backend = _backend(zeda_dir)
    clean = tiny_samples(4)
    poisoned = list(clean)
    if objective == "opd":
        poisoned[1] = replace(
            clean[1], teacher_logprobs=[float("nan")] * len(clean[1].response_ids)
        )
    else:
        top = clean[1].teacher_topk_logprobs.copy()
        top[0, 0] = float("nan")
        poisoned[1] = replace(clean[1], teacher_topk_logprobs=top)
    tokens = backend.objective(objective).normalizer(clean)
    before = {k: v.clone() for k, v in backend.model.state_dict().items()}
    metrics = backend.train_step(poisoned, objective=objective, lr=1e-3, global_tokens=tokens)
    assert metrics["skipped_step"] == 1.0 and backend.step == 0
    assert all(torch.equal(before[k], v) for k, v in backend.model.state_dict().items())
    assert not backend.optimizer.state  # Adam never saw the NaN step

    guard = SkippedSteps(limit=2, stage="stage2")
    guard.after(0, metrics)  # one skipped step: the run goes on
    with pytest.raises(RunStopped, match="2 optimizer steps in a row"):
        guard.after(1, metrics)

    metrics = backend.train_step(clean, objective=objective, lr=1e-3, global_tokens=tokens)
    assert metrics["skipped_step"] == 0.0 and backend.step == 1
    backend.check_finite_weights("a checkpoint")  # finite: nothing raised

    with torch.no_grad():
        next(p for p in backend.model.parameters() if p.dim() == 2)[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="refusing to write it into a checkpoint"):
        backend.check_finite_weights("a checkpoint")
    with pytest.raises(FloatingPointError, match="refusing to write it into a weight sync"):
        list(backend.finite_tensors("a weight sync"))  # the object store's one-pass export
    backend.close()
