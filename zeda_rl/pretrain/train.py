"""Pretrain the small teacher MoE (Qwen3-MoE or its GLM-4.7-Flash twin) on offline data.

Rows of the training batch come either from natural text (OpenWebText, Wikipedia,
Shakespeare) or from the structured tasks in chat format (the loss counting either every
token or, with ``task_loss="response"``, the answers only); routing is kept balanced (Qwen3:
load-balancing loss; GLM: aux-loss-free updates of the correction bias, as GLM does). The
result is a Hugging Face folder with the tokenizer, a generation config and ``report.json``
(held-out loss and exact-match accuracy per task, per-expert load).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from zeda_rl.data.tasks import TASKS, Example, is_correct
from zeda_rl.data.tokenizer import END, EOS, chat_example, chat_prompt
from zeda_rl.eval.generation import hf_generate
from zeda_rl.families import FAMILY_NAMES
from zeda_rl.pretrain.presets import TeacherPreset, check_choices

FAMILIES = FAMILY_NAMES
MAX_NEW_TOKENS = {
    "addition": 6,
    "arithmetic": 8,
    "chain": 40,
    "binary_ops": 8,
    "gsm": 192,
    "code": 160,
}


def build_config(family: str, preset: TeacherPreset, tokenizer):
    from transformers import Glm4MoeLiteConfig, Qwen3MoeConfig

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        num_hidden_layers=preset.num_layers,
        moe_intermediate_size=preset.moe_intermediate_size,
        num_experts_per_tok=preset.top_k,
        norm_topk_prob=True,
        max_position_embeddings=max(1024, preset.seq_len * 2),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(END), tokenizer.convert_tokens_to_ids(EOS)],
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    if family == "qwen3_moe":
        return Qwen3MoeConfig(
            **common,
            intermediate_size=preset.dense_intermediate_size,
            num_attention_heads=preset.num_heads,
            num_key_value_heads=preset.num_kv_heads,
            head_dim=preset.head_dim,
            num_experts=preset.num_experts,
            router_aux_loss_coef=preset.router_aux_loss_coef,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        )
    # MLA shapes: vLLM's CPU MLA kernel needs kv_lora_rank + qk_rope_head_dim = 576.
    return Glm4MoeLiteConfig(
        **common,
        intermediate_size=preset.dense_intermediate_size,
        num_attention_heads=max(2, preset.num_heads // 2),
        num_key_value_heads=max(2, preset.num_heads // 2),
        q_lora_rank=preset.hidden_size // 2,
        kv_lora_rank=512,
        qk_nope_head_dim=preset.head_dim,
        qk_rope_head_dim=64,
        v_head_dim=preset.head_dim,
        n_routed_experts=preset.num_experts,
        n_shared_experts=1,
        routed_scaling_factor=1.8,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
    )


@dataclass
class TokenData:
    text: torch.Tensor  # 1D stream of all documents, EOS-separated
    tasks: dict[str, tuple[torch.Tensor, torch.Tensor]]  # task -> (token stream, example starts)
    heldout: dict[str, list[Example]]
    # task -> bool stream beside its tokens: True on response tokens (the prompt's are False)
    responses: dict[str, torch.Tensor]


def build_token_data(preset: TeacherPreset, tokenizer, seed: int, log=print) -> TokenData:
    from zeda_rl.data.corpora import text_corpus

    eos = tokenizer.convert_tokens_to_ids(EOS)
    docs = [d for source in text_corpus().values() for d in source]
    random.Random(seed).shuffle(docs)
    docs = docs[: preset.max_text_docs]
    encoded = tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]
    text = torch.tensor([t for ids in encoded for t in (*ids, eos)], dtype=torch.long)
    tasks, heldout, responses = {}, {}, {}
    for name in preset.task_mix:
        examples = TASKS[name]("train", preset.examples_per_task, seed)
        ids = tokenizer(
            [chat_example(e.prompt, e.response) for e in examples], add_special_tokens=False
        )["input_ids"]
        # The assistant marker is a special token, so the prompt's ids are a prefix of the
        # example's and the response starts right after them.
        prompt_lengths = [
            len(x)
            for x in tokenizer([chat_prompt(e.prompt) for e in examples], add_special_tokens=False)[
                "input_ids"
            ]
        ]
        lengths = torch.tensor([len(x) for x in ids])
        starts = lengths.cumsum(0) - lengths
        tasks[name] = (torch.tensor([t for x in ids for t in x], dtype=torch.long), starts)
        offsets = torch.arange(int(lengths.sum())) - starts.repeat_interleave(lengths)
        responses[name] = offsets >= torch.tensor(prompt_lengths).repeat_interleave(lengths)
        heldout[name] = TASKS[name]("heldout", preset.eval_examples, seed + 1)
    log(
        f"data: {text.numel():,} text tokens; task tokens "
        + ", ".join(f"{k} {v[0].numel():,}" for k, v in tasks.items())
    )
    return TokenData(text, tasks, heldout, responses)


def sample_batch(
    data: TokenData, preset: TeacherPreset, gen: torch.Generator, task_share: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows and, beside them, which tokens the loss counts (see ``task_loss``)."""
    length = preset.seq_len
    task_share = preset.task_share if task_share is None else task_share
    names = list(preset.task_mix)
    weights = torch.tensor([preset.task_mix[n] for n in names])
    rows, counted = [], []
    for _ in range(preset.batch_size):
        if torch.rand((), generator=gen) < task_share:
            name = names[int(torch.multinomial(weights, 1, generator=gen))]
            stream, starts = data.tasks[name]
            valid = starts[starts <= stream.numel() - length]
            start = int(valid[torch.randint(valid.numel(), (), generator=gen)])
            if preset.task_loss == "response":
                counted.append(data.responses[name][start : start + length])
            else:
                counted.append(torch.ones(length, dtype=torch.bool))
        else:
            stream = data.text
            start = int(torch.randint(stream.numel() - length, (), generator=gen))
            counted.append(torch.ones(length, dtype=torch.bool))
        rows.append(stream[start : start + length])
    return torch.stack(rows), torch.stack(counted)


