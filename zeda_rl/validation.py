"""Every invalid configuration fails here, before any model is built or actor started, with
a message naming the field."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from zeda_rl.config import RunConfig, active_mix

if TYPE_CHECKING:
    from zeda_rl.faults import FaultPlan

LOCAL_SOURCES = ("teacher", "random")


class ConfigError(ValueError):
    """A config the run refuses before any work starts; the message names the field."""


# topk_kl's teacher log-probabilities per position: 256 already costs ~5x the scoring of 16.
MAX_TEACHER_TOP_K = 256


def _fail(message: str) -> None:
    raise ConfigError(message)


def fault_plan(cfg: RunConfig) -> FaultPlan:
    """The run's injected faults (``faults.stage2``), each checked against the pools."""
    from zeda_rl.faults import FaultPlan, parse_fault

    faults = []
    for spec in cfg.faults.stage2:
        try:
            faults.append(parse_fault(spec, cfg.rollout.num_workers, cfg.trainer.num_workers))
        except ValueError as err:
            _fail(f"faults.stage2: {err}")
    return FaultPlan(faults)


def model_shape(cfg: RunConfig) -> dict | None:
    """Experts, top-k of the teacher (from its config.json or the teacher preset)."""
    if cfg.model.source == "teacher":
        from zeda_rl.pretrain.presets import PRESETS

        preset = PRESETS[cfg.model.teacher_preset].for_family(cfg.model.family)
        return {"experts": preset.num_experts, "top_k": preset.top_k}
    if cfg.model.source == "random":
        return None
    config = json.loads((Path(cfg.model.source) / "config.json").read_text())
    experts = (
        config.get("n_routed_experts")
        or config.get("num_experts")
        or config.get("num_local_experts")
    )
    return {"experts": experts, "top_k": config.get("num_experts_per_tok")}


