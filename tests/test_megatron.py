"""The megatron-core backend against the transformers ZEDA model: conversion round trip, the
same logits and routing (router semantics, real picks only to the dispatcher), the same
Group Auxiliary Loss, routing replay, and steps with expert parallelism over 2 gloo ranks
equal to the torch backend's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import FAMILIES, build_static_model, spawn_ranks, tiny_samples
from zeda_rl.convert import convert
from zeda_rl.losses.group_aux_loss import GroupAuxLossConfig, group_aux_loss
from zeda_rl.trainer.distributed import local_init_method
from zeda_rl.trainer.interface import OptimConfig, RankSpec
from zeda_rl.trainer.registry import make_backend

# Logit agreement on the same weights (fp32): the same math in a slightly different order;
# ~2.4e-7 seen for both families (GLM's q/kv LoRA norms must use transformers' eps 1e-6:
# with rms_norm_eps the difference was 3.5e-5).
LOGIT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def zeda_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("megatron")
    out = {}
    for family in FAMILIES:
        build_static_model(family, 0).save_pretrained(root / family / "teacher")
        convert(root / family / "teacher", root / family / "zeda", log=lambda *_: None)
        out[family] = root / family / "zeda"
    return out


@pytest.fixture(scope="module")
def megatron_world():
    """One gloo rank with megatron's parallel state, torn down after the module."""
    import torch.distributed as dist

    from zeda_rl.cpu_shims import megatron_core_on_cpu

    megatron_core_on_cpu()
    from megatron.core import parallel_state

    from zeda_rl.trainer.megatron.backend import init_model_parallel

    init_model_parallel(rank=0, world_size=1, init_method=local_init_method(), expert_parallel=1)
    yield
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def _pair(zeda_dir: Path, **config_fields):
    """The transformers model and a megatron model with the same weights (and config, with
    ``config_fields`` over the checkpoint's)."""
    from zeda_rl.models.registry import load_zeda_model
    from zeda_rl.models.zero_experts import RoutingState
    from zeda_rl.trainer.megatron.backend import load_hf_state
    from zeda_rl.trainer.megatron.model import build_gpt_model
    from zeda_rl.trainer.megatron.state_mapping import hf_to_megatron

    hf = load_zeda_model(str(zeda_dir), dtype=torch.float32, **config_fields).eval()
    state = RoutingState()
    mg = build_gpt_model(hf.config, state)
    missing, unexpected = mg.load_state_dict(
        hf_to_megatron(load_hf_state(zeda_dir), hf.config), strict=False
    )
    assert not unexpected and all(m.endswith("_extra_state") for m in missing)
    return hf, mg.eval(), state


def _forward(mg, state, ids, mask=None, replay=None):
    from zeda_rl.trainer.megatron.backend import megatron_forward

    positions = torch.arange(ids.shape[1]).expand_as(ids)
    return megatron_forward(mg, state, ids, positions, mask, replay)


@pytest.mark.parametrize("family", FAMILIES)
def test_conversion_round_trip_is_exact(zeda_dirs, family):
    from zeda_rl.models.registry import load_zeda_model
    from zeda_rl.trainer.megatron.backend import load_hf_state
    from zeda_rl.trainer.megatron.state_mapping import (
        experts_on_rank,
        hf_to_megatron,
        is_expert_of,
        megatron_to_hf,
        to_checkpoint_layout,
    )

    hf = load_zeda_model(str(zeda_dirs[family]), dtype=torch.float32)
    config = hf.config
    fused = hf.state_dict()
    # Two EP ranks each read only their experts from the checkpoint; together they hold all.
    shards = [
        hf_to_megatron(
            load_hf_state(
                zeda_dirs[family], lambda n, r=r: is_expert_of(n, experts_on_rank(config, r, 2))
            ),
            config,
            ep_rank=r,
            ep_size=2,
        )
        for r in range(2)
    ]
    per_rank = config.num_routed_experts // 2
    experts, rest = {}, {}
    for r, shard in enumerate(shards):
        for name, tensor in shard.items():
            if ".local_experts." not in name:
                rest[name] = tensor
                continue
            prefix, suffix = name.split(".local_experts.")
            k, param = suffix.split(".", 1)
            experts[f"{prefix}.local_experts.{r * per_rank + int(k)}.{param}"] = tensor
    back = megatron_to_hf(experts, rest, config)
    assert set(back) == set(fused)
    assert all(torch.equal(back[k], fused[k]) for k in fused)
    # The grown router goes through whole: N + N_Z rows.
    router = next(k for k in rest if k.endswith("router.weight"))
    assert rest[router].shape[0] == config.num_routed_experts + config.num_zero_experts
    # And the per-expert checkpoint layout is what is on disk.
    on_disk = load_hf_state(zeda_dirs[family])
    split = to_checkpoint_layout(fused)
    assert set(split) == set(on_disk) and all(torch.equal(split[k], on_disk[k]) for k in split)