def language_model_loss(model, batch: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy over the counted targets, the LM head run on their
    positions alone (a response-only recipe skips most of its cost on task rows)."""
    if bool(counted[:, 1:].all()):
        return model(input_ids=batch, labels=batch).loss
    hidden = model.model(input_ids=batch).last_hidden_state[:, :-1]
    keep = counted[:, 1:]
    logits = model.lm_head(hidden[keep])
    return torch.nn.functional.cross_entropy(logits.float(), batch[:, 1:][keep])


class ExpertLoad:
    """Per-router statistics from forward hooks: expert pick counts (reported; GLM balances its
    correction bias with them) and a per-layer load-balancing loss for softmax routers."""

    def __init__(self, model):
        from transformers.models.glm4_moe_lite.modeling_glm4_moe_lite import Glm4MoeLiteTopkRouter
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

        self._softmax_router = Qwen3MoeTopKRouter
        self.routers = [
            m for m in model.modules() if isinstance(m, (Qwen3MoeTopKRouter, Glm4MoeLiteTopkRouter))
        ]
        config = model.config
        self.num_experts = (
            config.num_experts if hasattr(config, "num_experts") else config.n_routed_experts
        )
        self.counts = [torch.zeros(self.num_experts) for _ in self.routers]
        self.balance_terms: list[torch.Tensor] = []
        for i, router in enumerate(self.routers):
            router.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def record(module, args, output):
            logits, _, indices = output
            picks = torch.bincount(indices.reshape(-1).detach(), minlength=self.num_experts).float()
            self.counts[i] += picks.cpu()
            if torch.is_grad_enabled() and isinstance(module, self._softmax_router):
                # Switch-style loss of this layer alone: N * sum_e f_e * P_e (1 when balanced).
                f = picks / picks.sum()
                p = torch.softmax(logits.float(), dim=-1).mean(0)
                self.balance_terms.append(self.num_experts * (f * p).sum())

        return record

    def balance_loss(self) -> torch.Tensor:
        """Mean over layers of the per-layer balancing loss of the last forward."""
        terms, self.balance_terms = self.balance_terms, []
        return torch.stack(terms).mean() if terms else torch.zeros(())

    def reset(self) -> None:
        for c in self.counts:
            c.zero_()
        self.balance_terms = []

    def shares(self) -> list[list[float]]:
        return [(c / c.sum().clamp(min=1)).tolist() for c in self.counts]

    def update_correction_bias(self, rate: float) -> None:
        """Aux-loss-free balancing: raise the bias of under-loaded experts, lower the others."""
        with torch.no_grad():
            for router, c in zip(self.routers, self.counts, strict=True):
                if hasattr(router, "e_score_correction_bias"):
                    step = rate * torch.sign(c.mean() - c)
                    router.e_score_correction_bias += step.to(router.e_score_correction_bias.device)


@torch.no_grad()
def evaluate(
    model, tokenizer, heldout: dict[str, list[Example]], batch_size: int = 32, with_nll: bool = True
) -> dict:
    """Held-out response NLL and greedy exact-match accuracy per task."""
    model.eval()
    tokenizer.padding_side = "left"
    results = {}
    for name, examples in heldout.items():
        nll, count = 0.0, 0
        for ex in examples if with_nll else []:
            prompt = tokenizer(chat_prompt(ex.prompt), add_special_tokens=False)["input_ids"]
            full = tokenizer(chat_example(ex.prompt, ex.response), add_special_tokens=False)[
                "input_ids"
            ]
            ids = torch.tensor([full[: model.config.max_position_embeddings]], device=model.device)
            labels = ids.clone()
            labels[0, : len(prompt)] = -100
            out = model(input_ids=ids, labels=labels)
            n = int((labels[0, 1:] != -100).sum())
            if n == 0:  # the prompt alone fills the context
                continue
            nll += out.loss.item() * n
            count += n
        entry = {
            "heldout_nll": nll / max(count, 1) if with_nll else None,
            "examples": len(examples),
        }
        if name != "code":  # code is judged by running tests in the evaluation harness
            prompts = [e.prompt for e in examples]
            texts = hf_generate(model, tokenizer, prompts, MAX_NEW_TOKENS[name], batch_size)
            entry["exact_match"] = sum(map(is_correct, examples, texts)) / len(examples)
        results[name] = entry
    model.train()
    return results


def train_teacher(
    family: str, preset: TeacherPreset, out_dir: Path, seed: int = 0, log=print
) -> dict:
    """Train one teacher into ``out_dir`` (written atomically); returns its report."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from zeda_rl.data.corpora import text_corpus
    from zeda_rl.data.tokenizer import train_tokenizer

    if family not in FAMILIES:
        raise ValueError(f"family={family!r}: choose one of {FAMILIES}")
    preset = preset.for_family(family)
    check_choices(preset)
    torch.manual_seed(seed)
    random.seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()

    corpus = text_corpus()
    rng = random.Random(seed)
    per_source = min(2000, preset.max_text_docs or 2000)
    sample = [d for docs in corpus.values() for d in rng.sample(docs, min(len(docs), per_source))]
    sample += [
        chat_example(e.prompt, e.response)
        for name in preset.task_mix
        for e in TASKS[name]("train", 500, seed)
    ]
    tokenizer = train_tokenizer(sample, preset.vocab_size)
    data = build_token_data(preset, tokenizer, seed, log)

    config = build_config(family, preset, tokenizer)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_config(config).to(device)
    load = ExpertLoad(model)
    params = sum(p.numel() for p in model.parameters())
    log(
        f"{family} teacher: {params / 1e6:.2f}M parameters, {preset.steps} steps of {preset.batch_size}x{preset.seq_len}"
    )

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": preset.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=preset.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < preset.warmup_steps:
            return preset.lr * (step + 1) / preset.warmup_steps
        progress = (step - preset.warmup_steps) / max(1, preset.steps - preset.warmup_steps)
        floor = preset.min_lr_ratio
        return preset.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    bf16 = preset.mixed_precision == "bf16"
    gen = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    for step in range(preset.steps):
        annealing = step >= preset.steps - preset.anneal_steps
        batch, counted = sample_batch(
            data, preset, gen, preset.anneal_task_share if annealing else None
        )
        batch, counted = batch.to(device), counted.to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        load.reset()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            lm_loss = language_model_loss(model, batch, counted)
            loss = lm_loss + preset.router_aux_loss_coef * load.balance_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if family == "glm4_moe_lite":
            load.update_correction_bias(preset.bias_update_rate)
        if step % 50 == 0 or step == preset.steps - 1:
            entry = {
                "step": step,
                "loss": round(lm_loss.item(), 4),
                "lr": lr_at(step),
                "seconds": round(time.perf_counter() - started, 1),
            }
            if step % preset.probe_every == 0 or step == preset.steps - 1:
                probe = {"addition": data.heldout["addition"][:64]}
                entry["addition_exact_match"] = evaluate(model, tokenizer, probe, with_nll=False)[
                    "addition"
                ]["exact_match"]
            history.append(entry)
            extra = (
                f"  addition {entry['addition_exact_match']:.0%}"
                if "addition_exact_match" in entry
                else ""
            )
            log(f"step {step:5d}  loss {entry['loss']:.4f}  {entry['seconds']:.0f}s{extra}")
    train_seconds = time.perf_counter() - started

    load.reset()
    probe, _ = sample_batch(data, preset, torch.Generator().manual_seed(seed + 99))
    with torch.no_grad():
        model(input_ids=probe.to(device))
    shares = load.shares()
    report = {
        "family": family,
        "preset": preset.to_dict(),
        "seed": seed,
        "parameters": params,
        "train_seconds": round(train_seconds, 1),
        "final_train_loss": history[-1]["loss"],
        "history": history,
        "expert_load": {
            "per_layer": [[round(s, 4) for s in layer] for layer in shares],
            "max_over_mean": round(max(max(layer) * len(layer) for layer in shares), 3),
            "min_over_mean": round(min(min(layer) * len(layer) for layer in shares), 3),
        },
    }
    report["heldout"] = evaluate(model, tokenizer, data.heldout)
    report["eval_seconds"] = round(time.perf_counter() - started - train_seconds, 1)
    text_tokens = data.text.numel()
    report["text_tokens"] = text_tokens

    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    ).save_pretrained(tmp)
    (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return report
