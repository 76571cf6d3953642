"""``python -m zeda_rl.launch +experiment=tiny``: the ZEDA pipeline as a Hydra app.

Dataflow (stages marked * arrive with the distributed pipeline)::

    teacher (static MoE: trained small teacher | HF folder)
        --convert--> ZEDA student (N + N_Z router rows)
        --parity check (zero experts masked == teacher)
        --evaluation before adaptation (student vs teacher: accuracy, zero ratio, KL)
        --* stage 1: SFT on teacher rollouts + GAL
        --* stage 2: on-policy distillation (teacher log-probs, PPO clip) + GAL
        --* evaluation after adaptation
        --* quality frontier (eval.frontier): the adapted student against the teacher,
            Top-P and static top-K' at its share of skipped picks, on held-out items
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from zeda_rl.config import RunConfig, active_mix, register_configs
from zeda_rl.validation import LOCAL_SOURCES, ConfigError, validate

register_configs()
__all__ = ["main", "run", "validate"]


def _random_teacher(family: str, seed: int, out: Path) -> Path:
    from zeda_rl.models.tiny import random_static_model

    random_static_model(family, seed).save_pretrained(out)
    return out


def _teacher_dir(cfg: RunConfig, run_dir: Path) -> Path:
    if cfg.model.source == "random":
        return _random_teacher(cfg.model.family, cfg.model.seed, run_dir / "teacher")
    if cfg.model.source == "teacher":
        from zeda_rl.pretrain.cache import ensure_teacher

        return ensure_teacher(cfg.model.family, cfg.model.teacher_preset, cfg.model.seed)
    return Path(cfg.model.source)


def _local_checks(
    cfg: RunConfig,
    teacher_dir: Path,
    student_dir: Path,
    run_dir: Path,
    summary: dict,
    timings: dict,
):
    """Parity of the masked student, GAL on random tokens, evaluation before adaptation.
    Returns the teacher model (the reference of later evaluations)."""
    import torch
    from transformers import AutoModelForCausalLM

    from zeda_rl.losses import group_aux_loss, target_zero_ratio
    from zeda_rl.models import zero_expert_ratio
    from zeda_rl.models.top_p import routing_overrides

    t0 = time.perf_counter()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    masked = AutoModelForCausalLM.from_pretrained(student_dir, mask_zero_experts=True).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    g = torch.Generator().manual_seed(cfg.model.seed)
    input_ids = torch.randint(0, teacher.config.vocab_size, (4, 32), generator=g)
    with torch.no_grad():
        reference = teacher(input_ids=input_ids).logits
        parity = (masked(input_ids=input_ids).logits - reference).abs().max()
        out = student(input_ids=input_ids)
    # fp32 rounding only: the softmax over N + N_Z columns sums in another order.
    if parity > 1e-5 * max(1.0, float(reference.abs().max())):
        raise RuntimeError(f"masked student differs from the teacher: {parity:.3e}")
    config = student.config
    gal = group_aux_loss(
        out.routing,
        num_real=config.num_routed_experts,
        num_zero=config.num_zero_experts,
        top_k=config.num_experts_per_tok,
        config=cfg.group_aux_loss,
    )
    timings["check"] = time.perf_counter() - t0
    summary |= {
        "experts": f"{config.num_routed_experts} real + {config.num_zero_experts} zero, top-{config.num_experts_per_tok}",
        "parity_max_abs_diff_masked": float(parity),
        "zero_expert_ratio_random_tokens": zero_expert_ratio(out.routing),
        "group_aux_loss": float(gal),
        "gal_target_zero_ratio": target_zero_ratio(
            config.num_routed_experts,
            config.num_zero_experts,
            cfg.group_aux_loss.zero_expert_weight,
        ),
    }
    has_tokenizer = (teacher_dir / "tokenizer.json").is_file()
    evaluate_runs = cfg.eval.enabled and has_tokenizer
    if evaluate_runs:
        t0 = time.perf_counter()
        before = summary["eval_before_adaptation"] = {
            "teacher": _evaluate("teacher", teacher, teacher_dir, None, cfg, run_dir),
            "student": _evaluate("student", student, student_dir, teacher, cfg, run_dir),
        }
        for p in cfg.eval.top_p_baselines:
            # The teacher under Top-P routing: the student's checkpoint with its zero
            # experts masked (exactly the teacher), picks pruned at p.
            overrides = routing_overrides(mask_zero_experts=True, routing_top_p=p)
            baseline = AutoModelForCausalLM.from_pretrained(student_dir, **overrides).eval()
            before[f"top_p_{p:g}"] = _evaluate(
                f"top_p_{p:g}", baseline, student_dir, teacher, cfg, run_dir, overrides
            )
        timings["eval_before"] = time.perf_counter() - t0
    # The teacher is the reference of the evaluations after adaptation and of the frontier.
    return teacher if has_tokenizer and (cfg.eval.enabled or cfg.eval.frontier) else None


def run(cfg: RunConfig, run_dir: Path) -> dict:
    from transformers import AutoModelForCausalLM

    from zeda_rl.convert import convert

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    teacher_dir = _teacher_dir(cfg, run_dir)
    timings["teacher"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    student_dir = run_dir / "student"
    if not (cfg.checkpoint.resume and (student_dir / "config.json").is_file()):
        # (a resumed run keeps its converted student; the converter never overwrites)
        convert(
            teacher_dir,
            student_dir,
            cfg.model.num_zero_experts,
            cfg.model.seed,
            cfg.model.zero_expert_type,
        )
    timings["convert"] = time.perf_counter() - t0
    summary: dict = {
        "family": cfg.model.family,
        "teacher": str(teacher_dir),
        "student": str(student_dir),
    }
    # Full-size checkpoints are checked inside the distributed pipeline, not on this host.
    teacher = None
    if cfg.model.source in LOCAL_SOURCES:
        teacher = _local_checks(cfg, teacher_dir, student_dir, run_dir, summary, timings)
    if cfg.stage1.enabled or cfg.stage2.enabled:
        from zeda_rl.orchestrator import run_pipeline

        t0 = time.perf_counter()
        summary["pipeline"] = run_pipeline(cfg, teacher_dir, student_dir, run_dir)
        timings["pipeline"] = time.perf_counter() - t0
        final = Path(summary["pipeline"]["student_final"])
        if teacher is not None and cfg.eval.enabled:
            t0 = time.perf_counter()
            adapted = AutoModelForCausalLM.from_pretrained(final).eval()
            summary["eval_after_adaptation"] = {
                "student": _evaluate("student_adapted", adapted, final, teacher, cfg, run_dir)
            }
            timings["eval_after"] = time.perf_counter() - t0
        if teacher is not None and cfg.eval.frontier:
            t0 = time.perf_counter()
            summary["frontier"] = _frontier(cfg, teacher, teacher_dir, student_dir, final, run_dir)
            timings["frontier"] = time.perf_counter() - t0
    summary["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    return summary


def _evaluate(
    name: str,
    model,
    model_dir: Path,
    reference,
    cfg: RunConfig,
    run_dir: Path,
    overrides: dict | None = None,
) -> dict:
    from transformers import AutoTokenizer

    from zeda_rl.eval.generation import Generator
    from zeda_rl.eval.harness import evaluate, suite_items
    from zeda_rl.eval.report import write_report

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    generator = Generator(cfg.eval.backend, str(model_dir), model, tokenizer, overrides)
    try:
        result = evaluate(
            model, tokenizer, suite_items(cfg.eval.suite), teacher=reference, generate=generator
        )
    finally:
        generator.close()
    write_report(result, run_dir / f"eval_{name}", f"{name} ({cfg.eval.suite} suite)")
    s = result["summary"]
    out = {
        "accuracy": round(s["accuracy"], 4),
        "zero_expert_ratio": round(s["zero_expert_ratio"], 4),
        "per_benchmark_accuracy": {
            k: round(v["accuracy"], 3) for k, v in s["per_benchmark"].items()
        },
    }
    if reference is not None:
        out["reverse_kl"] = s["reverse_kl"] and round(s["reverse_kl"], 4)
        out["top1_agreement"] = s["top1_agreement"] and round(s["top1_agreement"], 4)
    return out


def _frontier(
    cfg: RunConfig, teacher, teacher_dir: Path, student_dir: Path, final: Path, run_dir: Path
) -> dict:
    """The adapted student and the training-free baselines on held-out items of the prompt
    mix's families (zeda_rl/eval/frontier.py); written to <run>/frontier/."""
    from zeda_rl.eval.frontier import (
        Variant,
        baseline_variants,
        compact_lines,
        dial_variants,
        evaluate_point,
        write_frontier,
    )
    from zeda_rl.eval.harness import indomain_items

    families = list(active_mix(cfg.prompts.mix))
    items = indomain_items(families, cfg.eval.frontier_items)
    variants = baseline_variants(
        str(teacher_dir),
        str(student_dir),
        teacher.config.num_experts_per_tok,
        cfg.eval.frontier_top_p,
    )
    variants.append(Variant("zeda", "student", str(final), seed=cfg.seed))
    variants += dial_variants(str(final), cfg.eval.frontier_dial, cfg.seed)
    out = run_dir / "frontier"
    points = [
        evaluate_point(
            v,
            teacher,
            str(teacher_dir),
            items,
            backend=cfg.eval.backend,
            out_dir=out / v.label.replace(" ", "_"),
            log=lambda message, v=v: print(f"frontier, {v.label}: {message}"),
        )
        for v in variants
    ]
    title = f"Quality frontier: {len(items)} held-out items of {', '.join(families)}"
    write_frontier(points, out, title)
    return {
        "suite": f"indomain ({', '.join(families)})",
        "items": len(items),
        "points": points,
        "compact": compact_lines(points),
    }


