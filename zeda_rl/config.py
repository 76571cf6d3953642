"""Typed run configuration; the Hydra YAML under conf/ mirrors these dataclasses.

Fields with a fixed set of values are ``StrEnum``s: OmegaConf refuses any other value when
the config is composed, naming the field and the choices (a member compares and formats as
its string). Values whose range is checked against other fields are in validation.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

from zeda_rl.families import FAMILY_NAMES
from zeda_rl.losses.group_aux_loss import GroupAuxLossConfig


def _choices(name: str, values: tuple[str, ...]) -> type[StrEnum]:
    return StrEnum(name, {v: v for v in values}, module=__name__)


ModelFamily = _choices("ModelFamily", FAMILY_NAMES)
ZeroExpertType = _choices("ZeroExpertType", ("zero", "copy"))
EvalSuite = _choices("EvalSuite", ("tiny", "full", "benchmarks"))
EvalBackend = _choices("EvalBackend", ("vllm", "hf"))
TrainerBackendName = _choices("TrainerBackendName", ("torch", "megatron"))
Stage2Loss = _choices("Stage2Loss", ("opd", "topk_kl"))
KlPositions = _choices("KlPositions", ("response", "all"))
ExpertsBackend = _choices("ExpertsBackend", ("auto", "torch", "triton", "te"))
WEIGHT_SYNC_METHODS = ("object_store", "gloo", "nccl", "ipc")
WeightSyncMethod = _choices("WeightSyncMethod", WEIGHT_SYNC_METHODS)
WandbMode = _choices("WandbMode", ("offline", "online", "disabled"))
Layout = _choices("Layout", ("colocated", "separate"))
# Ray placement-group strategies; auto: PACK for the colocated layout, SPREAD for separate.
Placement = _choices("Placement", ("auto", "PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"))


@dataclass
class ModelConfig:
    family: ModelFamily = ModelFamily.qwen3_moe
    # Mandatory ("???"): every experiment names its teacher.
    #   "teacher": the project's trained small teacher (python -m zeda_rl.pretrain), cached;
    #   "random":  a random tiny model (plumbing checks only);
    #   otherwise a Hugging Face folder of the teacher.
    source: str = "???"
    teacher_preset: str = "cpu"  # with source="teacher"
    num_zero_experts: Optional[int] = None  # default N/2  # noqa: UP045 (OmegaConf needs Optional)
    zero_expert_type: ZeroExpertType = ZeroExpertType.zero
    seed: int = 0
    # Known real shapes (zeda_rl/plan.py: qwen3_30b_a3b | glm47): what dry_run plans with
    # when no checkpoint is at hand.
    architecture: Optional[str] = None  # noqa: UP045


@dataclass
class EvalConfig:
    suite: EvalSuite = EvalSuite.tiny
    enabled: bool = True
    backend: EvalBackend = EvalBackend.vllm  # vllm: the ZEDA plugin serves; hf: transformers
    # Training-free Top-P routing baselines (zeda_rl/models/top_p.py): the teacher under
    # Top-P at each p, evaluated beside it before adaptation.
    top_p_baselines: list[float] = field(default_factory=list)
    # After adaptation: the adapted student against the teacher, Top-P at each
    # ``frontier_top_p`` and static top-K' (K' < K), all on held-out items of the prompt
    # mix's task families, pooled over response tokens (zeda_rl/eval/frontier.py).
    frontier: bool = False
    frontier_top_p: list[float] = field(default_factory=lambda: [0.9, 0.8, 0.7, 0.6, 0.5])
    frontier_items: int = 240
    # The student also at these settings of the compute dial (zero_expert_bias; 0 is the
    # student itself), each compared at its own share.
    frontier_dial: list[float] = field(default_factory=list)


@dataclass
class PromptsConfig:
    """The prompt set both stages draw from: train splits of the structured tasks."""

    # task -> prompts; set whole by each experiment (Hydra merges dicts key by key, so a
    # default here would leak into every experiment's mix). On the command line
    # `prompts.mix={gsm:512}` adds or changes a family, `prompts.mix={addition:0}` drops one.
    mix: dict[str, int] = field(default_factory=dict)
    seed: int = 0


def active_mix(mix: Mapping[str, int]) -> dict[str, int]:
    """The families of a prompt mix that contribute prompts (a count of 0 drops one)."""
    return {name: int(count) for name, count in mix.items() if count}


@dataclass
class RolloutConfig:
    """vLLM engines serving the student (zeda_rl plugin)."""

    num_workers: int = 1
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 0.0
    tensor_parallel_size: int = 1
    max_model_len: int = 1024
    kv_cache_gib: int = 1
    max_prompt_tokens: int = 1024  # for the memory plan
    temperature: float = 1.0  # stage 2 sampling (method.md section 4)
    routing_replay: bool = True  # record expert ids for R3
    # Ray custom resources each engine's bundle asks for (places the pool on the nodes
    # that offer them, e.g. {inference_node: 1}).
    custom_resources: dict[str, float] = field(default_factory=dict)


@dataclass
class TeacherPoolConfig:
    """The frozen teacher in vLLM: stage-1 responses and stage-2 scoring."""

    cpus: float = 0.5
    gpus: float = 0.0
    tensor_parallel_size: int = 1
    max_model_len: int = 1024
    kv_cache_gib: int = 1
    temperature: float = 1.0  # must equal rollout.temperature (checked at start-up)
    custom_resources: dict[str, float] = field(default_factory=dict)  # as rollout's


@dataclass
class TrainerConfig:
    backend: TrainerBackendName = TrainerBackendName.torch
    num_workers: int = 2
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 0.0
    micro_batch_size: int = 4
    # Model parallelism of the megatron backend (validated and planned by dry_run).
    tensor_parallel: int = 1
    expert_parallel: int = 1
    pipeline_parallel: int = 1
    grad_clip: float = 1.0
    optimizer_offload: bool = False  # Adam state in CPU memory (as the ZEDA authors ran)
    # A step whose gradient norm is not finite is skipped; this many in a row stop the run
    # (its last checkpoint, written before them, intact).
    max_skipped_steps: int = 3
    # A lost rank (killed, OOM, node gone) rebuilds every rank from the newest verified
    # checkpoint, at most this many times per run; then the run fails, checkpoints intact.
    max_restarts: int = 2
    custom_resources: dict[str, float] = field(default_factory=dict)  # per rank, as rollout's


@dataclass
class Stage1Config:
    """SFT on teacher rollouts (method.md section 3)."""

    enabled: bool = True
    epochs: int = 1
    global_batch: int = 128
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.1
    max_new_tokens: int = 256


@dataclass
class Stage2Config:
    """On-policy distillation (method.md section 4)."""

    enabled: bool = True
    steps: int = 321
    prompts_per_step: int = 16
    samples_per_prompt: int = 2
    lr: float = 5e-6
    # The method's lr is constant; > 0 anneals it (cosine to ~0) over this final share of
    # the steps, a tiny-scale option against the noise of small batches.
    lr_decay_ratio: float = 0.0
    # Stage 2's own Adam settings (its moments always start fresh; method.md's values).
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.1
    ppo_clip: float = 0.2
    max_new_tokens: int = 256
    # opd: the method's one-sample teacher advantage, PPO-clipped. topk_kl: the exact reverse
    # KL over the teacher's top-k tokens plus a tail bucket at every response position
    # (losses/topk_kl.py), a tiny-scale option for the low-token regime.
    loss: Stage2Loss = Stage2Loss.opd
    teacher_top_k: int = 16  # topk_kl: how many of the teacher's log-probabilities (<= 256)
    # topk_kl: the positions it is taken over: the sampled responses', or every position
    # (the prompts' too: about 5x the signal per step at tiny scale).
    kl_positions: KlPositions = KlPositions.response


@dataclass
class KernelsConfig:
    """The MoE experts compute (zeda_kernels) in the trainer's transformers model and the
    vLLM rollouts: every backend skips zero-expert picks."""

    # auto (triton when installed, else te, on CUDA) | torch | triton | te (transformer-
    # engine >= 2.1). Applies to CUDA tensors; on CPU the torch reference always runs.
    experts_backend: ExpertsBackend = ExpertsBackend.auto


@dataclass
class WeightSyncConfig:
    # object_store (Ray object store, CPU default) | gloo | nccl | ipc (vLLM's weight
    # transfer API; gloo runs on CPU, nccl and ipc need GPUs, ipc a colocated layout)
    method: WeightSyncMethod = WeightSyncMethod.object_store
    bucket_mb: float = 64.0
    check_logprobs: bool = False  # after each sync, rollout vs trainer logprobs on a probe
    check_tolerance: float = 1e-3  # max |difference| of per-token logprobs
    # ... allowed at this share of the probe's positions (router near-ties, see check_sync)
    check_outlier_share: float = 0.1


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0: only at the end of each stage
    # Also when this many minutes have passed since the last one (0: off). A SIGTERM or
    # SIGINT (a scheduler's pre-emption) always writes one after the step in flight.
    every_minutes: float = 0.0
    keep: int = 2
    # Continue from the newest valid checkpoint under ``dir`` (default <run dir>/checkpoints;
    # relaunch with hydra.run.dir=<the run's folder> to resume it in place).
    resume: bool = False
    dir: Optional[str] = None  # noqa: UP045


@dataclass
class LoggingConfig:
    wandb: bool = True
    wandb_mode: WandbMode = WandbMode.offline
    project: str = "zeda_rl"
    # A full metrics line above the stage's progress bar every this many steps (and at the
    # last); 0: none. Every step goes to metrics.jsonl and wandb regardless.
    log_every: int = 10


@dataclass
class ResourcesConfig:
    """What the Ray cluster offers (checked against the pools before any actor starts)."""

    num_nodes: int = 1
    cpus_per_node: Optional[float] = None  # noqa: UP045  (None: this machine's cores)
    gpus_per_node: int = 0
    gpu_memory_gib: float = 141.0  # per GPU (H200); the dry-run plan checks the fit
    layout: Layout = Layout.colocated  # colocated: pools share nodes | separate: own nodes each
    # How the pools' bundles go onto nodes: STRICT_PACK keeps a colocated run on one node,
    # PACK / SPREAD let it span nodes.
    placement: Placement = Placement.auto
    timeout_s: float = 600.0  # every remote call waits at most this long
    # The pools' resources and each actor's start (its model loaded) wait at most this long.
    start_timeout_s: float = 1800.0
    # Every this many stage-2 steps the engines are pinged; one dead or silent for
    # health_check_timeout_s (a hung call) is replaced before it stalls a step. 0: off.
    health_check_every: int = 10
    health_check_timeout_s: float = 60.0


@dataclass
class RayConfig:
    """Where the run's Ray instance comes from."""

    # null: start a private local instance (and stop it at the end); "auto": join the
    # cluster this process runs in (ray start / a job submission / KubeRay); "ray://host:port":
    # Ray Client. With an existing cluster the run never starts or stops Ray and kills only
    # the actors it created.
    address: Optional[str] = None  # noqa: UP045
    namespace: Optional[str] = None  # noqa: UP045


@dataclass
class FaultsConfig:
    """Faults the run injects into itself (zeda_rl/faults.py): recovery drills and the
    fault-injection tests. Each ``<kind>:<target>@<step>``, e.g. ``kill:trainer-0@3``."""

    stage2: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    name: str = "zeda"
    model: ModelConfig = field(default_factory=ModelConfig)
    group_aux_loss: GroupAuxLossConfig = field(default_factory=GroupAuxLossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    teacher: TeacherPoolConfig = field(default_factory=TeacherPoolConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    weight_sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    seed: int = 0
    dry_run: bool = False


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(RunConfig)
    # The prompt mix is open: `prompts.mix={gsm:512}` adds or changes families on the
    # command line (Hydra merges a dict override into the node, which struct mode would
    # refuse for a family the experiment did not name).
    OmegaConf.set_struct(schema.prompts.mix, False)
    for pool in (schema.rollout, schema.teacher, schema.trainer):
        OmegaConf.set_struct(pool.custom_resources, False)  # resource names are the cluster's
    ConfigStore.instance().store(name="run_schema", node=schema)
