"""The ZEDA controller: one Ray driver that runs both stages over three actor pools.

::

    teacher checkpoint ──convert──▶ student checkpoint (router: N real + N_Z zero rows)
          │                                   │
          ▼                                   ▼
    ┌─────────────┐                   ┌──────────────────┐  weights after every step:
    │ teacher pool│                   │  rollout pool     │◀─ Ray object store, or
    │ vLLM, frozen│                   │  vLLM + zeda      │   vLLM's weight transfer
    │             │                   │  plugin (student) │   (gloo / nccl / ipc)
    └─────┬───────┘                   └────────┬─────────┘         ▲
          │ stage 1: responses                 │                    │
          │ stage 2: log p_T of the            │ stage 2: samples,  │
          │ student's samples                  │ log p_S, expert ids│
          ▼                                    ▼                    │
    ┌───────────────────────────────────────────────────────┐      │
    │ trainer pool: data-parallel ranks (torch, gloo/NCCL)  │──────┘
    │ stage 1: response NLL + GAL    stage 2: PPO(A = log p_T - log p_S) + GAL, R3 │
    └───────────────────────────────────────────────────────┘

The pools (pools/placement.py) are actor groups (pools/group.py): every remote call has a
timeout; a rollout or teacher actor that dies or hangs is rebuilt (a rollout engine gets the
current weights) and its call retried once. Checkpoints and resume: checkpoint.py.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from zeda_rl.config import RunConfig, active_mix
from zeda_rl.lr_schedules import constant_then_cosine_lr, cosine_lr
from zeda_rl.trainer.batch import Sample

if TYPE_CHECKING:
    from zeda_rl.faults import FaultPlan
    from zeda_rl.pools.placement import Pools

log = logging.getLogger(__name__)

TEACHER_CHUNK = 1024  # prompts per stage-1 generation call


def run_pipeline(cfg: RunConfig, teacher_dir: Path, student_dir: Path, run_dir: Path) -> dict:
    """Both stages on the run's Ray (a local instance or a joined cluster: cluster.py);
    returns timings and the final student folder."""
    import ray
    from transformers import AutoTokenizer

    from zeda_rl.checkpoint import Checkpointer, resume_point
    from zeda_rl.cluster import connect
    from zeda_rl.data.prompts import build_prompts, tokenize_prompts
    from zeda_rl.pools.placement import Pools
    from zeda_rl.tracking import Tracker
    from zeda_rl.validation import fault_plan, validate_prompt_lengths

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    prompts = tokenize_prompts(
        tokenizer, build_prompts(active_mix(cfg.prompts.mix), cfg.prompts.seed)
    )
    validate_prompt_lengths(cfg, max(len(p) for p in prompts))
    stop_ids = _stop_ids(student_dir)
    dashboard = connect(cfg, _runtime_env(cfg))
    log.info("Ray dashboard: %s", dashboard or "(not served to this driver)")
    tracker = Tracker(
        run_dir,
        asdict(cfg),
        use_wandb=cfg.logging.wandb,
        mode=cfg.logging.wandb_mode,
        project=cfg.logging.project,
        log_every=cfg.logging.log_every,
    )
    summary: dict = {"dashboard": dashboard}
    start = {"stage1": 0, "stage2": 0}
    weights_dir = student_dir
    resumed = resume_point(cfg, run_dir, log=log.warning) if cfg.checkpoint.resume else None
    if resumed is not None:
        weights_dir, state = resumed.weights_dir, resumed.state
        summary["resumed_from"] = str(weights_dir)
        start = {"stage1": resumed.stage1_start, "stage2": resumed.stage2_start}
        if resumed.stage1_complete:
            summary["stage1"] = {"complete_before_resume": True, "steps": state["step"] + 1}
        # The log holds what the resumed run will redo: keep it up to the checkpoint, so that
        # it reads as the uninterrupted run's.
        tracker.truncate_after(state["stage"], state["step"])
        log.info("resuming from %s (%s step %s)", weights_dir, state["stage"], state["step"])
    t0 = time.perf_counter()
    pools = Pools(cfg, teacher_dir, weights_dir, stop_ids)
    if resumed is not None:
        pools.trainer_group.call("load_optimizer", str(weights_dir))
    summary["pools_start_s"] = round(time.perf_counter() - t0, 1)
    summary["dashboard_actors"] = _dashboard_actors(dashboard) if dashboard else {}
    ckpt = Checkpointer(cfg, pools.trainer_group, run_dir)
    faults = fault_plan(cfg)  # one plan for the launch: a redone step does not fire again
    try:
        with ckpt.on_signals():

            def attempt() -> None:
                _run_stages(cfg, pools, prompts, tracker, ckpt, start, summary, faults)

            def recover() -> None:
                start.update(_recover_trainers(cfg, pools, ckpt, tracker, student_dir, run_dir))

            restarts = with_trainer_restarts(attempt, recover, cfg.trainer.max_restarts)
            if restarts:
                summary["trainer_restarts"] = restarts
            final = run_dir / "student_final"
            pools.trainer_group.call("save", str(final))  # collective
            for name in (
                "tokenizer.json",
                "tokenizer_config.json",
                "chat_template.jinja",
                "generation_config.json",
            ):
                if (student_dir / name).is_file():
                    (final / name).write_bytes((student_dir / name).read_bytes())
            summary["student_final"] = str(final)
    finally:
        pools.shutdown()
        tracker.close()
        ray.shutdown()  # stops a local instance; a joined cluster is only left
    return summary


class RunStopped(RuntimeError):
    """The run met a fault more often than it may survive one (trainer restarts, skipped
    steps in a row); the checkpoints written before are intact."""


def with_trainer_restarts(
    attempt: Callable[[], None], recover: Callable[[], None], max_restarts: int
) -> int:
    """``attempt()``; when it loses a trainer rank, ``recover()`` (rebuild the ranks from the
    newest checkpoint) and attempt again, at most ``max_restarts`` times (then RunStopped).
    Returns the restarts made. Any other failure propagates as it is."""
    from zeda_rl.pools.group import GroupLost

    restarts = 0
    while True:
        try:
            attempt()
            return restarts
        except GroupLost as lost:
            if lost.group != "trainer":
                raise
            if restarts >= max_restarts:
                raise RunStopped(
                    f"{lost}, after {restarts} restart(s) (trainer.max_restarts={max_restarts});"
                    " the checkpoints written before are intact (relaunch with "
                    "checkpoint.resume=true)"
                ) from lost
            restarts += 1
            log.warning(
                "%s: rebuilding the trainer ranks from the newest checkpoint "
                "(restart %d of trainer.max_restarts=%d)",
                lost,
                restarts,
                max_restarts,
            )
            recover()


def _run_stages(
    cfg, pools, prompts, tracker, ckpt, start: dict, summary: dict, faults: FaultPlan
) -> None:
    if cfg.stage1.enabled and start["stage1"] >= 0:
        t = time.perf_counter()
        summary["stage1"] = run_stage1(cfg, pools, prompts, tracker, ckpt, start["stage1"])
        summary["stage1"]["seconds"] = round(time.perf_counter() - t, 1)
    if cfg.stage2.enabled:
        t = time.perf_counter()
        summary["stage2"] = run_stage2(cfg, pools, prompts, tracker, ckpt, start["stage2"], faults)
        summary["stage2"]["seconds"] = round(time.perf_counter() - t, 1)


def _recover_trainers(cfg, pools, ckpt, tracker, student_dir: Path, run_dir: Path) -> dict:
    """New trainer ranks from the newest verified checkpoint (or, before the first one, the
    converted student); returns where each stage starts again. Steps since that checkpoint
    are redone, and their rows leave the metrics log."""
    from zeda_rl.checkpoint import resume_point

    point = resume_point(cfg, run_dir, log=log.warning)
    if point is None:
        pools.rebuild_trainers(student_dir, optimizer=False)
        tracker.truncate_after("stage1", -1)
        start = {"stage1": 0, "stage2": 0}
    else:
        pools.rebuild_trainers(point.weights_dir, optimizer=True)
        tracker.truncate_after(point.state["stage"], point.state["step"])
        start = {"stage1": point.stage1_start, "stage2": point.stage2_start}
    ckpt.trainers = pools.trainer_group
    return start


def run_stage1(
    cfg: RunConfig, pools: Pools, prompts: list[list[int]], tracker, ckpt, start_step: int = 0
) -> dict:
    """Teacher responses for every prompt (kept in the run folder, so a resumed run trains on
    the same data in the same order), then SFT (response NLL + GAL) over them."""
    s = cfg.stage1
    t0 = time.perf_counter()
    data_file = ckpt.run_dir / "stage1_samples.jsonl"
    if data_file.is_file():
        samples = [Sample(**json.loads(line)) for line in data_file.read_text().splitlines()]
    else:
        order = [p for epoch in range(s.epochs) for p in _shuffled(prompts, cfg.seed + epoch)]
        gens = []
        # In chunks: each call stays well inside the remote-call timeout on big prompt sets.
        for i in range(0, len(order), TEACHER_CHUNK):
            gens += pools.call_teacher(
                "generate",
                order[i : i + TEACHER_CHUNK],
                max_tokens=s.max_new_tokens,
                stop_token_ids=pools.stop_ids,
            )
        samples = [Sample(g.prompt_ids, g.response_ids) for g in gens if g.response_ids]
        tmp = data_file.with_suffix(".tmp")
        tmp.write_text(
            "".join(
                json.dumps({"prompt_ids": x.prompt_ids, "response_ids": x.response_ids}) + "\n"
                for x in samples
            )
        )
        tmp.rename(data_file)
    rollout_s = time.perf_counter() - t0
    steps = math.ceil(len(samples) / s.global_batch)
    last: dict = {}
    guard = SkippedSteps(cfg.trainer.max_skipped_steps, "stage1")
    for step in tracker.progress(range(start_step, steps), "stage 1 (SFT)"):
        t = time.perf_counter()
        batch = samples[step * s.global_batch : (step + 1) * s.global_batch]
        lr = cosine_lr(step, steps, s.lr, s.warmup_ratio)
        metrics = pools.train(batch, "sft", lr)
        guard.after(step, metrics)
        tokens = sum(len(x.prompt_ids) + len(x.response_ids) for x in batch)
        elapsed = time.perf_counter() - t
        last = {**metrics, "lr": lr, "train_s": elapsed, "tokens_per_s": tokens / elapsed}
        if step == start_step:
            last["teacher_rollout_s"] = rollout_s
        tracker.log("stage1", step, last, last_step=step == steps - 1)
        ckpt.maybe_save("stage1", step, last_step=step == steps - 1)
    return {"steps": steps, "samples": len(samples), "teacher_rollout_s": rollout_s, "last": last}


def run_stage2(
    cfg: RunConfig,
    pools: Pools,
    prompts: list[list[int]],
    tracker,
    ckpt,
    start_step: int = 0,
    faults: FaultPlan | None = None,
) -> dict:
    """Student samples, teacher scores, PPO-clipped OPD (or the top-k reverse KL) + GAL with
    routing replay."""
    s = cfg.stage2
    if start_step == 0:
        # Stage 2 is its own optimisation (constant lr): Adam starts from fresh moments.
        pools.trainer_group.call("reset_optimizer", tuple(s.betas), s.weight_decay)
    pools.sync_weights()
    last: dict = {}
    guard = SkippedSteps(cfg.trainer.max_skipped_steps, "stage2")
    from zeda_rl.losses.objective import get_objective

    label = get_objective(s.loss).label
    for step in tracker.progress(range(start_step, s.steps), label):
        t0 = time.perf_counter()
        every = cfg.resources.health_check_every
        due = every and step > start_step and step % every == 0
        if due and (rebuilt := pools.check_health()):
            log.warning("stage2 step %d: engines replaced: %s", step, rebuilt)
        if faults is not None:
            faults.before_step(step, pools)
        rng = random.Random(cfg.seed * 1_000_003 + step)  # the same data order on resume
        chosen = rng.sample(prompts, min(s.prompts_per_step, len(prompts)))
        batch_prompts = [p for p in chosen for _ in range(s.samples_per_prompt)]
        gens = [g for g in pools.generate_rollouts(batch_prompts, step) if g.response_ids]
        t1 = time.perf_counter()
        pairs = [(g.prompt_ids, g.response_ids) for g in gens]
        if s.loss == "topk_kl":
            top = pools.call_teacher("score_topk", pairs, s.teacher_top_k, s.kl_positions == "all")
            samples = [
                Sample(g.prompt_ids, g.response_ids, g.logprobs, None, g.routes, ids, values)
                for g, (ids, values) in zip(gens, top, strict=True)
            ]
        else:
            teacher_lp = pools.call_teacher("score", pairs)
            samples = [
                Sample(g.prompt_ids, g.response_ids, g.logprobs, lp, g.routes)
                for g, lp in zip(gens, teacher_lp, strict=True)
            ]
        if faults is not None:
            samples = faults.corrupt_scores(step, samples)
        t2 = time.perf_counter()
        lr = constant_then_cosine_lr(step, s.steps, s.lr, s.lr_decay_ratio)
        metrics = pools.train(samples, s.loss, lr)
        guard.after(step, metrics)
        t3 = time.perf_counter()
        sync = pools.sync_weights()
        t4 = time.perf_counter()
        tokens = sum(len(x.response_ids) for x in samples)
        last = {
            **metrics,
            "lr": lr,
            "response_tokens": tokens,
            "rollout_s": t1 - t0,
            "teacher_s": t2 - t1,
            "train_s": t3 - t2,
            "sync_s": t4 - t3,
            "sync_tensors": sync["tensors"],
            "tokens_per_s": tokens / (t4 - t0),
        }
        if cfg.weight_sync.check_logprobs:
            last["sync_logprob_max_diff"] = check_sync(cfg, pools, samples[:2])
        tracker.log("stage2", step, last, last_step=step == s.steps - 1)
        ckpt.maybe_save("stage2", step, last_step=step == s.steps - 1)
    return {"steps": s.steps, "last": last}


class SkippedSteps:
    """Counts optimizer steps skipped in a row for a non-finite gradient norm (the trainer
    skips them: step.py); ``limit`` in a row stop the run. The weights of a skipped step
    are the previous step's, so every checkpoint written holds finite weights."""

    def __init__(self, limit: int, stage: str):
        self.limit, self.stage, self.in_a_row = limit, stage, 0

    def after(self, step: int, metrics: dict) -> None:
        if not metrics.get("skipped_step"):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        log.warning(
            "%s step %d: non-finite gradient norm, optimizer step skipped (%d in a row)",
            self.stage,
            step,
            self.in_a_row,
        )
        if self.in_a_row >= self.limit:
            raise RunStopped(
                f"{self.stage}: {self.in_a_row} optimizer steps in a row skipped for non-finite "
                f"gradients (trainer.max_skipped_steps={self.limit}), up to step {step}; the "
                "checkpoints written before them are intact (resume with checkpoint.resume=true)"
            )


