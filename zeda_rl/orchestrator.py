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

Every remote call has a timeout; a rollout or teacher actor that dies is restarted (the
rollout one gets the current weights) and the call retried once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

from zeda_rl.config import RunConfig, active_mix
from zeda_rl.trainer.batch import Sample

log = logging.getLogger(__name__)

TEACHER_CHUNK = 1024  # prompts per stage-1 generation call


class Pools:
    """Actor handles of the three pools, placed in one placement group."""

    def __init__(self, cfg: RunConfig, teacher_dir: Path, student_dir: Path, stop_ids: list[int]):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from zeda_rl.trainer.distributed import local_init_method

        self.cfg, self.teacher_dir, self.stop_ids = cfg, teacher_dir, stop_ids
        r, t, tr = cfg.rollout, cfg.teacher, cfg.trainer
        bundles = (
            [_bundle(r.cpus_per_worker, r.gpus_per_worker)] * r.num_workers
            + [_bundle(t.cpus, t.gpus)]
            + [_bundle(tr.cpus_per_worker, tr.gpus_per_worker)] * tr.num_workers
        )
        strategy = "PACK" if cfg.resources.layout == "colocated" else "SPREAD"
        self.group = placement_group(bundles, strategy=strategy, name=f"{cfg.name}-pools")
        ray.get(self.group.ready(), timeout=cfg.resources.timeout_s)
        self._bundle = iter(range(len(bundles)))

        def place(cls, name: str, cpus: float, gpus: float):
            return ray.remote(cls).options(
                name=name,
                num_cpus=cpus,
                num_gpus=gpus,
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.group, placement_group_bundle_index=next(self._bundle)
                ),
            )

        from zeda_rl.pools.rollout import RolloutWorker
        from zeda_rl.pools.teacher import TeacherWorker
        from zeda_rl.pools.trainer import TrainerWorker

        self._rollout_factories = [
            place(RolloutWorker, f"rollout-{i}", r.cpus_per_worker, r.gpus_per_worker)
            for i in range(r.num_workers)
        ]
        self._teacher_factory = place(TeacherWorker, "teacher-0", t.cpus, t.gpus)
        self.student_dir = student_dir
        self.rollouts = [self._new_rollout(i) for i in range(r.num_workers)]
        self.teacher = self._new_teacher()
        init = local_init_method()
        optim = _optim(cfg, stage=1 if cfg.stage1.enabled else 2)
        self.trainers = [
            place(TrainerWorker, f"trainer-{rank}", tr.cpus_per_worker, tr.gpus_per_worker).remote(
                str(student_dir),
                backend=tr.backend,
                rank=rank,
                world_size=tr.num_workers,
                init_method=init,
                optim=optim,
                gal=cfg.group_aux_loss,
                temperature=cfg.rollout.temperature,
                routing_replay=cfg.rollout.routing_replay,
                ppo_clip=cfg.stage2.ppo_clip,
                seed=cfg.seed,
                threads=max(1, int(tr.cpus_per_worker)),
                parallel=_parallel(cfg),
            )
            for rank in range(tr.num_workers)
        ]
        self.get([a.ready.remote() for a in [*self.rollouts, self.teacher, *self.trainers]])
        from zeda_rl.weight_sync import WeightSync

        self.weights = WeightSync(
            cfg.weight_sync.method,
            self.trainers,
            bucket_mb=cfg.weight_sync.bucket_mb,
            workers_per_engine=r.tensor_parallel_size,
            timeout_s=cfg.resources.timeout_s,
        )
        self.weights.connect(self.rollouts)

    def _new_rollout(self, i: int):
        from zeda_rl.weight_sync import ENGINE_BACKENDS

        r = self.cfg.rollout
        return self._rollout_factories[i].remote(
            str(self.student_dir),
            seed=self.cfg.seed + i,
            max_model_len=r.max_model_len,
            kv_cache_gib=r.kv_cache_gib,
            tensor_parallel_size=r.tensor_parallel_size,
            capture_routes=r.routing_replay,
            weight_transfer_backend=ENGINE_BACKENDS.get(self.cfg.weight_sync.method),
        )

    def _new_teacher(self):
        t = self.cfg.teacher
        return self._teacher_factory.remote(
            str(self.teacher_dir),
            seed=self.cfg.seed,
            max_model_len=t.max_model_len,
            kv_cache_gib=t.kv_cache_gib,
            tensor_parallel_size=t.tensor_parallel_size,
            temperature=t.temperature,
        )

    def get(self, refs):
        import ray

        return ray.get(refs, timeout=self.cfg.resources.timeout_s)

    def call_teacher(self, method: str, *args, **kwargs):
        """A teacher call, retried once on a fresh actor if the actor died."""
        import ray

        try:
            return self.get(getattr(self.teacher, method).remote(*args, **kwargs))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
            log.warning("teacher actor failed (%s); restarting it and retrying", type(err).__name__)
            ray.kill(self.teacher, no_restart=True)
            self.teacher = self._new_teacher()
            return self.get(getattr(self.teacher, method).remote(*args, **kwargs))

    def generate_rollouts(self, prompts: list[list[int]]) -> list:
        """Split prompts over the rollout workers; a dead worker is restarted, given the
        trainer's current weights, and its share retried once."""
        import ray

        shares = _split(prompts, len(self.rollouts))
        kwargs = dict(
            temperature=self.cfg.rollout.temperature,
            max_tokens=self.cfg.stage2.max_new_tokens,
            stop_token_ids=self.stop_ids,
        )
        refs = [
            w.generate.remote(share, **kwargs)
            for w, share in zip(self.rollouts, shares, strict=True)
        ]
        out = []
        for i, ref in enumerate(refs):
            try:
                out.append(self.get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
                log.warning(
                    "rollout-%d failed (%s); restarting it and retrying", i, type(err).__name__
                )
                ray.kill(self.rollouts[i], no_restart=True)
                self.rollouts[i] = self._new_rollout(i)
                self.weights.connect(self.rollouts)
                self.sync_weights()
                out.append(self.get(self.rollouts[i].generate.remote(shares[i], **kwargs)))
        return [g for part in out for g in part]

    def sync_weights(self) -> dict:
        """The trainer's current weights into every rollout engine (weight_sync.py)."""
        return self.weights.push()

    def train(self, samples: list[Sample], objective: str, lr: float) -> dict[str, float]:
        from zeda_rl.losses.objective import get_objective

        # The positions every per-token average of the objective divides by, over all ranks.
        tokens = get_objective(objective).normalizer(samples)
        shares = _split(samples, len(self.trainers))
        metrics = self.get(
            [
                t.train_step.remote(share, objective=objective, lr=lr, global_tokens=tokens)
                for t, share in zip(self.trainers, shares, strict=True)
            ]
        )
        return metrics[0]  # every rank reports the same all-reduced metrics

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for t in self.trainers:
            # A dead rank has nothing left to close.
            with contextlib.suppress(Exception):
                ray.get(t.close.remote(), timeout=30)
        for actor in [*self.rollouts, self.teacher, *self.trainers]:
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.group)