def _dry_run(cfg: RunConfig, run_dir: Path) -> None:
    """Print (and save) the plan; nothing is loaded."""
    from zeda_rl.plan import ARCHITECTURES, format_plan, plan

    name = cfg.model.architecture
    if name is None:
        print("dry_run: config validated (set model.architecture for a memory plan)")
        return
    arch = ARCHITECTURES[name]
    zero = cfg.model.num_zero_experts or arch.experts // 2
    result = plan(cfg, arch, zero)
    (run_dir / "plan.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_plan(result))


def checked_config(dict_cfg: DictConfig) -> RunConfig:
    """The composed config as the typed RunConfig, validated (ConfigError names the field)."""
    if dict_cfg.get("dry_run") and OmegaConf.is_missing(dict_cfg.model, "source"):
        dict_cfg.model.source = ""  # planning from model.architecture needs no checkpoint
    cfg: RunConfig = OmegaConf.to_object(dict_cfg)
    validate(cfg)
    return cfg


class HydraRecord:
    """``<run>/.hydra/`` (config.yaml, hydra.yaml, overrides.yaml, as Hydra writes them),
    written by the launcher once the config has passed its checks (conf/config.yaml turns
    Hydra's own copy off). A relaunch's previous record is kept aside until the run is past
    the checks made against the live cluster, so a start refused there puts it back."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".hydra"
        self.previous = run_dir / ".hydra.previous"

    def write(self, dict_cfg: DictConfig, hydra_cfg: DictConfig) -> None:
        tmp = self.path.with_name(".hydra.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(dict_cfg))
        (tmp / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": hydra_cfg}))
        (tmp / "overrides.yaml").write_text(OmegaConf.to_yaml(hydra_cfg.overrides.task))
        if self.path.exists():
            shutil.rmtree(self.previous, ignore_errors=True)
            self.path.rename(self.previous)
        tmp.rename(self.path)

    def keep(self) -> None:
        """The run got past its checks: the new record stands."""
        shutil.rmtree(self.previous, ignore_errors=True)

    def restore(self) -> None:
        """The start was refused: the folder's record is what it was."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self.previous.exists():
            self.previous.rename(self.path)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(dict_cfg: DictConfig) -> None:
    try:
        cfg = checked_config(dict_cfg)
    except ConfigError as err:  # one line naming the field, no traceback
        print(f"zeda_rl: bad config: {err}", file=sys.stderr)
        sys.exit(2)
    from zeda_rl.tracking import quiet_third_party

    quiet_third_party()
    hydra_cfg = hydra.core.hydra_config.HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    record = HydraRecord(run_dir)
    record.write(dict_cfg, hydra_cfg)
    if cfg.kernels.experts_backend != "auto":
        from zeda_kernels import BACKEND_ENV

        os.environ[BACKEND_ENV] = cfg.kernels.experts_backend  # this process's evaluations
    print(f"zeda_rl: experiment {cfg.name}, output {run_dir}")
    if cfg.dry_run:
        print(OmegaConf.to_yaml(dict_cfg))
        _dry_run(cfg, run_dir)
        record.keep()
        return
    from zeda_rl.checkpoint import Preempted
    from zeda_rl.orchestrator import RunStopped

    refused = False
    try:
        summary = run(cfg, run_dir)
    except ConfigError as err:  # the live cluster refused the pools, before any actor
        refused = True
        print(f"zeda_rl: bad config: {err}", file=sys.stderr)
        sys.exit(2)
    except Preempted as stop:  # a scheduler's SIGTERM (or Ctrl-C): checkpointed, resumable
        print(f"zeda_rl: {stop}", file=sys.stderr)
        sys.exit(143 if stop.signal_name == "SIGTERM" else 130)
    except RunStopped as stop:  # a fault met more often than the run may survive it
        print(f"zeda_rl: run stopped: {stop}", file=sys.stderr)
        sys.exit(1)
    finally:
        if refused:
            record.restore()
        else:
            record.keep()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary, run_dir))


