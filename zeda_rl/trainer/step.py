"""The training step every trainer backend shares: micro-batches, the stage's objective
(losses/objective.py), the Group Auxiliary Loss from the routers' records, gradients summed
over ranks, metrics all-reduced.

Each trainer worker (one Ray actor per rank, zeda_rl/pools/trainer.py) owns one backend.
The controller hands every rank its share of the step's samples plus the objective's
normalizer over the whole step, so per-token averages are exact across ranks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import torch
import torch.distributed as dist

from zeda_rl.losses.group_aux_loss import group_aux_loss
from zeda_rl.losses.logprobs import token_logprobs
from zeda_rl.losses.objective import Objective, get_objective
from zeda_rl.trainer.batch import Batch, Sample, collate, pad_batch
from zeda_rl.trainer.distributed import rank_device
from zeda_rl.trainer.interface import RankSpec

log = logging.getLogger(__name__)

MAX_LOCKSTEP_BATCHES = 256  # micro-batches per rank and step a lockstep backend can align


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

    def _setup(self, spec: RankSpec) -> None:
        self.device = rank_device(spec.rank)
        self.rank, self.world_size = spec.rank, spec.world_size
        self.optim, self.gal, self.temperature = spec.optim, spec.gal, spec.temperature
        self.routing_replay = spec.routing_replay
        self._objective_options = {"opd": {"clip": spec.ppo_clip}}
        self._objectives: dict[str, Objective] = {}
        self.step = 0
        torch.manual_seed(spec.seed + spec.rank)

    def _read_model_config(self, config) -> None:
        """The routing facts the step needs, from the ZEDA config."""
        self.num_real, self.num_zero = config.num_routed_experts, config.num_zero_experts
        self.top_k = config.num_experts_per_tok
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else 0

    def objective(self, name: str) -> Objective:
        if name not in self._objectives:
            self._objectives[name] = get_objective(name, **self._objective_options.get(name, {}))
        return self._objectives[name]

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
        goal = self.objective(objective)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for param in self._trained:  # with offload the optimizer holds other tensors
            param.grad = None
        batches = self._batches(samples, replay=goal.on_policy and self.routing_replay)
        # GAL is a per-micro-batch loss: average it over every real micro-batch of the step.
        real = sum(1 for _, rows in batches if rows)
        total_micro = float(self._all_reduce_sum(torch.tensor(float(real))))
        sums = dict.fromkeys((*goal.stat_keys, "gal_sum"), 0.0)
        zero_ratio_per_layer = torch.zeros(len(self.moe_layers))
        routed_tokens = 0.0
        for batch, rows in batches:
            batch = batch.to(self.device)
            weight = 1.0 if rows else 0.0  # an empty lockstep batch only keeps ranks in step
            logits, routing = self._forward(batch)
            if rows:
                logp = token_logprobs(logits, batch.targets, self.temperature)
                main, stats = goal.loss(logits, logp, batch, global_tokens)
            else:  # no data, zero loss: the backward still runs, as a collective must
                main, stats = logits.sum() * 0.0, {}
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
                sums[key] += value
        grad_norm = self._reduce_gradients()
        # Gradients are summed over the ranks first, so every rank sees the same norm and
        # skips (or steps) together.
        finite = math.isfinite(grad_norm)
        if finite:
            self._optimizer_step()
            self.step += 1
        else:
            log.warning(
                "rank %d: non-finite gradient norm at step %d: optimizer step skipped "
                "(this rank's samples: %s)",
                self.rank,
                self.step,
                _nonfinite_samples(samples),
            )
        metrics = self._step_metrics(
            goal, sums, zero_ratio_per_layer, routed_tokens, total_micro, global_tokens, grad_norm
        )
        metrics["skipped_step"] = 0.0 if finite else 1.0
        return metrics

    def finite_tensors(self, what: str) -> Iterator[tuple[str, torch.Tensor]]:
        """``named_tensors``, refusing (FloatingPointError) a non-finite weight on its way
        to ``what`` (a checkpoint, a weight sync): one pass serves the check and the copy."""
        for name, tensor in self.named_tensors():
            self._refuse_non_finite(name, tensor, what)
            yield name, tensor

    def check_finite_weights(self, what: str) -> None:
        """Refuse to let a non-finite weight reach ``what``, before any of it is written.
        Reads this rank's own parameters in place: no gather (under expert parallelism each
        rank checks its shard), so the save or transfer that follows is the one full pass."""
        for name, param in self.model.named_parameters():
            self._refuse_non_finite(name, param, what)

    def _refuse_non_finite(self, name: str, tensor: torch.Tensor, what: str) -> None:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise FloatingPointError(
                f"rank {self.rank}: weight {name} holds non-finite values; refusing to "
                f"write it into {what}"
            )

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
        self, goal, sums, zero_per_layer, routed_tokens, total_micro, global_tokens, grad_norm
    ):
        keys = sorted(sums)
        local = torch.tensor([sums[k] for k in keys] + [routed_tokens] + zero_per_layer.tolist())
        total = self._all_reduce_sum(local)
        reduced = dict(zip(keys, total[: len(keys)].tolist(), strict=True))
        routed = max(total[len(keys)].item(), 1.0)
        per_layer = (total[len(keys) + 1 :] / routed).tolist()
        return {
            "gal": reduced["gal_sum"] / total_micro,
            "grad_norm": grad_norm,
            "zero_ratio": sum(per_layer) / len(per_layer),
            **{
                f"zero_ratio/layer{layer}": v
                for layer, v in zip(self.moe_layers, per_layer, strict=True)
            },
            **goal.metrics(reduced, global_tokens),
        }

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


def _nonfinite_samples(samples: list[Sample]) -> list[int]:
    """Indices (in this rank's share) of samples whose inputs carry a non-finite value; the
    rest of a non-finite step comes from the model itself."""
    bad = []
    for i, sample in enumerate(samples):
        values = [
            v
            for field in (sample.rollout_logprobs, sample.teacher_logprobs)
            if field is not None
            for v in field
        ]
        top = sample.teacher_topk_logprobs
        if any(not math.isfinite(v) for v in values) or (
            top is not None and not bool(torch.isfinite(torch.as_tensor(top)).all())
        ):
            bad.append(i)
    return bad
