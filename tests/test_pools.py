"""The pools on a real local Ray instance: a rollout or teacher actor that dies is restarted
(the rollout one with the trainer's current weights) and the call retried."""

from __future__ import annotations

import pytest

from tests.conftest import build_static_model
from zeda_rl.config import RunConfig
from zeda_rl.convert import convert


@pytest.mark.slow
def test_dead_rollout_and_teacher_actors_are_replaced(tmp_path):
    import ray

    from zeda_rl.orchestrator import Pools

    build_static_model("qwen3_moe", 0).save_pretrained(tmp_path / "teacher")
    convert(tmp_path / "teacher", tmp_path / "student", log=lambda *_: None)
    cfg = RunConfig()
    cfg.rollout.max_model_len = cfg.teacher.max_model_len = 64
    cfg.resources.timeout_s = 300
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    pools = None
    try:
        pools = Pools(cfg, tmp_path / "teacher", tmp_path / "student", stop_ids=[])
        prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
        cfg.stage2.max_new_tokens = 4
        first = pools.generate_rollouts(prompts)
        assert [g.prompt_ids for g in first] == prompts
        assert all(len(g.response_ids) == 4 and g.routes is not None for g in first)

        old_rollout, old_teacher = pools.rollouts[0], pools.teacher
        ray.kill(old_rollout, no_restart=True)
        ray.kill(old_teacher, no_restart=True)
        again = pools.generate_rollouts(prompts)
        assert pools.rollouts[0] != old_rollout and len(again) == 3
        scores = pools.call_teacher("score", [(g.prompt_ids, g.response_ids) for g in again])
        assert pools.teacher != old_teacher
        assert [len(s) for s in scores] == [4, 4, 4] and all(v <= 0 for s in scores for v in s)
    finally:
        if pools is not None:
            pools.shutdown()
        ray.shutdown()
