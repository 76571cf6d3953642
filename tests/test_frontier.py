"""The quality frontier's arithmetic (zeda_rl/eval/frontier.py) and its evaluation of real
variants of a tiny converted model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zeda_rl.eval.frontier import (
    compact_lines,
    compare,
    curve,
    interpolate,
    seed_summary,
    write_frontier,
)


def _point(method, label, share, acc, kl, seed=None, param=None):
    return {
        "method": method,
        "label": label,
        "param": param,
        "seed": seed,
        "zero_share": share,
        "accuracy": acc,
        "reverse_kl": kl,
        "top1_agreement": 1 - kl,
        "expert_flops_saved": share,
        "model_flops_saved": share / 2,
        "per_benchmark_accuracy": {},
    }


POINTS = [
    _point("teacher", "teacher", 0.0, 0.60, 0.0),
    _point("top_p", "top-p 0.8", 0.20, 0.58, 0.02, param=0.8),
    _point("top_p", "top-p 0.5", 0.50, 0.40, 0.20, param=0.5),
    _point("static_top_k", "static top-1", 0.50, 0.30, 0.40, param=1),
    _point("zeda", "student", 0.35, 0.55, 0.05, seed=0),
    _point("zeda", "student", 0.45, 0.51, 0.07, seed=1),
    _point("zeda_dial", "dial +1", 0.70, 0.20, 0.90, seed=0, param=1.0),
]


def test_interpolation_between_the_nearest_sweep_points():
    top_p = curve(POINTS, "top_p")
    assert [p["label"] for p in top_p] == ["teacher", "top-p 0.8", "top-p 0.5"]
    assert interpolate(top_p, 0.35, "reverse_kl") == pytest.approx(0.11)
    assert interpolate(top_p, 0.10, "accuracy") == pytest.approx(0.59)
    assert interpolate(top_p, 0.50, "accuracy") == pytest.approx(0.40)
    assert interpolate(top_p, 0.70, "accuracy") is None  # beyond the sweep: no comparison
    static = curve(POINTS, "static_top_k")
    assert interpolate(static, 0.25, "accuracy") == pytest.approx(0.45)


def test_comparison_at_equal_share_and_over_seeds():
    rows = {(r["label"], r["seed"]): r for r in compare(POINTS)}
    assert set(rows) == {("student", 0), ("student", 1), ("dial +1", 0)}
    s0 = rows[("student", 0)]
    assert s0["top_p_accuracy"] == pytest.approx(0.49)
    assert s0["vs_top_p_accuracy"] == pytest.approx(0.06)
    assert s0["vs_top_p_reverse_kl"] == pytest.approx(0.05 - 0.11)
    assert rows[("dial +1", 0)]["top_p_accuracy"] is None
    (students,) = [s for s in seed_summary(POINTS) if s["label"] == "student"]
    assert students["seeds"] == [0, 1]
    assert students["accuracy"] == pytest.approx(0.53)
    assert (students["accuracy_min"], students["accuracy_max"]) == (0.51, 0.55)


def test_written_frontier_and_console_lines(tmp_path):
    paths = write_frontier(POINTS, tmp_path, "test frontier")
    record = json.loads(paths["json"].read_text())
    assert len(record["points"]) == len(POINTS) and len(record["comparisons"]) == 3
    text = paths["markdown"].read_text()
    assert "## At equal zero share" in text and "## Over seeds" in text
    assert "+6.0 pt" in text  # seed 0's accuracy against Top-P at 35 %
    assert paths["frontier_accuracy"].stat().st_size > 0
    lines = compact_lines(POINTS)
    assert lines[1].startswith("teacher") and len(lines) == 2 + 3
    # One row per student point by share: Top-P (49 %, 0.11 at 35 %) and the KL ratio.
    assert lines[2].startswith("ZEDA student") and "35.0%" in lines[2]
    assert "49.0% / 0.1100" in lines[2] and lines[2].endswith("0.45x")
    assert lines[-1].startswith("ZEDA, dial +1") and lines[-1].endswith("-")  # beyond the sweep


class _ByteTokenizer:
    """Bytes as tokens: the random tiny models have a 256-token vocabulary."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(text.encode())}

    def convert_ids_to_tokens(self, ids):
        return [chr(i) for i in ids]


