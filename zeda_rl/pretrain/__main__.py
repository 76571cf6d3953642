"""python -m zeda_rl.pretrain [--family qwen3_moe|glm4_moe_lite|all] [--preset cpu] [--seed 0]
                             [--set FIELD=VALUE ...]

Trains (or reuses from the cache) the small teacher MoE and prints its report.
"""

from __future__ import annotations

import argparse
import json
import sys

from zeda_rl.pretrain.cache import ensure_teacher
from zeda_rl.pretrain.presets import PRESETS, with_overrides
from zeda_rl.pretrain.train import FAMILIES


def summarize(report: dict) -> str:
    lines = [
        f"{report['family']}: {report['parameters'] / 1e6:.2f}M params, trained {report['train_seconds']:.0f}s, "
        f"final loss {report['final_train_loss']:.3f}, expert load max/mean {report['expert_load']['max_over_mean']}, "
        f"min/mean {report['expert_load']['min_over_mean']}"
    ]
    for task, entry in report["heldout"].items():
        em = (
            f"exact match {entry['exact_match']:.1%}"
            if "exact_match" in entry
            else "judged by tests in zeda_rl.eval"
        )
        lines.append(
            f"  {task:11s} held-out NLL {entry['heldout_nll']:.3f}  {em}  (n={entry['examples']})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zeda_rl.pretrain", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--family", default="all", choices=[*FAMILIES, "all"])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="retrain even if cached")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="replace a field of the recipe, VALUE in JSON, e.g. --set task_share=0.9 "
        '--set \'task_mix={"addition": 0.25, "chain": 0.5}\' (cached under its own key)',
    )
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            parser.error(f"--set {item!r}: expected FIELD=VALUE")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError as err:
            parser.error(f"--set {item!r}: VALUE is not JSON ({err.msg})")
    families = FAMILIES if args.family == "all" else (args.family,)
    try:  # every family's recipe is checked before any of them trains
        for family in families:
            with_overrides(PRESETS[args.preset].for_family(family), overrides)
    except ValueError as err:
        parser.error(str(err))
    for family in families:
        path = ensure_teacher(family, args.preset, args.seed, args.force, overrides=overrides)
        print(path)
        print(summarize(json.loads((path / "report.json").read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
