"""The teacher recipe's plumbing on the seconds-long smoke preset (the real preset's figures
are measured by `python -m zeda_rl.pretrain` and recorded in docs/teacher.md)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from zeda_rl.convert import convert
from zeda_rl.data.tokenizer import chat_prompt
from zeda_rl.pretrain.cache import ensure_teacher, teacher_dir
from zeda_rl.pretrain.presets import PRESETS
from zeda_rl.pretrain.train import train_teacher


@pytest.fixture(scope="module")
def cache(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("cache")
    monkeypatch_module.setenv("ZEDA_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_moe", "glm4_moe_lite"])
def test_smoke_teacher_trains_saves_and_converts(cache, family, tmp_path):
    logs: list[str] = []
    path = ensure_teacher(family, "smoke", seed=0, log=logs.append)
    assert path == teacher_dir(family, "smoke", 0) and path.is_relative_to(cache)
    report = json.loads((path / "report.json").read_text())
    assert report["family"] == family
    assert set(report["heldout"]) == set(PRESETS["smoke"].task_mix)
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]
    for layer in report["expert_load"]["per_layer"]:
        assert len(layer) == PRESETS["smoke"].num_experts and sum(layer) == pytest.approx(
            1.0, abs=1e-3
        )

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    ) == chat_prompt("hi")
    if family == "glm4_moe_lite":  # aux-loss-free balancing moved the correction bias
        bias = model.model.layers[1].mlp.gate.e_score_correction_bias
        assert bias.abs().sum() > 0

    # Cached: a second call reuses it.
    again: list[str] = []
    assert ensure_teacher(family, "smoke", seed=0, log=again.append) == path
    assert any("cached" in line for line in again)

    # The trained teacher converts, and the masked student reproduces it.
    student_dir = convert(path, tmp_path / "student", log=lambda *_: None)
    masked = AutoModelForCausalLM.from_pretrained(student_dir, mask_zero_experts=True).eval()
    ids = tok([chat_prompt("What is 2 + 2?")], return_tensors="pt", add_special_tokens=False)[
        "input_ids"
    ]
    with torch.no_grad():
        assert (masked(input_ids=ids).logits - model(input_ids=ids).logits).abs().max() <= 1e-5
    assert (student_dir / "tokenizer.json").is_file()


@pytest.mark.slow
def test_training_is_reproducible(tmp_path):
    a = train_teacher("qwen3_moe", PRESETS["smoke"], tmp_path / "a", seed=3, log=lambda *_: None)
    b = train_teacher("qwen3_moe", PRESETS["smoke"], tmp_path / "b", seed=3, log=lambda *_: None)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_unknown_preset_and_family_are_named():
    with pytest.raises(ValueError, match="teacher preset 'huge'"):
        ensure_teacher("qwen3_moe", "huge")
    with pytest.raises(ValueError, match="family='llama'"):
        train_teacher("llama", PRESETS["smoke"], None)


def test_recipe_overrides_are_checked_and_cached_under_their_own_key(cache, monkeypatch, capsys):
    from zeda_rl.pretrain import __main__ as cli
    from zeda_rl.pretrain import train
    from zeda_rl.pretrain.cache import teacher_key
    from zeda_rl.pretrain.presets import with_overrides

    for argv, message in [
        (["--set", "stepz=3"], "unknown fields ['stepz']"),
        (["--set", "steps=3.5"], "steps=3.5 is not a int"),
        (["--set", "task_share=yes"], "VALUE is not JSON"),
        (["--set", "steps"], "expected FIELD=VALUE"),
        (["--set", 'task_mix={"addition": 1, "poetry": 1}'], "task_mix entries ['poetry']"),
        (["--set", 'mixed_precision="fp8"'], "'fp32' or 'bf16'"),
        (["--set", 'task_loss="prompt"'], "'all' or 'response'"),
        (["--set", "min_lr_ratio=1.5"], "min_lr_ratio=1.5 must be in [0, 1]"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--family", "qwen3_moe", "--preset", "smoke", *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, argv

    # The GLM twin's own overrides apply first, the command line's on top of them.
    base = PRESETS["cpu-fine"]
    tuned = with_overrides(base.for_family("glm4_moe_lite"), {"task_share": 0.9, "steps": 900})
    assert (tuned.steps, tuned.task_share, tuned.anneal_steps) == (900, 0.9, 800)
    assert teacher_key("glm4_moe_lite", tuned, 0) != teacher_key("glm4_moe_lite", base, 0)
    # No override: the same key as the preset's (its cached teacher is reused).
    assert teacher_key("glm4_moe_lite", base.for_family("glm4_moe_lite"), 0) == teacher_key(
        "glm4_moe_lite", base, 0
    )

    trained = []

    def fake_train(family, preset, out_dir, seed=0, log=print):
        trained.append(preset)
        out_dir.mkdir(parents=True)
        (out_dir / "report.json").write_text("{}")

    monkeypatch.setattr(train, "train_teacher", fake_train)
    path = ensure_teacher("qwen3_moe", "smoke", overrides={"steps": 4, "task_share": 1})
    assert trained[0].steps == 4 and trained[0].task_share == 1
    assert path != teacher_dir("qwen3_moe", "smoke", 0)
    assert ensure_teacher("qwen3_moe", "smoke", overrides={"steps": 4, "task_share": 1}) == path
    assert len(trained) == 1  # the variant is cached


def test_recipe_fields_added_later_keep_the_cached_teachers_keys():
    """Fields added to the recipe after teachers were cached stay out of the key at their
    old behaviour's value: the cached teachers (and every result measured on them) stay."""
    from dataclasses import replace

    from zeda_rl.pretrain.cache import LATER_FIELDS, teacher_key

    base = PRESETS["cpu"]
    key = teacher_key("qwen3_moe", base, 0)
    assert key == "qwen3_moe-cpu-s0-587820a29b"  # the keys cached since 2026-11-28 / 12-06
    fine = PRESETS["cpu-fine"]
    glm_fine = teacher_key("glm4_moe_lite", fine, 0)
    assert glm_fine == "glm4_moe_lite-cpu-fine-s0-0ea390ef8b"
    for field, old_value in LATER_FIELDS.items():
        assert getattr(base, field) == old_value
        assert getattr(fine.for_family("glm4_moe_lite"), field) == old_value
    # The first cpu-fine recipe, given on the command line, finds the teacher it cached.
    from zeda_rl.pretrain.presets import FIRST_CPU_FINE_RECIPE as first_fine
    from zeda_rl.pretrain.presets import with_overrides

    assert (
        teacher_key("qwen3_moe", with_overrides(fine.for_family("qwen3_moe"), first_fine), 0)
        == "qwen3_moe-cpu-fine-s0-7f827f1161"
    )
    assert teacher_key("qwen3_moe", replace(base, min_lr_ratio=0.0), 0) != key
    assert teacher_key("qwen3_moe", replace(base, task_loss="response"), 0) != key


