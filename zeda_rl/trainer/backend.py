"""The trainer backend interface, and the torch backend: the transformers ZEDA model trained
data-parallel with torch.distributed (gloo on CPU, NCCL on GPU).

Each trainer worker (one Ray actor per rank, zeda_rl/pools/trainer.py) owns one backend.
The controller hands every rank its share of the step's samples plus the step's global
response-token count, so per-token averages are exact across ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist

from zeda_rl.config import TRAINER_BACKENDS
from zeda_rl.losses.group_aux_loss import GroupAuxLossConfig, group_aux_loss
from zeda_rl.losses.opd_loss import opd_policy_loss, response_nll, token_logprobs
from zeda_rl.losses.topk_kl import topk_reverse_kl
from zeda_rl.trainer.batch import Batch, Sample, collate, pad_batch

# sft: response NLL (stage 1); opd: the method's PPO-clipped one-sample OPD (stage 2);
# topk_kl: exact reverse KL over the teacher's top-k + tail, on the student's samples.
OBJECTIVES = ("sft", "opd", "topk_kl")
ON_POLICY = ("opd", "topk_kl")
MAX_LOCKSTEP_BATCHES = 256  # micro-batches per rank and step a lockstep backend can align


@dataclass
class OptimConfig:
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    micro_batch_size: int = 4
    # Adam's fp32 master weights and moments in CPU memory, stepped there and copied back
    # (ZeRO-Offload's idea, as the ZEDA authors ran; trainer.optimizer_offload).
    offload: bool = False


class TrainerBackend(Protocol):
    """What the controller needs from any trainer (torch here; Megatron in a later issue)."""

    def train_step(
        self, samples: list[Sample], *, objective: str, lr: float, global_tokens: int
    ) -> dict[str, float]: ...

    def logprobs(
        self, samples: list[Sample], temperature: float, replay: bool | None = None
    ) -> list[list[float]]: ...

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]: ...

    def save(self, directory: Path) -> None: ...

    def load_optimizer(self, directory: Path) -> None: ...

    def reset_optimizer(
        self, betas: tuple[float, float] | None = None, weight_decay: float | None = None
    ) -> None: ...


class StepBackend:
    """The step logic every backend shares: micro-batches, response NLL, PPO-clipped OPD or
    the top-k reverse KL, the Group Auxiliary Loss from the routers' records, metrics all-reduced over ranks.

    A backend provides ``model`` and ``optimizer`` and implements ``_forward`` (logits and
    the MoE layers' routing records of one batch) and ``_gradient_groups`` (which gradients
    are summed over which process group). ``lockstep`` backends (expert parallelism: every
    forward and backward is a collective) run the same number of equally shaped
    micro-batches on every rank, padding with empty ones.
    """

    lockstep = False

    def _setup(self, *, rank, world_size, optim, gal, temperature, routing_replay, ppo_clip):
        # One GPU per rank when there are GPUs (a Ray actor sees only its own).
        if torch.cuda.is_available():
            torch.cuda.set_device(rank % torch.cuda.device_count())
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        self.rank, self.world_size = rank, world_size
        self.optim, self.gal, self.temperature = optim, gal, temperature
        self.routing_replay = routing_replay
        self.ppo_clip = ppo_clip
        self.step = 0

    def _routing_mask(self, batch: Batch) -> torch.Tensor | None:
        """The positions the GAL statistics (and the logged zero ratio) count: None for every
        valid token (the method), the response-generating positions for ``tokens=response``."""
        return batch.loss_mask if self.gal.tokens == "response" else None

    def _make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """AdamW over ``params``, or with ``optim.offload`` over fp32 CPU copies of them
        (``_optimizer_step`` moves gradients there and the result back)."""
        self._trained = params
        if self.optim.offload:
            pin = torch.cuda.is_available()
            self._masters = [
                p.detach().to("cpu", torch.float32, copy=True).pin_memory()
                if pin
                else p.detach().to("cpu", torch.float32, copy=True)
                for p in params
            ]
            params = self._masters
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.optim.lr,
            betas=tuple(self.optim.betas),
        )

    def _forward(self, batch: Batch) -> tuple[torch.Tensor, list]:
        raise NotImplementedError

    def _gradient_groups(self) -> list[tuple[list[torch.nn.Parameter], object]]:
        raise NotImplementedError

    # -- training --------------------------------------------------------------------------

    def _batches(self, samples: list[Sample], replay: bool) -> list[tuple[Batch, int]]:
        """Micro-batches with the number of this rank's samples in each (their first rows)."""
        size = self.optim.micro_batch_size
        layers = self.moe_layers if replay else None
        batches = [
            collate(samples[i : i + size], pad_id=self.pad_id, moe_layers=layers)
            for i in range(0, len(samples), size)
        ]
        if replay and any(b.replay is None for b in batches):
            raise ValueError("routing replay is on but a sample carries no rollout routes")
        rows = [b.input_ids.shape[0] for b in batches]
        if not self.lockstep or self.world_size == 1:
            return list(zip(batches, rows, strict=True))
        # Same count and shapes on every rank: pad each batch to the largest, and add empty
        # batches where a rank has fewer.
        shapes = torch.zeros(self.world_size, 1 + 2 * MAX_LOCKSTEP_BATCHES, dtype=torch.long)
        if len(batches) > MAX_LOCKSTEP_BATCHES:
            raise ValueError(f"more than {MAX_LOCKSTEP_BATCHES} micro-batches on one rank")
        shapes[self.rank, 0] = len(batches)
        for i, b in enumerate(batches):
            shapes[self.rank, 1 + 2 * i : 3 + 2 * i] = torch.tensor(b.input_ids.shape)
        shapes = self._all_reduce_sum(shapes).amax(0)
        count = int(shapes[0])
        return [
            (
                pad_batch(
                    batches[i] if i < len(batches) else None,
                    rows=int(shapes[1 + 2 * i]),
                    length=int(shapes[2 + 2 * i]),
                    pad_id=self.pad_id,
                    moe_layers=layers,
                    top_k=self.top_k,
                ),
                rows[i] if i < len(batches) else 0,
            )
            for i in range(count)
        ]

    def train_step(
        self, samples: list[Sample], *, objective: str, lr: float, global_tokens: int
    ) -> dict[str, float]:
        """One optimizer step over this rank's ``samples`` (gradients summed across ranks).

        ``global_tokens``: response tokens of the whole step over all ranks, the divisor
        of every per-token average.
        """
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r}: choose one of {OBJECTIVES}")
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for param in self._trained:  # with offload the optimizer holds other tensors
            param.grad = None
        batches = self._batches(samples, replay=objective in ON_POLICY and self.routing_replay)
        # GAL is a per-micro-batch loss: average it over every real micro-batch of the step.
        real = sum(1 for _, rows in batches if rows)
        total_micro = float(self._all_reduce_sum(torch.tensor(float(real))))
        sums: dict[str, float] = {}
        zero_ratio_per_layer = torch.zeros(len(self.moe_layers))
        routed_tokens = 0.0
        for batch, rows in batches:
            batch = batch.to(self.device)
            weight = 1.0 if rows else 0.0  # an empty lockstep batch only keeps ranks in step
            logits, routing = self._forward(batch)
            logp = token_logprobs(logits, batch.targets, self.temperature)
            if objective == "sft":
                main = response_nll(logp, batch.loss_mask, normalizer=global_tokens)
                stats = {"nll_sum": float(main.detach()) * global_tokens}
            elif objective == "topk_kl":
                main, stats = self._topk_kl(logits, logp, batch, rows, global_tokens)
            else:
                if batch.rollout_logprobs is None or batch.teacher_logprobs is None:
                    raise ValueError("on-policy distillation needs rollout and teacher logprobs")
                main, stats = opd_policy_loss(
                    logp,
                    batch.rollout_logprobs,
                    batch.teacher_logprobs,
                    batch.loss_mask,
                    clip=self.ppo_clip,
                    normalizer=global_tokens,
                )
            gal = group_aux_loss(
                routing,
                num_real=self.num_real,
                num_zero=self.num_zero,
                top_k=self.top_k,
                config=self.gal,
            )
            (main + gal * (weight / total_micro)).backward()
            stats["gal_sum"] = float(gal.detach()) * weight
            tokens = sum(r.num_tokens for r in routing[:1]) * weight
            routed_tokens += tokens
            zero_ratio_per_layer += torch.tensor([float(r.zero_ratio) * tokens for r in routing])
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
        grad_norm = self._reduce_gradients()
        self._optimizer_step()
        self.step += 1
        return self._step_metrics(
            sums,
            zero_ratio_per_layer,
            routed_tokens,
            total_micro,
            global_tokens,
            grad_norm,
            objective,
        )

    def _topk_kl(self, logits, logp, batch: Batch, rows: int, global_tokens: int):
        """The top-k reverse KL of one micro-batch, and the rollout-vs-trainer log-prob gap
        of the sampled tokens (the same train/serve check as OPD's)."""
        keys = (
            "reverse_kl_sum",
            "teacher_tail_sum",
            "train_rollout_logprob_abs_diff_sum",
            "response_tokens_sum",
        )
        if not rows:  # an empty lockstep batch: no teacher data, zero loss, same keys
            return logits.sum() * 0.0, dict.fromkeys(keys, 0.0)
        if batch.teacher_topk_ids is None or batch.rollout_logprobs is None:
            raise ValueError("topk_kl needs the teacher's top-k and the rollout logprobs")
        # ``global_tokens`` counts the positions with a teacher top-k (responses, or every
        # fed position with ``stage2.kl_positions=all``).
        main, stats = topk_reverse_kl(
            logits,
            batch.teacher_topk_ids,
            batch.teacher_topk_logprobs,
            batch.teacher_topk_mask,
            normalizer=global_tokens,
        )
        mask = batch.loss_mask.to(logp.dtype)
        gap = ((logp.detach() - batch.rollout_logprobs).abs() * mask).sum()
        stats["train_rollout_logprob_abs_diff_sum"] = float(gap)
        stats["response_tokens_sum"] = float(mask.sum())
        return main, {k: stats[k] for k in keys}

    def _optimizer_step(self) -> None:
        if not self.optim.offload:
            self.optimizer.step()
            return
        for master, param in zip(self._masters, self._trained, strict=True):
            master.grad = param.grad.detach().to("cpu", torch.float32)
        self.optimizer.step()
        with torch.no_grad():
            for master, param in zip(self._masters, self._trained, strict=True):
                param.copy_(master, non_blocking=True)
                master.grad = None
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _step_metrics(
        self, sums, zero_per_layer, routed_tokens, total_micro, global_tokens, grad_norm, objective
    ):
        keys = sorted(sums)
        local = torch.tensor([sums[k] for k in keys] + [routed_tokens] + zero_per_layer.tolist())
        total = self._all_reduce_sum(local)
        reduced = dict(zip(keys, total[: len(keys)].tolist(), strict=True))
        routed = max(total[len(keys)].item(), 1.0)
        per_layer = (total[len(keys) + 1 :] / routed).tolist()
        metrics = {
            "gal": reduced["gal_sum"] / total_micro,
            "grad_norm": grad_norm,
            "zero_ratio": sum(per_layer) / len(per_layer),
            **{
                f"zero_ratio/layer{layer}": v
                for layer, v in zip(self.moe_layers, per_layer, strict=True)
            },
        }
        if objective == "sft":
            metrics["nll"] = reduced["nll_sum"] / global_tokens
        else:
            metrics["reverse_kl"] = reduced["reverse_kl_sum"] / global_tokens
            response_tokens = float(global_tokens)
            if objective == "opd":
                metrics["clip_fraction"] = reduced["clipped_sum"] / global_tokens
            else:
                metrics["teacher_tail"] = reduced["teacher_tail_sum"] / global_tokens
                response_tokens = max(reduced["response_tokens_sum"], 1.0)
            metrics["train_rollout_logprob_diff"] = (
                reduced["train_rollout_logprob_abs_diff_sum"] / response_tokens
            )
        return metrics

    def _all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over all ranks (on the backend's device: NCCL reduces CUDA tensors only)."""
        if self.world_size == 1:
            return tensor
        on_device = tensor.to(self.device)
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
        return on_device.to(tensor.device)

    def _reduce_gradients(self) -> float:
        """Sum gradients over their groups (the losses are already global averages), one flat
        buffer per group to keep gloo's per-message overhead low; then clip."""
        params = []
        for group_params, group in self._gradient_groups():
            for p in group_params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            params += group_params
            if group is None or dist.get_world_size(group) == 1 or not group_params:
                continue
            flat = torch.cat([p.grad.reshape(-1) for p in group_params])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            offset = 0
            for p in group_params:
                n = p.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n
        norm = self._clip_gradients(params)
        return float(norm) if math.isfinite(float(norm)) else float("nan")

    def _clip_gradients(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, self.optim.grad_clip)

    # -- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def logprobs(
        self, samples: list[Sample], temperature: float, replay: bool | None = None
    ) -> list[list[float]]:
        """Log-probabilities of each sample's response tokens under the current weights
        (routes replayed from the samples if ``replay``, default: the backend's setting).
        Lockstep backends need the call on every rank."""
        self.model.eval()
        try:
            replay = self.routing_replay if replay is None else replay
            out = []
            for batch, rows in self._batches(samples, replay=bool(replay)):
                batch = batch.to(self.device)
                logits, _ = self._forward(batch)
                logp = token_logprobs(logits, batch.targets, temperature)
                out += [logp[i][batch.loss_mask[i]].tolist() for i in range(rows)]
        finally:
            self.model.train()
        return out

    def reset_optimizer(
        self, betas: tuple[float, float] | None = None, weight_decay: float | None = None
    ) -> None:
        """Forget the Adam moments (a new stage); ``betas`` / ``weight_decay``, when given,
        replace the stage's hyperparameters (parameters without decay keep none)."""
        self.optimizer.state.clear()
        for group in self.optimizer.param_groups:
            if betas is not None:
                group["betas"] = tuple(betas)
            if weight_decay is not None and group["weight_decay"] > 0:
                group["weight_decay"] = weight_decay