def validate(cfg: RunConfig) -> None:
    from zeda_rl.data.tasks import TASKS
    from zeda_rl.plan import ARCHITECTURES
    from zeda_rl.pretrain.presets import PRESETS

    m = cfg.model
    if m.architecture is not None and m.architecture not in ARCHITECTURES:
        _fail(f"model.architecture={m.architecture!r}: one of {sorted(ARCHITECTURES)} or null")
    if m.architecture is not None and ARCHITECTURES[m.architecture].family != m.family:
        _fail(
            f"model.architecture={m.architecture!r} is a "
            f"{ARCHITECTURES[m.architecture].family} model, but model.family='{m.family}'"
        )
    planning_only = cfg.dry_run and not m.source and m.architecture is not None
    if not planning_only and (
        m.source not in LOCAL_SOURCES and not (Path(m.source) / "config.json").is_file()
    ):
        _fail(
            f"model.source={m.source!r}: not {LOCAL_SOURCES} and no Hugging Face checkpoint there"
        )
    if m.source == "teacher" and m.teacher_preset not in PRESETS:
        _fail(f"model.teacher_preset={m.teacher_preset!r}: choose one of {sorted(PRESETS)}")
    if m.num_zero_experts is not None and m.num_zero_experts < 1:
        _fail(f"model.num_zero_experts={m.num_zero_experts} must be >= 1")
    for name in ("top_p_baselines", "frontier_top_p"):
        values = list(getattr(cfg.eval, name))
        if bad_p := [p for p in values if not 0 < p <= 1]:
            _fail(f"eval.{name}={values}: {bad_p} not in (0, 1]")
    if any(b == 0 or abs(b) > 10 for b in cfg.eval.frontier_dial):
        _fail(
            f"eval.frontier_dial={list(cfg.eval.frontier_dial)}: nonzero biases within "
            "[-10, 10] (0 is the student itself, always evaluated)"
        )
    if cfg.eval.frontier and cfg.eval.frontier_items < len(active_mix(cfg.prompts.mix)):
        _fail(f"eval.frontier_items={cfg.eval.frontier_items}: fewer than one per family")

    if planning_only:
        arch = ARCHITECTURES[m.architecture]
        shape = {"experts": arch.experts, "top_k": arch.top_k}
    else:
        shape = model_shape(cfg)
    if shape is not None and shape["experts"] and shape["top_k"]:
        if shape["top_k"] > shape["experts"]:
            _fail(
                f"the teacher's num_experts_per_tok={shape['top_k']} exceeds its "
                f"{shape['experts']} experts"
            )
        ep = cfg.trainer.expert_parallel
        if ep < 1 or shape["experts"] % ep:
            _fail(f"trainer.expert_parallel={ep} must divide the {shape['experts']} routed experts")

    unknown = sorted(set(cfg.prompts.mix) - set(TASKS))
    if unknown:
        _fail(f"prompts.mix: unknown tasks {unknown}; available {sorted(TASKS)}")
    if any(n < 0 for n in cfg.prompts.mix.values()) or sum(cfg.prompts.mix.values()) < 1:
        _fail(f"prompts.mix={dict(cfg.prompts.mix)}: needs at least one prompt, no negative counts")

    r, t, tr = cfg.rollout, cfg.teacher, cfg.trainer
    if r.temperature != t.temperature:
        _fail(
            f"rollout.temperature={r.temperature} != teacher.temperature={t.temperature}: the "
            "teacher must score the student's samples at the temperature they were drawn at"
        )
    if r.temperature <= 0:
        _fail(f"rollout.temperature={r.temperature} must be > 0 (on-policy sampling)")
    if tr.backend == "megatron":
        if tr.num_workers % tr.expert_parallel:
            _fail(
                f"trainer.expert_parallel={tr.expert_parallel} must divide trainer.num_workers="
                f"{tr.num_workers} (the ranks split into expert-parallel groups)"
            )
        # dry_run may plan layouts that this backend cannot run yet.
        if not cfg.dry_run and (tr.tensor_parallel != 1 or tr.pipeline_parallel != 1):
            _fail(
                f"trainer.tensor_parallel={tr.tensor_parallel}, trainer.pipeline_parallel="
                f"{tr.pipeline_parallel}: the megatron backend runs TP = PP = 1 (megatron's local "
                "modules train MoE with TP > 1 only under sequence parallelism, which needs "
                "transformer-engine); scale with trainer.expert_parallel"
            )
        if m.zero_expert_type != "zero":
            _fail(
                f"model.zero_expert_type='{m.zero_expert_type}': the megatron backend "
                "implements 'zero' experts (use trainer.backend=torch for 'copy')"
            )
    for name, value in (
        ("rollout.num_workers", r.num_workers),
        ("trainer.num_workers", tr.num_workers),
        ("trainer.micro_batch_size", tr.micro_batch_size),
        ("rollout.tensor_parallel_size", r.tensor_parallel_size),
        ("teacher.tensor_parallel_size", t.tensor_parallel_size),
        ("stage1.epochs", cfg.stage1.epochs),
        ("stage1.global_batch", cfg.stage1.global_batch),
        ("stage2.prompts_per_step", cfg.stage2.prompts_per_step),
        ("stage2.samples_per_prompt", cfg.stage2.samples_per_prompt),
        ("checkpoint.keep", cfg.checkpoint.keep),
    ):
        if value < 1:
            _fail(f"{name}={value} must be >= 1")
    res = cfg.resources
    for name, value in (
        ("stage2.ppo_clip", cfg.stage2.ppo_clip),
        ("trainer.grad_clip", tr.grad_clip),
        ("resources.timeout_s", res.timeout_s),
        ("resources.start_timeout_s", res.start_timeout_s),
        ("resources.gpu_memory_gib", res.gpu_memory_gib),
        ("weight_sync.check_tolerance", cfg.weight_sync.check_tolerance),
    ):
        if not value > 0:
            _fail(f"{name}={value} must be > 0")
    for name, value in (
        ("rollout.kv_cache_gib", r.kv_cache_gib),
        ("teacher.kv_cache_gib", t.kv_cache_gib),
    ):
        if value < 0:
            _fail(f"{name}={value} must be >= 0 (0: the engine sizes its KV cache itself)")
    if res.num_nodes < 1:
        _fail(f"resources.num_nodes={res.num_nodes} must be >= 1")
    if res.cpus_per_node is not None and not res.cpus_per_node > 0:
        _fail(f"resources.cpus_per_node={res.cpus_per_node} must be > 0 (or null: the cores)")
    if cfg.seed < 0:
        _fail(f"seed={cfg.seed} must be >= 0")
    for name, betas in (("stage1.betas", cfg.stage1.betas), ("stage2.betas", cfg.stage2.betas)):
        if not (len(betas) == 2 and all(0 <= b < 1 for b in betas)):
            _fail(f"{name}={list(betas)}: two values in [0, 1)")
    for name, decay in (
        ("stage1.weight_decay", cfg.stage1.weight_decay),
        ("stage2.weight_decay", cfg.stage2.weight_decay),
    ):
        if decay is not None and decay < 0:
            _fail(f"{name}={decay} must be >= 0")
    for name, lr in (("stage1.lr", cfg.stage1.lr), ("stage2.lr", cfg.stage2.lr)):
        if not lr > 0:
            _fail(f"{name}={lr}: a learning rate > 0")
    for name, new_tokens, engine, context in (
        ("stage1.max_new_tokens", cfg.stage1.max_new_tokens, "teacher", cfg.teacher.max_model_len),
        ("stage2.max_new_tokens", cfg.stage2.max_new_tokens, "rollout", cfg.rollout.max_model_len),
    ):
        if not 0 < new_tokens < context:
            _fail(
                f"{name}={new_tokens}: between 1 and {engine}.max_model_len={context} - 1 "
                "(the prompt needs room in the context)"
            )
    if cfg.stage2.steps < 0 or cfg.checkpoint.every_steps < 0:
        _fail("stage2.steps and checkpoint.every_steps must be >= 0")
    if cfg.stage1.global_batch < tr.num_workers:
        _fail(
            f"stage1.global_batch={cfg.stage1.global_batch} < trainer.num_workers="
            f"{tr.num_workers}: every rank needs samples"
        )
    per_step = cfg.stage2.prompts_per_step * cfg.stage2.samples_per_prompt
    if per_step < tr.num_workers or per_step < r.num_workers:
        _fail(
            f"stage2.prompts_per_step x samples_per_prompt = {per_step} is smaller than the "
            f"rollout ({r.num_workers}) or trainer ({tr.num_workers}) pool"
        )
    if cfg.stage2.loss == "topk_kl" and not 1 <= cfg.stage2.teacher_top_k <= MAX_TEACHER_TOP_K:
        _fail(
            f"stage2.teacher_top_k={cfg.stage2.teacher_top_k}: between 1 and "
            f"{MAX_TEACHER_TOP_K} (vLLM hands each log-probability back as a Python object: "
            "scoring time grows with k, docs/benchmarks.md)"
        )
    if not 0 <= cfg.weight_sync.check_outlier_share < 1:
        _fail(
            f"weight_sync.check_outlier_share={cfg.weight_sync.check_outlier_share} must be "
            "in [0, 1)"
        )
    if not 0 <= cfg.stage1.warmup_ratio < 1:
        _fail(f"stage1.warmup_ratio={cfg.stage1.warmup_ratio} must be in [0, 1)")
    if not 0 <= cfg.stage2.lr_decay_ratio <= 1:
        _fail(f"stage2.lr_decay_ratio={cfg.stage2.lr_decay_ratio} must be in [0, 1]")
    if cfg.resources.health_check_every < 0 or cfg.resources.health_check_timeout_s <= 0:
        _fail(
            f"resources.health_check_every={cfg.resources.health_check_every} (steps >= 0) / "
            f"health_check_timeout_s={cfg.resources.health_check_timeout_s} (seconds > 0)"
        )
    if cfg.checkpoint.every_minutes < 0:
        _fail(f"checkpoint.every_minutes={cfg.checkpoint.every_minutes}: minutes >= 0 (0: off)")
    if cfg.trainer.max_restarts < 0:
        _fail(f"trainer.max_restarts={cfg.trainer.max_restarts}: a count >= 0 (0: none)")
    if cfg.trainer.max_skipped_steps < 1:
        _fail(f"trainer.max_skipped_steps={cfg.trainer.max_skipped_steps}: a step count >= 1")
    if cfg.logging.log_every < 0:
        _fail(f"logging.log_every={cfg.logging.log_every}: a step count >= 0 (0: no lines)")
    fault_plan(cfg)

    res = cfg.resources
    cpus = r.num_workers * r.cpus_per_worker + t.cpus + tr.num_workers * tr.cpus_per_worker
    trainer_gpus = tr.num_workers * tr.gpus_per_worker
    engine_gpus = r.num_workers * r.gpus_per_worker + t.gpus
    # Colocated: the engines share the trainer's GPUs (they sleep while it trains).
    colocated = res.layout == "colocated"
    gpus = max(trainer_gpus, engine_gpus) if colocated else trainer_gpus + engine_gpus
    have_cpus = (res.cpus_per_node or os.cpu_count() or 1) * res.num_nodes
    have_gpus = res.gpus_per_node * res.num_nodes
    # Joining a cluster (ray.address): its live nodes are checked when the run connects
    # (validate_cluster), not this machine's cores.
    local = cfg.ray.address is None
    if local and cpus > have_cpus + 1e-9:
        _fail(
            f"the pools ask for {cpus:g} CPUs (rollout {r.num_workers}x{r.cpus_per_worker:g}, "
            f"teacher {t.cpus:g}, trainer {tr.num_workers}x{tr.cpus_per_worker:g}) but "
            f"resources offer {have_cpus:g}"
        )
    if local and gpus > have_gpus + 1e-9:
        _fail(
            f"the pools ask for {gpus:g} GPUs ({res.layout} layout: trainer {trainer_gpus:g}, "
            f"engines {engine_gpus:g}) but resources offer {have_gpus} ({res.num_nodes} node(s) "
            f"x resources.gpus_per_node={res.gpus_per_node})"
        )
    for name, tp, per in (
        ("rollout", r.tensor_parallel_size, r.gpus_per_worker),
        ("teacher", t.tensor_parallel_size, t.gpus),
    ):
        if tp > 1 and per < tp:
            _fail(f"{name}.tensor_parallel_size={tp} needs {tp} GPUs per engine, got {per:g}")
    ws = cfg.weight_sync
    if ws.method in ("nccl", "ipc") and (tr.gpus_per_worker <= 0 or r.gpus_per_worker <= 0):
        _fail(
            f"weight_sync.method='{ws.method}' moves CUDA tensors: trainer.gpus_per_worker and "
            "rollout.gpus_per_worker must be > 0 (on CPU use 'gloo' or 'object_store')"
        )
    if ws.method == "ipc" and (not colocated or res.num_nodes != 1):
        _fail(
            "weight_sync.method='ipc' shares GPU memory between processes: it needs "
            "resources.layout=colocated on one node (use 'nccl' across GPUs or nodes)"
        )
    if ws.bucket_mb <= 0:
        _fail(f"weight_sync.bucket_mb={ws.bucket_mb} must be > 0")
    _validate_kernels(cfg)
    if cfg.checkpoint.resume and cfg.checkpoint.dir and not Path(cfg.checkpoint.dir).is_dir():
        _fail(f"checkpoint.dir={cfg.checkpoint.dir!r} does not exist (checkpoint.resume=true)")


