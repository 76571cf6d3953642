"""The quality frontier: accuracy and teacher distance against the share of skipped picks.

Every variant is one checkpoint under one routing (config overrides), evaluated on the same
items with the same weighting: zero-expert share, reverse KL and top-1 agreement all pooled
over response tokens. The baselines are the teacher (share 0), training-free Top-P on the
teacher at several p, and static top-K' for every K' < K; a ZEDA point is compared with
each baseline curve at its own share, by linear interpolation between the curve's two
nearest points (the teacher is every curve's share-0 point; outside a curve's range there is
no comparison).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

BASELINE_METHODS = ("top_p", "static_top_k")
METRICS = ("accuracy", "reverse_kl", "top1_agreement")


@dataclass
class Variant:
    """One operating point to evaluate: a checkpoint under config overrides."""

    method: str  # teacher | top_p | static_top_k | zeda | zeda_dial | an ablation's name
    label: str
    model_dir: str
    overrides: dict = field(default_factory=dict)
    param: float | None = None  # p, K', the dial's bias
    seed: int | None = None


def baseline_variants(
    teacher_dir: str, student_dir: str, top_k: int, top_p_values: Sequence[float]
) -> list[Variant]:
    """The teacher, Top-P on the teacher at each p, static top-K' for every K' < K (run as
    the converted student with its zero experts masked: exactly the teacher's routing)."""
    from zeda_rl.models.top_p import routing_overrides

    out = [Variant("teacher", "teacher", teacher_dir)]
    for p in sorted(top_p_values, reverse=True):
        fields = routing_overrides(mask_zero_experts=True, routing_top_p=p)
        out.append(Variant("top_p", f"top-p {p:g}", student_dir, fields, p))
    for k in range(top_k - 1, 0, -1):
        fields = routing_overrides(mask_zero_experts=True, routing_top_k=k)
        out.append(Variant("static_top_k", f"static top-{k}", student_dir, fields, k))
    return out


def dial_variants(student_dir: str, biases: Sequence[float], seed: int | None) -> list[Variant]:
    """The adapted student at several settings of the compute dial (0 is the student itself)."""
    from zeda_rl.models.top_p import routing_overrides

    return [
        Variant(
            "zeda_dial",
            f"dial {b:+g}",
            student_dir,
            routing_overrides(zero_expert_bias=b),
            b,
            seed,
        )
        for b in biases
        if b != 0
    ]


def evaluate_variant(
    variant: Variant, teacher, items, *, backend: str, out_dir: Path | None = None, log=print
) -> dict:
    """Generate, score and measure ``variant`` on ``items``; a flat point for the frontier."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zeda_rl.eval.generation import Generator
    from zeda_rl.eval.harness import evaluate
    from zeda_rl.eval.report import write_report

    model = AutoModelForCausalLM.from_pretrained(variant.model_dir, **variant.overrides).eval()
    tokenizer = AutoTokenizer.from_pretrained(variant.model_dir)
    generator = Generator(backend, variant.model_dir, model, tokenizer, variant.overrides or None)
    try:
        result = evaluate(model, tokenizer, items, teacher=teacher, generate=generator, log=log)
    finally:
        generator.close()
    if out_dir is not None:
        write_report(result, out_dir, variant.label)
    return point_of(variant, result["summary"])


def baseline_cache_key(teacher_dir: str, variant: Variant, items, backend: str) -> str:
    """What a baseline's point depends on: the teacher's weights and config, the routing
    overrides, the items and the generation backend (not the student, whose masked copy is
    the teacher exactly)."""
    import hashlib
    from dataclasses import asdict

    root = Path(teacher_dir)
    weights = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in root.glob("*.safetensors")
    )
    blob = json.dumps(
        {
            "config": json.loads((root / "config.json").read_text()),
            "weights": weights,
            "method": variant.method,
            "overrides": variant.overrides,
            "items": [asdict(i) for i in items],
            "backend": backend,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate_cached(
    variant: Variant, teacher, teacher_dir: str, items, *, backend: str, cache_dir: Path, **kw
) -> dict:
    """``evaluate_variant`` for a baseline, reusing an earlier evaluation of the same teacher,
    routing and items (every run of an experiment shares its baselines)."""
    path = cache_dir / f"{baseline_cache_key(teacher_dir, variant, items, backend)}.json"
    if path.is_file():
        point = json.loads(path.read_text())
        return point | {"model_dir": variant.model_dir, "cached": True}
    point = evaluate_variant(variant, teacher, items, backend=backend, **kw)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(point))
    tmp.replace(path)
    return point


def evaluate_point(variant: Variant, teacher, teacher_dir: str, items, **kw) -> dict:
    """A variant's point: baselines (the teacher's routings) through the shared cache under
    ``$ZEDA_CACHE_DIR/frontier_baselines``, ZEDA students evaluated afresh."""
    if variant.method in ("teacher", *BASELINE_METHODS):
        from zeda_rl.pretrain.cache import cache_root

        cache = cache_root() / "frontier_baselines"
        return evaluate_cached(variant, teacher, teacher_dir, items, cache_dir=cache, **kw)
    return evaluate_variant(variant, teacher, items, **kw)


def point_of(variant: Variant, summary: dict) -> dict:
    """The frontier's record of one evaluated variant."""
    return {
        "method": variant.method,
        "label": variant.label,
        "param": variant.param,
        "seed": variant.seed,
        "model_dir": variant.model_dir,
        "overrides": variant.overrides,
        "zero_share": summary["zero_expert_ratio"],
        "accuracy": summary["accuracy"],
        "reverse_kl": summary.get("reverse_kl"),
        "top1_agreement": summary.get("top1_agreement"),
        "expert_flops_saved": summary["expert_flops_saved"],
        "model_flops_saved": summary["model_flops_saved_short_context"],
        "response_tokens": summary.get("response_tokens"),
        "per_benchmark_accuracy": {k: v["accuracy"] for k, v in summary["per_benchmark"].items()},
    }