class TorchBackend(StepBackend):
    """The transformers ZEDA model, data-parallel over torch.distributed."""

    def __init__(
        self,
        model_dir: str,
        *,
        rank: int,
        world_size: int,
        init_method: str,
        optim: OptimConfig,
        gal: GroupAuxLossConfig,
        temperature: float,
        routing_replay: bool,
        ppo_clip: float = 0.2,
        seed: int = 0,
    ):
        from zeda_rl.models.registry import load_zeda_model

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(
                backend, init_method=init_method, rank=rank, world_size=world_size
            )
        self._setup(
            rank=rank,
            world_size=world_size,
            optim=optim,
            gal=gal,
            temperature=temperature,
            routing_replay=routing_replay,
            ppo_clip=ppo_clip,
        )
        torch.manual_seed(seed + rank)
        self.model = load_zeda_model(model_dir, dtype=torch.float32).to(self.device).train()
        config = self.model.config
        self.num_real, self.num_zero = config.num_routed_experts, config.num_zero_experts
        self.top_k = config.num_experts_per_tok
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        self.moe_layers = self._moe_layers()
        self.optimizer = self._make_optimizer(
            [p for p in self.model.parameters() if p.requires_grad]
        )

    def _moe_layers(self) -> list[int]:
        probe = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        with torch.no_grad():
            return [r.layer_idx for r in self.model(input_ids=probe).routing]

    def _forward(self, batch: Batch) -> tuple[torch.Tensor, list]:
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            routing_replay=batch.replay,
            routing_mask=self._routing_mask(batch),
        )
        return out.logits, out.routing

    def _gradient_groups(self):
        return [([p for p in self.model.parameters() if p.requires_grad], dist.group.WORLD)]

    # -- export, checkpoints ----------------------------------------------------------------

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The student's weights under the transformers names the vLLM plugin loads."""
        for name, tensor in self.model.state_dict().items():
            yield name, tensor.detach()

    def save(self, directory: Path) -> None:
        """Rank 0 writes the model (HF format) and the optimizer state into ``directory``."""
        if self.rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(directory)
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "step": self.step},
                directory / "optimizer.pt",
            )
        if self.world_size > 1:
            dist.barrier()

    def load_optimizer(self, directory: Path) -> None:
        state = torch.load(directory / "optimizer.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def make_backend(
    kind: str,
    model_dir: str,
    *,
    expert_parallel: int = 1,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    **common,
) -> StepBackend:
    """The ``trainer.backend`` named ``kind`` (torch | megatron); ``common`` are the
    constructor arguments both share. The parallel sizes are the megatron backend's."""
    if kind == "torch":
        return TorchBackend(model_dir, **common)
    if kind == "megatron":
        from zeda_rl.trainer.megatron.backend import MegatronBackend

        return MegatronBackend(
            model_dir,
            expert_parallel=expert_parallel,
            tensor_parallel=tensor_parallel,
            pipeline_parallel=pipeline_parallel,
            **common,
        )
    raise ValueError(f"trainer.backend={kind!r}: available {TRAINER_BACKENDS}")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now ("" for every interface: peers on other nodes)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def local_init_method() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


__all__ = [
    "OBJECTIVES",
    "OptimConfig",
    "StepBackend",
    "TorchBackend",
    "TrainerBackend",
    "local_init_method",
    "make_backend",
]