@pytest.mark.parametrize("family", FAMILIES)
def test_megatron_matches_transformers(zeda_dirs, megatron_world, family):
    """Same logits, the same expert choices per layer (zero experts included), the same
    GAL; the dispatcher only ever sees real picks (0..K per token)."""
    from zeda_rl.trainer.megatron.router import ZedaMegatronRouter

    hf, mg, state = _pair(zeda_dirs[family])
    config = hf.config
    ids = torch.randint(0, config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding, as the trainer's batches
    dispatched = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: dispatched.append(out))
        for m in mg.modules()
        if isinstance(m, ZedaMegatronRouter)
    ]
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
        logits, records = _forward(mg, state, ids, mask)
    for h in hooks:
        h.remove()
    valid = mask.bool()
    diff = (logits - ref.logits)[valid].abs().max().item()
    assert diff <= LOGIT_TOLERANCE, diff
    assert [r.layer_idx for r in records] == [r.layer_idx for r in ref.routing]
    rows = valid.reshape(-1)  # padded positions attend differently in the two models
    for mine, theirs in zip(records, ref.routing, strict=True):
        assert torch.equal(mine.topk_ids[rows], theirs.topk_ids[rows])
        assert float(mine.zero_ratio) == pytest.approx(float(theirs.zero_ratio), abs=1e-7)
    assert any(float(r.zero_ratio) > 0 for r in records)
    n, k = config.num_routed_experts, config.num_experts_per_tok
    for (probs, routing_map), record in zip(dispatched, records, strict=True):
        assert probs.shape == routing_map.shape == (ids.numel(), n)  # real columns only
        # Megatron's rows are sequence-major; a token's real picks are its routing_map row.
        real = (record.topk_ids < n).sum(-1).view(3, 11).t().reshape(-1)
        assert torch.equal(routing_map.sum(-1), real)
        assert int(routing_map.sum(-1).max()) <= k and int(routing_map.sum(-1).min()) < k
        assert torch.all(probs[~routing_map] == 0)
    gal = GroupAuxLossConfig()
    kw = dict(num_real=n, num_zero=config.num_zero_experts, top_k=k, config=gal)
    assert float(group_aux_loss(records, **kw)) == pytest.approx(
        float(group_aux_loss(ref.routing, **kw)), rel=1e-5
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_megatron_router_honours_the_routing_variants(zeda_dirs, megatron_world, family):
    """The compute dial and static top-K' through the megatron router: the transformers
    model's choices exactly, and the dial really moves the zero share."""
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(2))
    shares = {}
    for name, fields in {
        "plain": {},
        "dial": {"zero_expert_bias": 0.5},
        "static": {"mask_zero_experts": True, "routing_top_k": 1},
    }.items():
        hf, mg, state = _pair(zeda_dirs[family], **fields)
        with torch.no_grad():
            ref = hf(input_ids=ids)
            logits, records = _forward(mg, state, ids)
        assert (logits - ref.logits).abs().max().item() <= LOGIT_TOLERANCE
        for mine, theirs in zip(records, ref.routing, strict=True):
            assert torch.equal(mine.topk_ids, theirs.topk_ids)
        shares[name] = sum(float(r.zero_ratio) for r in records) / len(records)
    assert shares["dial"] > shares["plain"]
    assert shares["static"] == pytest.approx(1 - 1 / hf.config.num_experts_per_tok)