def curve(points: Sequence[dict], method: str) -> list[dict]:
    """A baseline's points by rising zero share, starting at the teacher (share 0)."""
    teacher = [p for p in points if p["method"] == "teacher"]
    own = [p for p in points if p["method"] == method]
    return sorted(teacher[:1] + own, key=lambda p: p["zero_share"])


def interpolate(curve_points: Sequence[dict], share: float, metric: str) -> float | None:
    """``metric`` of a curve at zero share ``share`` (None outside the curve's range)."""
    pts = [(p["zero_share"], p[metric]) for p in curve_points if p.get(metric) is not None]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= share <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (share - x0) / (x1 - x0)
    if pts and abs(pts[-1][0] - share) < 1e-9:
        return pts[-1][1]
    return None


def compare(points: Sequence[dict]) -> list[dict]:
    """Every non-baseline point with each baseline's figures at its zero share."""
    curves = {m: curve(points, m) for m in BASELINE_METHODS}
    rows = []
    for p in points:
        if p["method"] in ("teacher", *BASELINE_METHODS):
            continue
        row = dict(p)
        for method, c in curves.items():
            for metric in ("accuracy", "reverse_kl"):
                value = interpolate(c, p["zero_share"], metric)
                row[f"{method}_{metric}"] = value
                mine = p.get(metric)
                row[f"vs_{method}_{metric}"] = (
                    None if value is None or mine is None else mine - value
                )
        rows.append(row)
    return rows


