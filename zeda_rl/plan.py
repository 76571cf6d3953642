"""``dry_run=true``: the run's plan (pools, GPUs, parallelism, per-GPU memory) from shapes
alone, without loading weights.

Memory model (the trainer backends train in fp32, as they do on CPU):
- Trainer, per GPU: dense parameters (attention, embeddings, norms, routers, dense / shared
  FFN) / (TP x PP) and routed-expert parameters / (EP x PP); weights 4 B + grads 4 B, plus
  Adam's two moments 8 B per parameter on the GPU unless ``trainer.optimizer_offload``
  (the ZEDA authors offload it; here the moments and an fp32 copy step on the CPU).
  Activations with full recompute: each layer keeps its input (seq x micro-batch x hidden x
  4 B / TP) plus one layer recomputed in full (~68 x seq x mb x hidden B / TP: Korthikanti
  et al.'s 34 for 16-bit activations, doubled).
- vLLM engines, per GPU: weights / TP + KV cache for every sequence of a rollout step at
  full length (Qwen3 GQA: 2 x layers x kv_heads x head_dim x 2 B per token, sharded by TP;
  GLM MLA: layers x (kv_lora + rope) x 2 B per token, replicated) + 10 % runtime overhead.
- Colocated layout: the engines sleep (vLLM sleep mode) while the trainer runs, so a GPU
  needs max(trainer, its engine); separate layout: each pool has its own GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

from zeda_rl.config import RunConfig

GIB = 2**30


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str  # the model.family it belongs to
    layers: int
    dense_layers: int  # leading dense-FFN layers (GLM: 1)
    hidden: int
    vocab: int
    experts: int
    top_k: int
    moe_intermediate: int
    dense_intermediate: int
    shared_experts: int
    attention_params: int  # per layer
    kv_bytes_per_token_per_layer: int  # bf16, before tensor parallelism
    kv_sharded_by_tp: bool

    def params(self, zero_experts: int) -> dict[str, float]:
        moe_layers = self.layers - self.dense_layers
        expert = 3 * self.hidden * self.moe_intermediate
        routed = moe_layers * self.experts * expert
        dense = (
            self.layers * self.attention_params
            + self.dense_layers * 3 * self.hidden * self.dense_intermediate
            + moe_layers * self.shared_experts * expert
            + moe_layers * (self.experts + zero_experts) * self.hidden  # routers
            + 2 * self.vocab * self.hidden  # embeddings + LM head
        )
        return {"dense": float(dense), "routed": float(routed), "total": float(dense + routed)}


# method.md section 6.
ARCHITECTURES = {
    "qwen3_30b_a3b": Architecture(
        name="Qwen3-30B-A3B",
        family="qwen3_moe",
        layers=48,
        dense_layers=0,
        hidden=2048,
        vocab=151936,
        experts=128,
        top_k=8,
        moe_intermediate=768,
        dense_intermediate=0,
        shared_experts=0,
        attention_params=2048 * 32 * 128 + 2 * 2048 * 4 * 128 + 32 * 128 * 2048,
        kv_bytes_per_token_per_layer=2 * 4 * 128 * 2,
        kv_sharded_by_tp=True,
    ),
    "glm47": Architecture(
        name="GLM-4.7-Flash",
        family="glm4_moe_lite",
        layers=47,
        dense_layers=1,
        hidden=2048,
        vocab=154880,
        experts=64,
        top_k=4,
        moe_intermediate=1536,
        dense_intermediate=10240,
        shared_experts=1,
        attention_params=(
            2048 * 768  # q_a
            + 768 * 20 * (192 + 64)  # q_b
            + 2048 * (512 + 64)  # kv_a (latent + rope key)
            + 512 * 20 * (192 + 256)  # kv_b
            + 20 * 256 * 2048  # o
        ),
        kv_bytes_per_token_per_layer=(512 + 64) * 2,
        kv_sharded_by_tp=False,
    ),
}

# Per-GPU memory of the machines the plan is checked against (GiB).
MACHINES = {"8x H200": (8, 141.0), "8x H100": (8, 80.0), "4x H200": (4, 141.0)}


def plan(cfg: RunConfig, arch: Architecture, zero_experts: int) -> dict:
    """Pools, parallelism and the per-GPU memory estimate (GiB) of each pool."""
    tr, r, t, s2 = cfg.trainer, cfg.rollout, cfg.teacher, cfg.stage2
    p = arch.params(zero_experts)
    tp, ep, pp = tr.tensor_parallel, tr.expert_parallel, tr.pipeline_parallel
    trainer_gpus = tr.num_workers * max(1.0, tr.gpus_per_worker)
    if trainer_gpus % (tp * pp):
        raise ValueError(
            f"trainer: {trainer_gpus:g} GPUs are not a multiple of tensor_parallel x "
            f"pipeline_parallel = {tp * pp}"
        )
    params_gpu = p["dense"] / (tp * pp) + p["routed"] / (ep * pp)
    bytes_per_param = 8 + (0 if tr.optimizer_offload else 8)
    seq = s2.max_new_tokens + cfg.rollout.max_prompt_tokens
    mb = tr.micro_batch_size
    layers_per_stage = arch.layers / pp
    activations = (
        layers_per_stage * seq * mb * arch.hidden * 4 / tp + 68 * seq * mb * arch.hidden / tp
    )
    trainer = {
        "weights_grads": params_gpu * 8 / GIB,
        "optimizer": params_gpu * 8 / GIB if not tr.optimizer_offload else 0.0,
        "activations": activations / GIB,
    }
    trainer["total"] = params_gpu * bytes_per_param / GIB + trainer["activations"]

    def engine(tp_engine: int, sequences: int) -> dict:
        weights = p["total"] * 2 / tp_engine
        per_token = arch.layers * arch.kv_bytes_per_token_per_layer
        if arch.kv_sharded_by_tp:
            per_token /= tp_engine
        kv = sequences * seq * per_token
        return {
            "weights": weights / GIB,
            "kv_cache": kv / GIB,
            "total": 1.1 * (weights + kv) / GIB,
        }

    per_rollout = -(-s2.prompts_per_step * s2.samples_per_prompt // r.num_workers)
    rollout = engine(r.tensor_parallel_size, per_rollout)
    teacher = engine(t.tensor_parallel_size, s2.prompts_per_step * s2.samples_per_prompt)
    engine_gpus = r.num_workers * r.tensor_parallel_size + t.tensor_parallel_size
    # Colocated: each engine shard shares a GPU with a (sleeping) trainer rank; engines get
    # disjoint GPUs. Separate: every pool has its own GPUs.
    colocated = cfg.resources.layout == "colocated"
    gpus_needed = max(trainer_gpus, engine_gpus) if colocated else trainer_gpus + engine_gpus
    peak = max(trainer["total"], rollout["total"], teacher["total"])
    res = cfg.resources
    machines = {name: (n * res.num_nodes, mem) for name, (n, mem) in MACHINES.items()}
    if res.gpus_per_node:  # the cluster this config describes
        machines[f"resources {res.num_nodes}x{res.gpus_per_node}"] = (
            res.num_nodes * res.gpus_per_node,
            res.gpu_memory_gib,
        )
    fits = {}
    for name, (n, mem) in machines.items():
        usable = mem * 0.92  # what a framework can allocate of a GPU's memory
        reasons = []
        if gpus_needed > n:
            reasons.append(f"needs {gpus_needed:g} GPUs")
        if peak > usable:
            reasons.append(f"peak {peak:.1f} GiB > {usable:.1f} GiB usable")
        fits[name] = {"fits": not reasons, "gpus": n, "gib": mem, "why_not": reasons}
    return {
        "architecture": arch.name,
        "parameters_billion": {k: round(v / 1e9, 2) for k, v in p.items()},
        "layout": cfg.resources.layout,
        "gpus_needed": gpus_needed,
        "trainer": {"ranks": tr.num_workers, "tp": tp, "ep": ep, "pp": pp, "gib": trainer},
        "rollout": {"workers": r.num_workers, "tp": r.tensor_parallel_size, "gib": rollout},
        "teacher": {"tp": t.tensor_parallel_size, "gib": teacher},
        "peak_gib_per_gpu": peak,
        "machines": fits,
    }


def format_plan(result: dict) -> str:
    def gib(d: dict) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in d.items())

    lines = [
        f"plan: {result['architecture']} ({result['parameters_billion']['total']}B parameters, "
        f"{result['parameters_billion']['routed']}B in routed experts), layout {result['layout']}, "
        f"{result['gpus_needed']} GPUs",
        f"  trainer  {result['trainer']['ranks']} ranks, TP{result['trainer']['tp']} "
        f"EP{result['trainer']['ep']} PP{result['trainer']['pp']}: GiB/GPU {gib(result['trainer']['gib'])}",
        f"  rollout  {result['rollout']['workers']} engine(s) x TP{result['rollout']['tp']}: "
        f"GiB/GPU {gib(result['rollout']['gib'])}",
        f"  teacher  TP{result['teacher']['tp']}: GiB/GPU {gib(result['teacher']['gib'])}",
        f"  peak per GPU: {result['peak_gib_per_gpu']:.1f} GiB",
    ]
    for name, m in result["machines"].items():
        verdict = "fits" if m["fits"] else "does NOT fit: " + "; ".join(m["why_not"])
        lines.append(f"  {name} ({m['gib']:g} GiB each): {verdict}")
    return "\n".join(lines)