def format_summary(summary: dict, run_dir: Path) -> str:
    """The few lines a user looks for after a run (the full record is summary.json)."""
    lines = ["", "== ZEDA summary ==", f"run folder        {run_dir}"]
    if "experts" in summary:
        lines.append(f"experts           {summary['experts']}")
    before = summary.get("eval_before_adaptation", {})
    after = summary.get("eval_after_adaptation", {}).get("student")
    rows = [("teacher", before.get("teacher"))]
    rows += [(f"top-p {k[6:]} (base)", r) for k, r in before.items() if k.startswith("top_p_")]
    rows += [("student before", before.get("student")), ("student after", after)]
    if any(r for _, r in rows):
        lines.append(
            f"{'':18s}{'accuracy':>10s}{'zero ratio':>12s}{'reverse KL':>12s}{'top-1':>8s}"
        )
        for name, r in rows:
            if r:
                kl, top1 = r.get("reverse_kl"), r.get("top1_agreement")
                lines.append(
                    f"{name:18s}{r['accuracy']:>10.1%}{r['zero_expert_ratio']:>12.1%}"
                    f"{'-' if kl is None else f'{kl:.4f}':>12s}"
                    f"{'-' if top1 is None else f'{top1:.1%}':>8s}"
                )
        task_rows = [(n, r["per_benchmark_accuracy"]) for n, r in rows if r]
        for bench in task_rows[0][1]:
            if bench.startswith("task/"):
                values = "  ".join(f"{n} {acc[bench]:.0%}" for n, acc in task_rows)
                lines.append(f"  {bench:16s}{values}")
    frontier = summary.get("frontier")
    if frontier and frontier.get("compact"):
        lines.append(
            f"the student against the training-free baselines at its own share of skipped "
            f"picks, {frontier['items']} held-out {frontier['suite']} items (full table: "
            "frontier/frontier.md):"
        )
        lines += ["  " + line for line in frontier["compact"]]
    pipe = summary.get("pipeline")
    if pipe:
        lines.append(
            f"Ray dashboard     {pipe['dashboard']} (pools: {', '.join(sorted(pipe['dashboard_actors']))})"
        )
        for stage in ("stage1", "stage2"):
            if pipe.get(stage, {}).get("complete_before_resume"):
                lines.append(f"{stage}            complete before the resume")
            elif pipe.get(stage, {}).get("last"):
                last = pipe[stage]["last"]
                extra = "".join(
                    f", {label} {last[key]:.3f}"
                    for key, label in (("nll", "nll"), ("reverse_kl", "reverse KL"))
                    if key in last
                )
                lines.append(
                    f"{stage}            {pipe[stage]['steps']} steps in {pipe[stage]['seconds']:.0f}s, "
                    f"last step: zero ratio {last['zero_ratio']:.1%}{extra}"
                )
        lines.append(f"adapted student   {pipe['student_final']}")
    lines.append(
        "wall time (s)     " + ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items())
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
