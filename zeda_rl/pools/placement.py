"""The three pools of a run in one placement group: rollout engines (vLLM serving the
student), the frozen teacher (vLLM) and the trainer ranks, each an ``ActorGroup``."""

from __future__ import annotations

import contextlib
from pathlib import Path

from zeda_rl.config import RunConfig
from zeda_rl.pools.group import ActorGroup, RetryPolicy
from zeda_rl.trainer.batch import Sample


class Pools:
    def __init__(self, cfg: RunConfig, teacher_dir: Path, student_dir: Path, stop_ids: list[int]):
        import ray
        from ray.util.placement_group import placement_group

        self.cfg, self.teacher_dir, self.student_dir = cfg, teacher_dir, student_dir
        self.trainer_weights_dir = student_dir  # a checkpoint after a rebuild
        self.stop_ids = stop_ids
        r, tr = cfg.rollout, cfg.trainer
        self.group = placement_group(
            pool_bundles(cfg), strategy=placement_strategy(cfg), name=f"{cfg.name}-pools"
        )
        ray.get(self.group.ready(), timeout=cfg.resources.start_timeout_s)
        policy = RetryPolicy(
            timeout_s=cfg.resources.timeout_s, start_timeout_s=cfg.resources.start_timeout_s
        )
        first_teacher, first_trainer = r.num_workers, r.num_workers + 1

        self.rollout_group = ActorGroup(
            "rollout", self._rollout_factory(), r.num_workers, policy, self._rollout_restarted
        )
        self.teacher_group = ActorGroup("teacher", self._teacher_factory(first_teacher), 1, policy)
        self.trainer_group = ActorGroup(
            "trainer", self._trainer_factory(first_trainer), tr.num_workers, policy
        )
        for group in (self.rollout_group, self.teacher_group, self.trainer_group):
            group.wait_started()
        self._start_trainers()

    def _start_trainers(self) -> None:
        """The trainer ranks' process group and model, then the weight sync to the engines."""
        from zeda_rl.weight_sync import make_weight_sync

        # The ranks meet at rank 0's node (not localhost: the ranks may span nodes).
        rendezvous = self.trainer_group.call_one(0, "rendezvous")
        self.trainer_group.call("setup", rendezvous)
        self.weights = make_weight_sync(
            self.cfg.weight_sync.method,
            self.trainers,
            bucket_mb=self.cfg.weight_sync.bucket_mb,
            workers_per_engine=self.cfg.rollout.tensor_parallel_size,
            timeout_s=self.cfg.resources.timeout_s,
        )
        self.weights.connect(self.rollouts)

    def rebuild_trainers(self, weights_dir: Path, optimizer: bool) -> None:
        """After a lost trainer rank: every rank is replaced (a collective cannot continue
        without one), loaded from ``weights_dir`` (a checkpoint, or the converted student),
        with the checkpoint's optimizer state when ``optimizer``; the engines get its
        weights."""
        self.trainer_group.kill()
        self.trainer_weights_dir = weights_dir  # the engines keep theirs: weights are pushed
        self.trainer_group = ActorGroup(
            "trainer",
            self._trainer_factory(self.cfg.rollout.num_workers + 1),
            self.cfg.trainer.num_workers,
            self.trainer_group.policy,
        )
        self.trainer_group.wait_started()
        self._start_trainers()
        if optimizer:
            self.trainer_group.call("load_optimizer", str(weights_dir))
        self.sync_weights()

    # -- actors ------------------------------------------------------------------------------

    def _place(self, cls, name: str, cpus: float, gpus: float, bundle: int):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return ray.remote(cls).options(
            name=name,
            num_cpus=cpus,
            num_gpus=gpus,
            max_restarts=0,  # restarts are the group's, with the call retried
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                self.group, placement_group_bundle_index=bundle
            ),
        )

    def _rollout_factory(self):
        from zeda_rl.pools.rollout import RolloutWorker
        from zeda_rl.weight_sync import ENGINE_BACKENDS

        r = self.cfg.rollout

        def build(rank: int):
            return self._place(
                RolloutWorker, f"rollout-{rank}", r.cpus_per_worker, r.gpus_per_worker, rank
            ).remote(
                str(self.student_dir),
                seed=self.cfg.seed + rank,
                max_model_len=r.max_model_len,
                kv_cache_gib=r.kv_cache_gib,
                tensor_parallel_size=r.tensor_parallel_size,
                capture_routes=r.routing_replay,
                weight_transfer_backend=ENGINE_BACKENDS.get(self.cfg.weight_sync.method),
            )

        return build

    def _rollout_restarted(self, rank: int) -> None:
        """A replaced engine joins the weight transfer and gets the trainer's weights."""
        self.weights.connect(self.rollouts)
        self.sync_weights()

    def _teacher_factory(self, bundle: int):
        from zeda_rl.pools.teacher import TeacherWorker

        t = self.cfg.teacher

        def build(rank: int):
            return self._place(TeacherWorker, "teacher-0", t.cpus, t.gpus, bundle).remote(
                str(self.teacher_dir),
                seed=self.cfg.seed,
                max_model_len=t.max_model_len,
                kv_cache_gib=t.kv_cache_gib,
                tensor_parallel_size=t.tensor_parallel_size,
                temperature=t.temperature,
                top_k=self.cfg.stage2.teacher_top_k,
            )

        return build

    def _trainer_factory(self, first_bundle: int):
        from zeda_rl.pools.trainer import TrainerWorker
        from zeda_rl.trainer.interface import RankSpec

        cfg, tr = self.cfg, self.cfg.trainer

        def build(rank: int):
            return self._place(
                TrainerWorker,
                f"trainer-{rank}",
                tr.cpus_per_worker,
                tr.gpus_per_worker,
                first_bundle + rank,
            ).remote(
                str(self.trainer_weights_dir),
                backend=tr.backend,
                spec=RankSpec(
                    rank=rank,
                    world_size=tr.num_workers,
                    init_method="",  # set by setup(), once rank 0 has named its address
                    optim=_optim(cfg, stage=1 if cfg.stage1.enabled else 2),
                    gal=cfg.group_aux_loss,
                    temperature=cfg.rollout.temperature,
                    routing_replay=cfg.rollout.routing_replay,
                    ppo_clip=cfg.stage2.ppo_clip,
                    seed=cfg.seed,
                ),
                threads=max(1, int(tr.cpus_per_worker)),
                parallel=_parallel(cfg),
            )

        return build

    @property
    def rollouts(self) -> list:
        return self.rollout_group.actors

    @property
    def teacher(self):
        return self.teacher_group.actors[0]

    @property
    def trainers(self) -> list:
        return self.trainer_group.actors

    # -- calls -------------------------------------------------------------------------------

    def get(self, refs):
        return self.trainer_group.get(refs)

    def call_teacher(self, method: str, *args, **kwargs):
        """A teacher call, retried on a fresh actor if the actor died or hung."""
        return self.teacher_group.call_one(0, method, *args, **kwargs)

    def generate_rollouts(self, prompts: list[list[int]], step: int | None = None) -> list:
        """Prompts split over the rollout engines; a dead engine is replaced, given the
        trainer's current weights, and its share retried. With ``step``, each engine draws
        from a stream seeded by (run seed, step, engine): the same samples on a resume."""
        shares = split(prompts, len(self.rollout_group))
        kwargs = dict(
            temperature=self.cfg.rollout.temperature,
            max_tokens=self.cfg.stage2.max_new_tokens,
            stop_token_ids=self.stop_ids,
        )
        own = None
        if step is not None:
            base = (self.cfg.seed * 1_000_003 + step) * 1_009
            own = [{"seed": base + i} for i in range(len(shares))]
        out = self.rollout_group.scatter("generate", shares, own=own, **kwargs)
        return [g for part in out for g in part]

    def check_health(self) -> dict[str, list[int]]:
        """Ping every engine between steps; a dead or hung one is replaced (a rollout engine
        gets the current weights). Returns the rebuilt ranks per pool."""
        timeout = self.cfg.resources.health_check_timeout_s
        rebuilt = {
            "rollout": self.rollout_group.check_health(timeout),
            "teacher": self.teacher_group.check_health(timeout),
        }
        return {k: v for k, v in rebuilt.items() if v}

    def sync_weights(self) -> dict:
        """The trainer's current weights into every rollout engine (weight_sync/)."""
        return self.weights.push()

    def train(self, samples: list[Sample], objective: str, lr: float) -> dict[str, float]:
        from zeda_rl.losses.objective import get_objective

        # The positions every per-token average of the objective divides by, over all ranks.
        tokens = get_objective(objective).normalizer(samples)
        metrics = self.trainer_group.scatter(
            "train_step",
            split(samples, len(self.trainer_group)),
            retry=False,  # a step is collective over the ranks
            objective=objective,
            lr=lr,
            global_tokens=tokens,
        )
        return metrics[0]  # every rank reports the same all-reduced metrics

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for t in self.trainers:
            # A dead rank has nothing left to close.
            with contextlib.suppress(Exception):
                ray.get(t.close.remote(), timeout=30)
        for group in (self.rollout_group, self.teacher_group, self.trainer_group):
            group.kill()
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


def pool_bundles(cfg: RunConfig) -> list[dict[str, float]]:
    """One placement bundle per actor: rollout engines, the teacher, the trainer ranks."""
    r, t, tr = cfg.rollout, cfg.teacher, cfg.trainer
    return (
        [_bundle(r.cpus_per_worker, r.gpus_per_worker, r.custom_resources)] * r.num_workers
        + [_bundle(t.cpus, t.gpus, t.custom_resources)]
        + [_bundle(tr.cpus_per_worker, tr.gpus_per_worker, tr.custom_resources)] * tr.num_workers
    )


def placement_strategy(cfg: RunConfig) -> str:
    if cfg.resources.placement != "auto":
        return str(cfg.resources.placement)
    return "PACK" if cfg.resources.layout == "colocated" else "SPREAD"


def _bundle(cpus: float, gpus: float, custom: dict[str, float]) -> dict[str, float]:
    return {
        "CPU": cpus,
        **({"GPU": gpus} if gpus else {}),
        **{k: float(v) for k, v in custom.items()},
    }


def split(items: list, parts: int) -> list[list]:
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
