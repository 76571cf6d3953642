"""Metrics of a run: wandb (offline by default, into the run folder) and a JSON-lines file
get every step; the console gets one progress bar per stage with the headline metrics in
its postfix, and a full metrics line above it every ``logging.log_every`` steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm

STAGE_ORDER = ("stage1", "stage2")
# The metrics a stage's progress bar shows, in this order, where the step has them.
HEADLINE = ("loss", "reverse_kl", "zero_ratio", "gal", "tokens_per_s")


class Tracker:
    def __init__(
        self,
        run_dir: Path,
        config: dict,
        *,
        use_wandb: bool,
        mode: str,
        project: str,
        log_every: int = 1,
    ):
        self.path = run_dir / "metrics.jsonl"
        self.log_every = log_every
        self.bar = None
        self.run = None
        if use_wandb and mode != "disabled":
            import wandb

            # wandb writes under $WANDB_DIR/wandb/: keep it inside the run folder.
            os.environ.setdefault("WANDB_DIR", str(run_dir))
            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=project,
                mode=mode,
                dir=str(run_dir),
                config=config,
                name=run_dir.name,
                reinit="finish_previous",
            )

    def truncate_after(self, stage: str, step: int) -> None:
        """Drop the rows logged after ``stage`` step ``step`` (a resumed run redoes them),
        atomically."""
        if not self.path.is_file():
            return

        def position(row: dict) -> tuple[int, int]:
            return STAGE_ORDER.index(row["stage"]), row["step"]

        point = position({"stage": stage, "step": step})
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if position(json.loads(line)) <= point]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.path)

    def progress(self, steps: range, desc: str):
        """The stage's progress bar over ``steps``; ``log`` puts the headline metrics in its
        postfix."""
        self.bar = tqdm(steps, desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0)
        return self.bar

    def log(
        self,
        stage: str,
        step: int,
        metrics: dict[str, float],
        console: bool = True,
        last_step: bool = False,
    ) -> None:
        row = {"stage": stage, "step": step, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.run is not None:
            self.run.log({f"{stage}/{k}": v for k, v in metrics.items()})
        if not console:
            return
        if self.bar is not None:
            headline = {k: _fmt(metrics[k]) for k in HEADLINE if k in metrics}
            self.bar.set_postfix(headline, refresh=False)
        every = self.log_every
        if self.bar is None or last_step or (every > 0 and (step + 1) % every == 0):
            shown = [k for k in metrics if "/" not in k]
            text = "  ".join(f"{k} {_fmt(metrics[k])}" for k in shown)
            tqdm.write(f"[{stage} {step:4d}] {text}")  # above the bar

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def quiet_third_party() -> None:
    """Turn the libraries' console chatter down in this process (and the vLLM engines it
    starts): the console is for the run's own progress and results. vLLM keeps errors only
    (on CPU its warnings repeat per request: thread binding, missing libiomp). Call before
    vLLM is imported (it reads its level at import)."""
    import logging
    import warnings

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    # The engines' processes start after this: torch's C++ warnings (vLLM's CPU worker prints
    # a NUMA-binding one per engine start) stay out of their output too.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    for name in ("vllm", "ray", "transformers", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # vLLM's Triton helpers touch a deprecated torch alias on every import.
    warnings.filterwarnings("ignore", message=".*torch.distributed.reduce_op.*")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # Errors only: e.g. the tokenizer's "sequence length is longer than the specified
    # maximum" on long benchmark prompts (the engines enforce their own context).
    hf_logging.set_verbosity_error()