def _parallel(cfg: RunConfig) -> dict[str, int] | None:
    """Model parallelism of the megatron backend (the torch backend is data-parallel)."""
    tr = cfg.trainer
    if tr.backend != "megatron":
        return None
    return {
        "expert_parallel": tr.expert_parallel,
        "tensor_parallel": tr.tensor_parallel,
        "pipeline_parallel": tr.pipeline_parallel,
    }


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


def _split(items: list, parts: int) -> list[list]:
    """Contiguous, balanced shares (the first ones one longer)."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def _optim(cfg: RunConfig, stage: int):
    from zeda_rl.trainer.interface import OptimConfig

    s = cfg.stage1 if stage == 1 else cfg.stage2
    return OptimConfig(
        lr=s.lr,
        betas=tuple(s.betas),
        weight_decay=s.weight_decay,
        grad_clip=cfg.trainer.grad_clip,
        micro_batch_size=cfg.trainer.micro_batch_size,
        offload=cfg.trainer.optimizer_offload,
    )


def cosine_lr(step: int, total: int, peak: float, warmup_ratio: float) -> float:
    """Linear warm-up over ``warmup_ratio`` of the steps, then cosine to 0 (method.md 3)."""
    warmup = max(1, round(total * warmup_ratio))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


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
    for step in tracker.progress(range(start_step, steps), "stage 1 (SFT)"):
        t = time.perf_counter()
        batch = samples[step * s.global_batch : (step + 1) * s.global_batch]
        lr = cosine_lr(step, steps, s.lr, s.warmup_ratio)
        metrics = pools.train(batch, "sft", lr)
        tokens = sum(len(x.prompt_ids) + len(x.response_ids) for x in batch)
        elapsed = time.perf_counter() - t
        last = {**metrics, "lr": lr, "train_s": elapsed, "tokens_per_s": tokens / elapsed}
        if step == start_step:
            last["teacher_rollout_s"] = rollout_s
        tracker.log("stage1", step, last, last_step=step == steps - 1)
        ckpt.maybe_save("stage1", step, last_step=step == steps - 1)
    return {"steps": steps, "samples": len(samples), "teacher_rollout_s": rollout_s, "last": last}


def run_stage2(
    cfg: RunConfig, pools: Pools, prompts: list[list[int]], tracker, ckpt, start_step: int = 0
) -> dict:
    """Student samples, teacher scores, PPO-clipped OPD (or the top-k reverse KL) + GAL with
    routing replay."""
    s = cfg.stage2
    if start_step == 0:
        # Stage 2 is its own optimisation (constant lr): Adam starts from fresh moments.
        pools.get(
            [t.reset_optimizer.remote(tuple(s.betas), s.weight_decay) for t in pools.trainers]
        )
    pools.sync_weights()
    last: dict = {}
    from zeda_rl.losses.objective import get_objective

    label = get_objective(s.loss).label
    for step in tracker.progress(range(start_step, s.steps), label):
        t0 = time.perf_counter()
        rng = random.Random(cfg.seed * 1_000_003 + step)  # the same data order on resume
        chosen = rng.sample(prompts, min(s.prompts_per_step, len(prompts)))
        batch_prompts = [p for p in chosen for _ in range(s.samples_per_prompt)]
        gens = [g for g in pools.generate_rollouts(batch_prompts) if g.response_ids]
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
        t2 = time.perf_counter()
        metrics = pools.train(samples, s.loss, s.lr)
        t3 = time.perf_counter()
        sync = pools.sync_weights()
        t4 = time.perf_counter()
        tokens = sum(len(x.response_ids) for x in samples)
        last = {
            **metrics,
            "lr": s.lr,
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


def check_sync(cfg: RunConfig, pools: Pools, probe: list[Sample]) -> float:
    """Every rollout engine's vs the trainer's logprobs of the same tokens after a sync
    (fresh routing on both sides, temperature 1). Returns the largest difference.

    A failed sync moves most positions; a router near-tie that floating-point order breaks
    the other way on one side moves a few (seen once in 126 steps at 1e-2). So the check
    fails when more than ``weight_sync.check_outlier_share`` of the positions differ by more
    than ``weight_sync.check_tolerance``.
    """
    pairs = [(s.prompt_ids, s.response_ids) for s in probe]
    engines = pools.get([w.score.remote(pairs, 1.0) for w in pools.rollouts])
    # Every rank computes (a lockstep backend needs all of them); rank 0's answer is used.
    trainer = pools.get([t.logprobs.remote(probe, 1.0, False) for t in pools.trainers])[0]
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


class Checkpointer:
    """Saves at ``checkpoint.every_steps`` and at each stage's last step; all trainer ranks
    take part (the save is collective), rank 0 writes."""

    def __init__(self, cfg: RunConfig, pools: Pools, run_dir: Path):
        self.cfg, self.pools, self.run_dir = cfg, pools, run_dir
        self.root = checkpoint_root(cfg, run_dir)

    def maybe_save(self, stage: str, step: int, last_step: bool) -> Path | None:
        every = self.cfg.checkpoint.every_steps
        if not last_step and not (every > 0 and (step + 1) % every == 0):
            return None
        from zeda_rl.checkpoint import save_checkpoint

        def write(folder: Path) -> None:
            self.pools.get([t.save.remote(str(folder)) for t in self.pools.trainers])

        state = {"seed": self.cfg.seed, "stage_complete": last_step}
        return save_checkpoint(self.root, stage, step, write, state, self.cfg.checkpoint.keep)


def checkpoint_root(cfg: RunConfig, run_dir: Path) -> Path:
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run_dir / "checkpoints"


def _shuffled(items: list, seed: int) -> list:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def _runtime_env(cfg: RunConfig) -> dict | None:
    """What every actor (and the vLLM processes it starts) must inherit: the experts backend
    of CUDA tensors, when one is chosen."""
    from zeda_kernels import BACKEND_ENV

    if cfg.kernels.experts_backend == "auto":
        return None
    return {"env_vars": {BACKEND_ENV: cfg.kernels.experts_backend}}


def run_pipeline(cfg: RunConfig, teacher_dir: Path, student_dir: Path, run_dir: Path) -> dict:
    """Both stages on a local Ray instance; returns timings and the final student folder."""
    import ray
    from transformers import AutoTokenizer

    from zeda_rl.data.prompts import build_prompts, tokenize_prompts
    from zeda_rl.tracking import Tracker

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    prompts = tokenize_prompts(
        tokenizer, build_prompts(active_mix(cfg.prompts.mix), cfg.prompts.seed)
    )
    stop_ids = _stop_ids(student_dir)
    ctx = ray.init(
        num_cpus=cfg.resources.cpus_per_node,
        include_dashboard=True,
        log_to_driver=False,
        ignore_reinit_error=True,
        runtime_env=_runtime_env(cfg),
    )
    log.info("Ray dashboard: http://%s", ctx.dashboard_url)
    tracker = Tracker(
        run_dir,
        asdict(cfg),
        use_wandb=cfg.logging.wandb,
        mode=cfg.logging.wandb_mode,
        project=cfg.logging.project,
        log_every=cfg.logging.log_every,
    )
    summary: dict = {"dashboard": f"http://{ctx.dashboard_url}"}
    start = {"stage1": 0, "stage2": 0}
    weights_dir = student_dir
    resumed = _resume_point(cfg, run_dir) if cfg.checkpoint.resume else None
    if resumed is not None:
        weights_dir, state = resumed
        summary["resumed_from"] = str(weights_dir)
        if state["stage"] == "stage1" and not state.get("stage_complete"):
            start["stage1"] = state["step"] + 1
        elif state["stage"] == "stage1":  # at the boundary: stage 1 is done
            start["stage1"] = -1
            summary["stage1"] = {"complete_before_resume": True, "steps": state["step"] + 1}
        else:
            start["stage1"], start["stage2"] = -1, state["step"] + 1
        # The log holds what the resumed run will redo: keep it up to the checkpoint, so that
        # it reads as the uninterrupted run's.
        tracker.truncate_after(state["stage"], state["step"])
        log.info("resuming from %s (%s step %s)", weights_dir, state["stage"], state["step"])
    t0 = time.perf_counter()
    pools = Pools(cfg, teacher_dir, weights_dir, stop_ids)
    if resumed is not None:
        pools.get([t.load_optimizer.remote(str(weights_dir)) for t in pools.trainers])
    summary["pools_start_s"] = round(time.perf_counter() - t0, 1)
    summary["dashboard_actors"] = _dashboard_actors(summary["dashboard"])
    ckpt = Checkpointer(cfg, pools, run_dir)
    try:
        if cfg.stage1.enabled and start["stage1"] >= 0:
            t = time.perf_counter()
            summary["stage1"] = run_stage1(cfg, pools, prompts, tracker, ckpt, start["stage1"])
            summary["stage1"]["seconds"] = round(time.perf_counter() - t, 1)
        if cfg.stage2.enabled:
            t = time.perf_counter()
            summary["stage2"] = run_stage2(cfg, pools, prompts, tracker, ckpt, start["stage2"])
            summary["stage2"]["seconds"] = round(time.perf_counter() - t, 1)
        final = run_dir / "student_final"
        pools.get([t.save.remote(str(final)) for t in pools.trainers])  # collective
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
        ray.shutdown()
    return summary


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


def _resume_point(cfg: RunConfig, run_dir: Path) -> tuple[Path, dict] | None:
    from zeda_rl.checkpoint import latest_checkpoint

    found = latest_checkpoint(checkpoint_root(cfg, run_dir))
    if found is None:
        log.warning("checkpoint.resume=true but no valid checkpoint found: starting fresh")
    return found


def _stop_ids(model_dir: Path) -> list[int]:
    import json

    config = json.loads((model_dir / "config.json").read_text())
    eos = config.get("eos_token_id")
    return [eos] if isinstance(eos, int) else list(eos or [])