def test_response_only_loss_counts_the_answers_alone():
    from dataclasses import replace

    from zeda_rl.data.tokenizer import ASSISTANT, USER, train_tokenizer
    from zeda_rl.pretrain.train import build_token_data, language_model_loss, sample_batch

    preset = replace(PRESETS["smoke"], task_loss="response", task_share=1.0, examples_per_task=50)
    texts = [f"What is {a} + {b}?" for a in range(30) for b in range(3)]
    tok = train_tokenizer(texts, 300)
    data = build_token_data(preset, tok, seed=0, log=lambda *_: None)
    batch, counted = sample_batch(data, preset, torch.Generator().manual_seed(0))
    assert batch.shape == counted.shape and 0 < counted.float().mean() < 1
    user, assistant = tok.convert_tokens_to_ids([USER, ASSISTANT])
    for row, mask in zip(batch.tolist(), counted.tolist(), strict=True):
        in_response = False
        for token, is_counted in zip(row, mask, strict=True):
            if token == user:
                in_response = False
            assert is_counted == in_response, (row, mask)
            if token == assistant:
                in_response = True
    # Every row counts every token under the default recipe.
    _, all_counted = sample_batch(data, replace(preset, task_loss="all"), torch.Generator())
    assert bool(all_counted.all())

    # The loss is HF's causal-LM loss with the uncounted targets ignored.
    torch.manual_seed(0)
    from zeda_rl.pretrain.train import build_config

    model = AutoModelForCausalLM.from_config(build_config("qwen3_moe", preset, tok)).eval()
    labels = batch.masked_fill(~counted, -100)
    with torch.no_grad():
        expected = model(input_ids=batch, labels=labels).loss
        got = language_model_loss(model, batch, counted)
        every = language_model_loss(model, batch, torch.ones_like(counted))
    assert got == pytest.approx(expected.item(), rel=1e-5)
    assert every == pytest.approx(model(input_ids=batch, labels=batch).loss.item(), rel=1e-6)
    assert abs(got.item() - every.item()) > 1e-3
