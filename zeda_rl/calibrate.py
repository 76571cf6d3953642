"""python -m zeda_rl.calibrate --model DIR --target-zero-share 0.5 [--out DIR]

Finds the compute dial (``zero_expert_bias``, models/zero_experts.py) at which a ZEDA
checkpoint skips the requested share of its expert picks, and writes a copy of the
checkpoint with that value in its config: one adapted model, many operating points.

The share is measured the way evaluation measures it: over the positions that generate the
model's own greedy answers (regenerated at every trial value, since the answers change with
the routing) to calibration prompts from the train split of the task families; bisection
on the bias. The value found is then checked on held-out prompts of the same families and
that share is reported beside it (it is what a user of the copy will see).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

BRACKET_LIMIT = 64.0  # |bias| beyond which every pick is (not) a zero pick in practice


@dataclass
class Calibration:
    target: float
    zero_expert_bias: float
    calibration_share: float
    heldout_share: float
    trials: list[tuple[float, float]]  # (bias, share) in the order tried
    calibration_prompts: int
    heldout_prompts: int
    seconds: float


def find_bias(
    share_at: Callable[[float], float],
    target: float,
    *,
    tolerance: float = 0.005,
    max_trials: int = 24,
) -> tuple[float, float, list[tuple[float, float]]]:
    """Bisection for the bias whose share is within ``tolerance`` of ``target``; the zero
    share rises with the bias. Returns (bias, its share, every trial)."""
    trials: list[tuple[float, float]] = []

    def trial(b: float) -> float:
        share = share_at(b)
        trials.append((b, share))
        return share

    def close(share: float) -> bool:
        return abs(share - target) <= tolerance

    def best() -> tuple[float, float, list[tuple[float, float]]]:
        bias, share = min(trials, key=lambda t: abs(t[1] - target))
        return bias, share, trials

    near, near_share = 0.0, trial(0.0)
    if close(near_share):
        return best()
    # Bracket the target: step away from 0 towards it, doubling, until the share crosses it.
    direction = 1.0 if near_share < target else -1.0
    step = 1.0
    while True:
        far = direction * step
        far_share = trial(far)
        if close(far_share):
            return best()
        if (far_share - target) * direction > 0:
            break
        near, near_share = far, far_share
        step *= 2
        if step > BRACKET_LIMIT or len(trials) >= max_trials:
            raise RuntimeError(
                f"zero share {far_share:.3f} at bias {far:+g}: the target {target:.3f} is out "
                "of the dial's reach for this checkpoint"
            )
    lo, hi = (near, far) if direction > 0 else (far, near)  # share(lo) < target < share(hi)
    while len(trials) < max_trials:
        mid = (lo + hi) / 2
        share = trial(mid)
        if close(share):
            break
        lo, hi = (mid, hi) if share < target else (lo, mid)
    return best()


def response_zero_share(model, tokenizer, prompts: list[str], max_new_tokens: int) -> float:
    """Zero-expert share of picks over the response tokens of the model's greedy answers
    (under whatever routing its config holds now)."""
    import torch

    from zeda_rl.data.tokenizer import chat_example, chat_prompt
    from zeda_rl.eval.generation import hf_generate

    responses = hf_generate(model, tokenizer, prompts, max_new_tokens)
    k = model.config.num_experts_per_tok
    real = slots = 0
    with torch.no_grad():
        for prompt, response in zip(prompts, responses, strict=True):
            n_prompt = len(tokenizer(chat_prompt(prompt), add_special_tokens=False)["input_ids"])
            ids = tokenizer(chat_example(prompt, response), add_special_tokens=False)["input_ids"]
            out = model(input_ids=torch.tensor([ids]))
            for layer in out.routing:  # the positions that generate the response
                picks = layer.real_experts_per_token[n_prompt - 1 : -1]
                real += int(picks.sum())
                slots += picks.numel() * k
    return 1.0 - real / max(slots, 1)


def calibrate(
    model_dir: Path,
    target: float,
    out_dir: Path,
    *,
    families: list[str],
    num_prompts: int = 128,
    max_new_tokens: int = 24,
    tolerance: float = 0.005,
    log=print,
) -> Calibration:
    """Find the bias for ``target``, check it on held-out prompts, write the copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import zeda_rl  # noqa: F401  (registers the ZEDA architectures)
    from zeda_rl.data.tasks import TASKS

    started = time.perf_counter()
    per_family = -(-num_prompts // len(families))
    calib = [e.prompt for f in families for e in TASKS[f]("train", per_family, 101)]
    heldout = [e.prompt for f in families for e in TASKS[f]("heldout", per_family, 102)]
    model = AutoModelForCausalLM.from_pretrained(model_dir, zero_expert_bias=0.0).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def share_at(bias: float) -> float:
        model.config.zero_expert_bias = bias  # read by the routers at every forward
        share = response_zero_share(model, tokenizer, calib, max_new_tokens)
        log(f"  bias {bias:+.4f}: zero share {share:.2%}")
        return share

    bias, share, trials = find_bias(share_at, target, tolerance=tolerance)
    model.config.zero_expert_bias = bias
    held = response_zero_share(model, tokenizer, heldout, max_new_tokens)
    result = Calibration(
        target, bias, share, held, trials, len(calib), len(heldout),
        round(time.perf_counter() - started, 1),
    )  # fmt: skip
    _write_copy(model_dir, out_dir, bias, result)
    return result


def _write_copy(model_dir: Path, out_dir: Path, bias: float, result: Calibration) -> None:
    """The checkpoint with ``zero_expert_bias`` set, written next to ``out_dir`` first and
    renamed into place, so a failure leaves nothing half-written."""
    tmp = out_dir.parent / f".tmp-{out_dir.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp, ignore=shutil.ignore_patterns("eval*", "calibration.json"))
    config = json.loads((tmp / "config.json").read_text())
    config["zero_expert_bias"] = bias
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    record = asdict(result) | {"source": str(model_dir)}
    (tmp / "calibration.json").write_text(json.dumps(record, indent=2) + "\n")
    tmp.rename(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zeda_rl.calibrate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, help="adapted ZEDA checkpoint folder")
    parser.add_argument("--target-zero-share", type=float, required=True, metavar="SHARE")
    parser.add_argument("--out", default=None, help="new folder (default MODEL-zeroSHARE)")
    parser.add_argument(
        "--families",
        default="addition,arithmetic",
        help="task families of the calibration and held-out prompts (comma-separated)",
    )
    parser.add_argument(
        "--prompts", type=int, default=128, help="calibration prompts (and held-out)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--tolerance", type=float, default=0.005, help="on the calibration set")
    args = parser.parse_args(argv)

    model_dir = Path(args.model)
    target = args.target_zero_share
    if not (model_dir / "config.json").is_file():
        return _error(f"--model {model_dir}: no model folder (config.json missing)")
    if not (math.isfinite(target) and 0.0 < target < 1.0):
        return _error(f"--target-zero-share {target}: must be in (0, 1)")
    if args.prompts < 1 or args.max_new_tokens < 1 or not 0 < args.tolerance < 0.5:
        return _error("--prompts and --max-new-tokens must be >= 1, --tolerance in (0, 0.5)")
    from zeda_rl.data.tasks import TASKS
    from zeda_rl.eval.__main__ import is_zeda_checkpoint

    families = [f for f in args.families.split(",") if f]
    if not families or (bad := [f for f in families if f not in TASKS or f == "code"]):
        return _error(
            f"--families {','.join(bad) or args.families}: no such task family; choose from "
            "addition, arithmetic, gsm, binary_ops"
        )
    if not is_zeda_checkpoint(model_dir):
        return _error(f"--model {model_dir}: not a ZEDA checkpoint (it has no zero experts)")
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("mask_zero_experts") or config.get("use_zce_mask"):
        return _error(f"--model {model_dir}: its zero experts are masked; the dial has no effect")
    out_dir = Path(args.out) if args.out else model_dir.parent / f"{model_dir.name}-zero{target:g}"
    if out_dir.exists():
        return _error(f"--out {out_dir} exists; calibration never overwrites a folder")

    print(f"calibrating {model_dir} to a zero share of {target:.1%} ({', '.join(families)})")
    result = calibrate(
        model_dir,
        target,
        out_dir,
        families=families,
        num_prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        tolerance=args.tolerance,
    )
    print(
        f"zero_expert_bias {result.zero_expert_bias:+.4f}: zero share {result.calibration_share:.2%} "
        f"on {result.calibration_prompts} calibration prompts, {result.heldout_share:.2%} on "
        f"{result.heldout_prompts} held-out prompts (target {target:.2%}); "
        f"{len(result.trials)} trials in {result.seconds:.0f}s"
    )
    print(f"written to {out_dir}")
    return 0


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