def _validate_kernels(cfg: RunConfig) -> None:
    from zeda_kernels import backend_unavailable

    name = cfg.kernels.experts_backend
    if name in ("auto", "torch"):
        return
    why = backend_unavailable(name, cuda=True)
    if why is not None:
        _fail(f"kernels.experts_backend='{name}': {why}")
    if cfg.rollout.gpus_per_worker <= 0 and cfg.trainer.gpus_per_worker <= 0:
        _fail(
            f"kernels.experts_backend='{name}' runs on CUDA tensors, but neither the rollouts "
            "nor the trainer have GPUs (rollout.gpus_per_worker, trainer.gpus_per_worker); "
            "on CPU the torch reference runs: use 'auto' or 'torch'"
        )


def validate_cluster(cfg: RunConfig, nodes: list[dict[str, float]]) -> None:
    """The pools fit the live cluster (``nodes``: each alive node's resources, as
    ``ray.nodes()`` reports them), checked before any actor starts."""
    from zeda_rl.pools.placement import placement_strategy, pool_bundles

    bundles = pool_bundles(cfg)
    total: dict[str, float] = {}
    for node in nodes:
        for name, amount in node.items():
            total[name] = total.get(name, 0.0) + amount
    have = ", ".join(
        f"{k} {v:g}"
        for k, v in sorted(total.items())
        if not k.startswith("node:") and not k.endswith("memory")
    )
    if len(nodes) < cfg.resources.num_nodes:
        _fail(
            f"resources.num_nodes={cfg.resources.num_nodes} but the Ray cluster has "
            f"{len(nodes)} node(s) ({have})"
        )
    for name in sorted({k for b in bundles for k in b}):
        need = sum(b.get(name, 0.0) for b in bundles)
        if need > total.get(name, 0.0) + 1e-9:
            _fail(
                f"the pools ask for {need:g} {name} (rollout, teacher, trainer bundles: "
                f"{_asks(cfg, name)}) but the Ray cluster has {total.get(name, 0.0):g} "
                f"({len(nodes)} node(s): {have})"
            )
    fits = [
        any(all(n.get(k, 0.0) + 1e-9 >= v for k, v in b.items()) for n in nodes) for b in bundles
    ]
    if not all(fits):
        bundle = bundles[fits.index(False)]
        _fail(f"no node of the Ray cluster holds one actor's bundle {bundle} ({have})")
    needs = {k: sum(b.get(k, 0.0) for b in bundles) for k in total}
    one_node = any(all(n.get(k, 0.0) + 1e-9 >= v for k, v in needs.items()) for n in nodes)
    if placement_strategy(cfg) == "STRICT_PACK" and not one_node:
        _fail(
            "resources.placement=STRICT_PACK puts every pool on one node, but no node of "
            f"the Ray cluster holds them all ({have}); use PACK or SPREAD"
        )