def check_sync(cfg: RunConfig, pools: Pools, probe: list[Sample]) -> float:
    """Every rollout engine's vs the trainer's logprobs of the same tokens after a sync
    (fresh routing on both sides, temperature 1). Returns the largest difference.

    A failed sync moves most positions; a router near-tie that floating-point order breaks
    the other way on one side moves a few (seen once in 126 steps at 1e-2). So the check
    fails when more than ``weight_sync.check_outlier_share`` of the positions differ by more
    than ``weight_sync.check_tolerance``.
    """
    pairs = [(s.prompt_ids, s.response_ids) for s in probe]
    engines = pools.rollout_group.call("score", pairs, 1.0)
    # Every rank computes (a lockstep backend needs all of them); rank 0's answer is used.
    trainer = pools.trainer_group.call("logprobs", probe, 1.0, False)[0]
    diffs = [
        abs(a - b)
        for engine in engines
        for e, t in zip(engine, trainer, strict=True)
        for a, b in zip(e, t, strict=True)
    ]
    tolerance = cfg.weight_sync.check_tolerance
    outliers = sum(d > tolerance for d in diffs)
    if outliers > cfg.weight_sync.check_outlier_share * len(diffs):
        raise RuntimeError(
            f"weight sync check failed: rollout and trainer logprobs differ by more than "
            f"weight_sync.check_tolerance={tolerance} at {outliers} of {len(diffs)} positions "
            f"(largest {max(diffs):.3e}; weight_sync.check_outlier_share="
            f"{cfg.weight_sync.check_outlier_share})"
        )
    return max(diffs)


def _dashboard_actors(url: str) -> dict[str, str]:
    """The pools as the dashboard shows them (a failure to read it is reported, not fatal)."""
    from zeda_rl.dashboard import live_actors

    try:
        actors = live_actors(url)
    except OSError as err:
        log.warning("could not read the Ray dashboard at %s: %s", url, err)
        return {}
    log.info(
        "actors on the dashboard: %s", ", ".join(f"{k} ({v})" for k, v in sorted(actors.items()))
    )
    return actors


def _runtime_env(cfg: RunConfig) -> dict | None:
    """What every actor (and the vLLM processes it starts) must inherit: the experts backend
    of CUDA tensors, when one is chosen."""
    from zeda_kernels import BACKEND_ENV

    if cfg.kernels.experts_backend == "auto":
        return None
    return {"env_vars": {BACKEND_ENV: cfg.kernels.experts_backend}}


def _shuffled(items: list, seed: int) -> list:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def _stop_ids(model_dir: Path) -> list[int]:
    config = json.loads((model_dir / "config.json").read_text())
    eos = config.get("eos_token_id")
    return [eos] if isinstance(eos, int) else list(eos or [])
