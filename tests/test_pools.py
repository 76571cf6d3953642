"""The pools on a real local Ray instance: weights reach every rollout engine through each
CPU weight-sync method, and a rollout or teacher actor that dies is restarted (the rollout
one with the trainer's current weights) and the call retried; a hung engine is found by
the health check or by the call's timeout."""

from __future__ import annotations

import dataclasses
import time

import pytest

from tests.conftest import build_static_model
from zeda_rl.config import RunConfig
from zeda_rl.convert import convert


@pytest.mark.slow
@pytest.mark.parametrize("method", ["object_store", "gloo"])
def test_weight_sync_and_dead_actors_are_replaced(tmp_path, method):
    import ray

    from zeda_rl.orchestrator import check_sync
    from zeda_rl.pools.placement import Pools
    from zeda_rl.trainer.batch import Sample

    build_static_model("qwen3_moe", 0).save_pretrained(tmp_path / "teacher")
    convert(tmp_path / "teacher", tmp_path / "student", log=lambda *_: None)
    cfg = RunConfig()
    cfg.rollout.max_model_len = cfg.teacher.max_model_len = 64
    # Two engines (the transfer group places them at ranks 1 and 2) and two trainer ranks
    # (rank 1 takes part without sending): 2 x 0.25 + 0.5 + 2 x 0.5 CPUs.
    cfg.rollout.num_workers = cfg.trainer.num_workers = 2
    cfg.rollout.cpus_per_worker = 0.25
    cfg.resources.timeout_s = 300
    cfg.weight_sync.method = method
    cfg.weight_sync.bucket_mb = 0.05  # several buckets even for the tiny model
    cfg.weight_sync.check_tolerance = 1e-4
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    pools = None
    try:
        pools = Pools(cfg, tmp_path / "teacher", tmp_path / "student", stop_ids=[])
        prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
        cfg.stage2.max_new_tokens = 4
        first = pools.generate_rollouts(prompts)
        assert [g.prompt_ids for g in first] == prompts
        assert all(len(g.response_ids) == 4 and g.routes is not None for g in first)
        probe = [Sample(g.prompt_ids, g.response_ids) for g in first]

        # A large SFT step moves the weights; after the sync every engine serves them.
        before = pools.get(pools.rollouts[1].score.remote([(p, [9, 9]) for p in prompts], 1.0))
        pools.train(probe, "sft", lr=0.05)
        sync = pools.sync_weights()
        assert sync["tensors"] > 0 and (method == "gloo") == (sync["buckets"] == 0)
        after = pools.get(pools.rollouts[1].score.remote([(p, [9, 9]) for p in prompts], 1.0))
        moved = max(
            abs(a - b)
            for x, y in zip(before, after, strict=True)
            for a, b in zip(x, y, strict=True)
        )
        assert moved > 1e-2
        assert check_sync(cfg, pools, probe) <= 1e-4

        old_rollout, old_teacher = pools.rollouts[0], pools.teacher
        ray.kill(old_rollout, no_restart=True)
        ray.kill(old_teacher, no_restart=True)
        again = pools.generate_rollouts(prompts)
        assert pools.rollouts[0] != old_rollout and len(again) == 3
        scores = pools.call_teacher("score", [(g.prompt_ids, g.response_ids) for g in again])
        assert pools.teacher != old_teacher
        assert [len(s) for s in scores] == [4, 4, 4] and all(v <= 0 for s in scores for v in s)
        # The replacement got the trained weights, and (gloo) the group was rebuilt with it.
        assert check_sync(cfg, pools, probe) <= 1e-4
        pools.train(probe, "sft", lr=0.05)
        pools.sync_weights()
        assert check_sync(cfg, pools, probe) <= 1e-4
        # Between steps, a health check replaces a dead engine (with the current weights) and
        # leaves the live ones alone.
        _kill_and_wait(pools.rollouts[1])
        assert pools.check_health() == {"rollout": [1]}
        assert check_sync(cfg, pools, probe) <= 1e-4
        assert pools.check_health() == {}
        if method == "object_store":  # (hang detection does not depend on the sync method)
            # A hung engine (a call that never returns; an actor runs one call at a time): the
            # health check finds it silent and replaces it ...
            cfg.resources.health_check_timeout_s = 5
            pools.rollouts[1].__ray_call__.remote(lambda engine: time.sleep(3600))
            assert pools.check_health() == {"rollout": [1]}
            assert check_sync(cfg, pools, probe) <= 1e-4
            # ... and a call stuck behind a hang times out, its share retried on a rebuilt engine.
            policy = pools.rollout_group.policy
            pools.rollout_group.policy = dataclasses.replace(policy, timeout_s=15)
            stuck = pools.rollouts[0]
            stuck.__ray_call__.remote(lambda engine: time.sleep(3600))
            again = pools.generate_rollouts(prompts)
            assert pools.rollouts[0] != stuck and [g.prompt_ids for g in again] == prompts
            pools.rollout_group.policy = policy
            assert check_sync(cfg, pools, probe) <= 1e-4
        # A step the engines never received is caught.
        pools.train(probe, "sft", lr=0.05)
        with pytest.raises(RuntimeError, match="weight sync check failed"):
            check_sync(cfg, pools, probe)
    finally:
        if pools is not None:
            pools.shutdown()
        ray.shutdown()


def _kill_and_wait(actor) -> None:
    """``ray.kill`` returns before the actor is gone (a call sent right after may still be
    served): wait until a call fails."""
    import ray

    deadline = time.monotonic() + 60
    ray.kill(actor, no_restart=True)
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ready.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.2)
    raise AssertionError("the killed actor still answers")