class _FixedGenerator:
    """The same response to every prompt, so every variant is measured on the same tokens."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, prompts, budget):
        return ["12 and 3"] * len(prompts)

    def close(self):
        pass


def test_baselines_of_a_converted_model(static_checkpoints, tmp_path, monkeypatch):
    """Teacher, Top-P and static top-K' evaluated through the harness: shares as each
    routing defines them, KL 0 for the teacher itself, > 0 for the pruned routings."""
    import transformers
    from transformers import AutoModelForCausalLM

    import zeda_rl.eval.generation
    from zeda_rl.convert import convert
    from zeda_rl.eval.frontier import baseline_variants, evaluate_variant
    from zeda_rl.eval.harness import MATH, Item

    monkeypatch.setattr(zeda_rl.eval.generation, "Generator", _FixedGenerator)
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _ByteTokenizer()
    )
    teacher_dir = static_checkpoints["qwen3_moe"]
    convert(teacher_dir, tmp_path / "zeda", log=lambda *_: None)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    items = [Item("task/addition", str(i), f"What is {i} + 1?", MATH, str(i + 1)) for i in range(6)]
    variants = baseline_variants(str(teacher_dir), str(tmp_path / "zeda"), 2, [0.5])
    assert [v.label for v in variants] == ["teacher", "top-p 0.5", "static top-1"]
    teacher_point, top_p, static = (
        evaluate_variant(v, teacher, items, backend="hf", log=lambda _: None) for v in variants
    )
    assert teacher_point["zero_share"] == 0.0 and teacher_point["reverse_kl"] == pytest.approx(0.0)
    assert teacher_point["response_tokens"] == 6 * len(b"12 and 3<|end|>")
    assert 0.0 < top_p["zero_share"] <= 0.5 and top_p["reverse_kl"] > 0
    assert static["zero_share"] == pytest.approx(0.5) and static["reverse_kl"] > 0
    assert static["accuracy"] == teacher_point["accuracy"] == 0.0  # the response is fixed


def test_baselines_are_evaluated_once_per_teacher_and_items(
    static_checkpoints, tmp_path, monkeypatch
):
    import zeda_rl.eval.frontier as frontier
    from zeda_rl.eval.harness import MATH, Item

    calls = []

    def fake_evaluate(variant, teacher, items, **kw):
        calls.append(variant.label)
        return {"label": variant.label, "zero_share": 0.5, "model_dir": variant.model_dir}

    monkeypatch.setattr(frontier, "evaluate_variant", fake_evaluate)
    teacher_dir = str(static_checkpoints["qwen3_moe"])
    (variant,) = [
        v for v in frontier.baseline_variants(teacher_dir, "a", 2, [0.7]) if v.param == 0.7
    ]
    items = [Item("task/addition", "0", "What is 1 + 1?", MATH, "2")]
    kw = dict(backend="vllm", cache_dir=tmp_path / "cache")
    first = frontier.evaluate_cached(variant, None, teacher_dir, items, **kw)
    again = frontier.evaluate_cached(variant, None, teacher_dir, items, **kw)
    assert calls == ["top-p 0.7"] and again["cached"] and again["zero_share"] == first["zero_share"]
    other_items = [Item("task/addition", "1", "What is 2 + 2?", MATH, "4")]
    frontier.evaluate_cached(variant, None, teacher_dir, other_items, **kw)
    other_routing = frontier.Variant("top_p", "top-p 0.6", "a", {"routing_top_p": 0.6})
    frontier.evaluate_cached(other_routing, None, teacher_dir, items, **kw)
    assert len(calls) == 3  # new items or another routing are evaluated afresh


def _bench_module(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage2_trend_refuses_unfinished_runs_and_builds_checkpoint_models(tmp_path, capsys):
    trend = _bench_module("stage2_trend")
    assert trend.main(["--run", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().out
    (tmp_path / "summary.json").write_text("{}")
    assert trend.main(["--run", str(tmp_path)]) == 2
    assert "checkpoint.every_steps" in capsys.readouterr().out
    checkpoint, student = tmp_path / "stage2-000099", tmp_path / "student"
    checkpoint.mkdir()
    student.mkdir()
    for name in ("config.json", "model.safetensors", "state.json", "optimizer.pt"):
        (checkpoint / name).write_text(name)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (student / name).write_text("student " + name)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    folder = trend.checkpoint_as_model(checkpoint, student, scratch)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert (folder / "config.json").read_text() == "config.json"  # the checkpoint's own