def _asks(cfg: RunConfig, name: str) -> str:
    r, t, tr = cfg.rollout, cfg.teacher, cfg.trainer
    per = {
        "CPU": (r.cpus_per_worker, t.cpus, tr.cpus_per_worker),
        "GPU": (r.gpus_per_worker, t.gpus, tr.gpus_per_worker),
    }.get(
        name,
        tuple(p.custom_resources.get(name, 0.0) for p in (r, t, tr)),
    )
    return f"{r.num_workers}x{per[0]:g}, {per[1]:g}, {tr.num_workers}x{per[2]:g}"


def validate_prompt_lengths(cfg: RunConfig, longest_prompt: int) -> None:
    """Every prompt with its longest response fits the engines' context (checked once the
    prompts are tokenized, before any actor starts)."""
    stages = [("stage1", cfg.stage1), ("stage2", cfg.stage2)]
    for stage, s in stages:
        if not s.enabled:
            continue
        for pool in ("rollout", "teacher"):
            limit = getattr(cfg, pool).max_model_len
            if stage == "stage1" and pool == "rollout":
                continue  # stage 1 generates with the teacher only
            if longest_prompt + s.max_new_tokens > limit:
                _fail(
                    f"the longest prompt ({longest_prompt} tokens) + {stage}.max_new_tokens="
                    f"{s.max_new_tokens} exceeds {pool}.max_model_len={limit}"
                )