def test_megatron_routing_replay(zeda_dirs, megatron_world):
    """Replaying the recorded choices reproduces the fresh forward; a replay that is not
    consumed, or one of the wrong shape, is an error."""
    hf, mg, state = _pair(zeda_dirs["qwen3_moe"])
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fresh, records = _forward(mg, state, ids)
        replay = {r.layer_idx: r.topk_ids for r in records}
        again, replayed = _forward(mg, state, ids, replay=replay)
        assert torch.equal(fresh, again)
        # A different route changes the output: the replay is really used.
        swapped = {i: torch.roll(t, 1, dims=0) for i, t in replay.items()}
        other, _ = _forward(mg, state, ids, replay=swapped)
        assert not torch.allclose(fresh, other)
        with pytest.raises(RuntimeError, match="never consumed"):
            _forward(mg, state, ids, replay={**replay, 99: replay[0]})
        with pytest.raises(ValueError, match="expected"):
            _forward(mg, state, ids, replay={i: t[:-1] for i, t in replay.items()})


def _rank_main(rank, world, init, kind, zeda_dir, out_path):
    torch.set_num_threads(1)
    backend = make_backend(
        kind,
        str(zeda_dir),
        RankSpec(
            rank=rank,
            world_size=world,
            init_method=init,
            optim=OptimConfig(lr=1e-3, micro_batch_size=2),
            gal=GroupAuxLossConfig(),
            temperature=1.0,
            routing_replay=False,
        ),
        {"expert_parallel": world} if kind == "megatron" else None,
    )
    samples = tiny_samples(8)
    tokens = sum(len(s.response_ids) for s in samples)
    share = len(samples) // world  # contiguous shares: the same micro-batches as one rank
    mine = samples[rank * share : (rank + 1) * share]
    metrics = [
        backend.train_step(mine, objective=objective, lr=1e-3, global_tokens=tokens)
        for objective in ("sft", "opd", "topk_kl", "sft")
    ]
    logprobs = backend.logprobs(samples[:3], 1.0, False)
    state = dict(backend.named_tensors())  # gathered over the EP ranks
    if rank == 0:
        torch.save({"metrics": metrics, "logprobs": logprobs, "state": state}, out_path)
    backend.close()


def _run(kind, zeda_dir, world, out_path):
    spawn_ranks(_rank_main, world, kind, zeda_dir, out_path)
    return torch.load(out_path, weights_only=False)


@pytest.mark.slow
def test_expert_parallel_megatron_steps_equal_torch_steps(zeda_dirs, tmp_path):
    """Four steps (SFT, OPD, top-k KL, SFT) of the megatron backend with EP = 2 over two gloo ranks
    (each holding half the experts) reach the torch backend's losses, GAL, zero ratios and
    weights on one rank."""
    torch_run = _run("torch", zeda_dirs["qwen3_moe"], 1, tmp_path / "torch.pt")
    ep2 = _run("megatron", zeda_dirs["qwen3_moe"], 2, tmp_path / "megatron.pt")
    for mine, theirs in zip(ep2["metrics"], torch_run["metrics"], strict=True):
        assert set(mine) == set(theirs)
        for key, value in theirs.items():
            assert mine[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for a, b in zip(ep2["logprobs"], torch_run["logprobs"], strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    assert set(ep2["state"]) == set(torch_run["state"])
    for name, tensor in torch_run["state"].items():
        assert torch.allclose(ep2["state"][name], tensor, atol=1e-4, rtol=0), name