def seed_summary(points: Sequence[dict]) -> list[dict]:
    """Mean and spread (min..max) over seeds of each (method, label) that has several."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for p in points:
        if p.get("seed") is not None:
            groups.setdefault((p["method"], p["label"]), []).append(p)
    out = []
    for (method, label), ps in groups.items():
        entry: dict = {"method": method, "label": label, "seeds": [p["seed"] for p in ps]}
        for metric in ("zero_share", *METRICS):
            values = [p[metric] for p in ps if p.get(metric) is not None]
            if values:
                entry[metric] = statistics.fmean(values)
                entry[f"{metric}_min"], entry[f"{metric}_max"] = min(values), max(values)
        out.append(entry)
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _kl(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _signed_pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:+.1f} pt"


def markdown_table(points: Sequence[dict], title: str) -> str:
    """Every point, then every ZEDA point against the baselines at its share, then seeds."""
    lines = [
        f"# {title}",
        "",
        "Zero share, reverse KL (student || teacher) and top-1 agreement pooled over response "
        "tokens; accuracy per request.",
        "",
        "| method | point | seed | zero share | accuracy | reverse KL | top-1 | expert FLOPs saved |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in sorted(points, key=lambda p: (p["method"] != "teacher", p["method"], p["zero_share"])):
        seed = "-" if p.get("seed") is None else str(p["seed"])
        lines.append(
            f"| {p['method']} | {p['label']} | {seed} | {_pct(p['zero_share'])} | "
            f"{_pct(p['accuracy'])} | {_kl(p.get('reverse_kl'))} | "
            f"{_pct(p.get('top1_agreement'))} | {_pct(p['expert_flops_saved'])} |"
        )
    rows = compare(points)
    if rows:
        lines += [
            "",
            "## At equal zero share (baselines interpolated linearly between sweep points)",
            "",
            "| method | point | seed | zero share | accuracy | Top-P acc | static acc | "
            "reverse KL | Top-P KL | static KL | acc vs Top-P | KL / Top-P KL |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(rows, key=lambda r: (r["method"], r["zero_share"])):
            seed = "-" if r.get("seed") is None else str(r["seed"])
            ratio = (
                None
                if not r.get("top_p_reverse_kl") or r.get("reverse_kl") is None
                else r["reverse_kl"] / r["top_p_reverse_kl"]
            )
            lines.append(
                f"| {r['method']} | {r['label']} | {seed} | {_pct(r['zero_share'])} | "
                f"{_pct(r['accuracy'])} | {_pct(r['top_p_accuracy'])} | "
                f"{_pct(r['static_top_k_accuracy'])} | {_kl(r.get('reverse_kl'))} | "
                f"{_kl(r['top_p_reverse_kl'])} | {_kl(r['static_top_k_reverse_kl'])} | "
                f"{_signed_pct(r['vs_top_p_accuracy'])} | "
                f"{'-' if ratio is None else f'{ratio:.2f}x'} |"
            )
    seeds = [s for s in seed_summary(points) if len(s["seeds"]) > 1]
    if seeds:
        lines += [
            "",
            "## Over seeds (mean, min..max)",
            "",
            "| method | point | seeds | zero share | accuracy | reverse KL |",
            "|---|---|---|---:|---:|---:|",
        ]
        for s in seeds:
            lines.append(
                f"| {s['method']} | {s['label']} | {','.join(map(str, s['seeds']))} | "
                f"{_pct(s['zero_share'])} ({_pct(s['zero_share_min'])}..{_pct(s['zero_share_max'])}) | "
                f"{_pct(s['accuracy'])} ({_pct(s['accuracy_min'])}..{_pct(s['accuracy_max'])}) | "
                f"{_kl(s.get('reverse_kl'))} ({_kl(s.get('reverse_kl_min'))}.."
                f"{_kl(s.get('reverse_kl_max'))}) |"
            )
    return "\n".join(lines) + "\n"


def compact_lines(points: Sequence[dict]) -> list[str]:
    """The few console lines of the trade a run achieved: the teacher, then the student and
    each of its dial settings with Top-P and static top-K' interpolated at that point's own
    share ("-" beyond a baseline's sweep) and the ratio of reverse KLs."""
    teacher = next((p for p in points if p["method"] == "teacher"), None)
    students = [p for p in points if p["method"] in ("zeda", "zeda_dial")]
    if teacher is None or not students:
        return []
    w = 22
    header = (
        f"{'':{w}s}{'zero share':>11s}{'accuracy':>10s}{'reverse KL':>12s}"
        f"{'Top-P acc / KL':>19s}{'static acc / KL':>19s}{'KL / Top-P':>12s}"
    )
    lines = [header, f"{'teacher':{w}s}{_pct(0.0):>11s}{_pct(teacher['accuracy']):>10s}"]
    curves = {m: curve(points, m) for m in BASELINE_METHODS}
    for p in sorted(students, key=lambda p: p["zero_share"]):
        share, kl = p["zero_share"], p.get("reverse_kl")
        cells = []
        for method in BASELINE_METHODS:
            acc = interpolate(curves[method], share, "accuracy")
            base_kl = interpolate(curves[method], share, "reverse_kl")
            cells.append("-" if acc is None else f"{_pct(acc)} / {_kl(base_kl)}")
        top_kl = interpolate(curves["top_p"], share, "reverse_kl")
        ratio = f"{kl / top_kl:.2f}x" if kl is not None and top_kl else "-"
        name = "ZEDA student" if p["method"] == "zeda" else f"ZEDA, {p['label']}"
        lines.append(
            f"{name:{w}s}{_pct(share):>11s}{_pct(p['accuracy']):>10s}{_kl(kl):>12s}"
            f"{cells[0]:>19s}{cells[1]:>19s}{ratio:>12s}"
        )
    return lines


def plot_frontier(points: Sequence[dict], out_dir: Path) -> list[Path]:
    """Zero share vs accuracy and vs reverse KL: one curve per method, the teacher a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = next((p for p in points if p["method"] == "teacher"), None)
    methods = list(dict.fromkeys(p["method"] for p in points if p["method"] != "teacher"))
    paths = []
    for metric, ylabel in (("accuracy", "accuracy"), ("reverse_kl", "reverse KL (nats/token)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        if teacher is not None and metric == "accuracy":
            ax.axhline(teacher[metric], color="black", linestyle="--", label="teacher")
        for method in methods:
            if method in BASELINE_METHODS and teacher is not None:
                series = {method: curve(points, method)}
            elif method == "zeda_dial":
                # One dial curve per seed, through that seed's student (the dial at 0).
                seeds = sorted({p["seed"] for p in points if p["method"] == method}, key=str)
                series = {
                    f"dial, seed {seed}": [
                        p
                        for p in points
                        if p["method"] in ("zeda", "zeda_dial") and p["seed"] == seed
                    ]
                    for seed in seeds
                }
            else:
                series = {method: [p for p in points if p["method"] == method]}
            style = {"zeda_dial": ":."}.get(method, "-o" if method in BASELINE_METHODS else "o")
            for name, pts in series.items():
                pts = sorted(
                    (p for p in pts if p.get(metric) is not None), key=lambda p: p["zero_share"]
                )
                ax.plot([p["zero_share"] for p in pts], [p[metric] for p in pts], style, label=name)
        ax.set_xlabel("zero-expert share of picks (positions generating the response)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"frontier_{metric}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def write_frontier(points: Sequence[dict], out_dir: Path, title: str) -> dict[str, Path]:
    """frontier.json (points, comparisons, seed summary), frontier.md and the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "points": list(points),
        "comparisons": compare(points),
        "seeds": seed_summary(points),
    }
    paths = {"json": out_dir / "frontier.json", "markdown": out_dir / "frontier.md"}
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["markdown"].write_text(markdown_table(points, title))
    for p in plot_frontier(points, out_dir):
        paths[p.stem] = p
    return paths


__all__ = [
    "Variant",
    "baseline_variants",
    "compact_lines",
    "compare",
    "curve",
    "dial_variants",
    "evaluate_point",
    "evaluate_variant",
    "interpolate",
    "markdown_table",
    "point_of",
    "seed_summary",
    "write_frontier",
]
