"""The Hydra app runs what exists end-to-end on the tiny model and rejects bad config early."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _launch(
    tmp_path, *overrides: str, env_extra: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zeda_rl.launch", *overrides, f"hydra.run.dir={tmp_path}/run"],
        env={**os.environ, **(env_extra or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_moe", "glm4_moe_lite"])
def test_tiny_experiment_runs(tmp_path, family):
    result = _launch(
        tmp_path,
        "+experiment=tiny",
        f"model.family={family}",
        "model.source=random",
        "stage1.enabled=false",
        "stage2.enabled=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["parity_max_abs_diff_masked"] <= 1e-5
    assert 0.0 < summary["zero_expert_ratio_random_tokens"] < 1.0
    assert summary["gal_target_zero_ratio"] == 0.5
    assert (tmp_path / "run" / "student" / "config.json").exists()


@pytest.mark.slow
def test_trained_teacher_source_with_evaluation(tmp_path, launch_cache):
    """source=teacher trains (smoke preset) or reuses the teacher, then evaluates before adaptation."""
    result = _launch(
        tmp_path,
        "+experiment=tiny",
        "model.teacher_preset=smoke",
        "stage1.enabled=false",
        "stage2.enabled=false",
        "eval.top_p_baselines=[0.5]",
        "eval.frontier=false",
        env_extra={"ZEDA_CACHE_DIR": str(launch_cache)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    before = summary["eval_before_adaptation"]
    assert set(before) == {"teacher", "student", "top_p_0.5"}
    assert before["teacher"]["zero_expert_ratio"] == 0.0
    assert before["student"]["zero_expert_ratio"] > 0.0
    assert before["student"]["reverse_kl"] >= 0.0
    # The Top-P baseline skips picks (its teacher keeps at least one expert per token).
    assert 0.0 < before["top_p_0.5"]["zero_expert_ratio"] < 1.0
    assert before["top_p_0.5"]["reverse_kl"] >= 0.0
    assert "top-p 0.5 (base)" in result.stdout
    assert (tmp_path / "run" / "eval_student" / "report.md").is_file()
    assert (tmp_path / "run" / "eval_top_p_0.5" / "report.md").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+experiment=glm47"], "model.source"),
        (
            ["+experiment=tiny", "model.family=mixtral"],
            "model.family=mixtral: expected one of [qwen3_moe, glm4_moe_lite]",
        ),
        (["+experiment=tiny", "model.source=/nonexistent"], "model.source='/nonexistent'"),
        (["+experiment=tiny", "group_aux_loss.zero_expert_weight=0"], "zero_expert_weight"),
        (["+experiment=tiny", "model.teacher_preset=huge"], "model.teacher_preset='huge'"),
        (
            ["+experiment=tiny", "eval.suite=everything"],
            "eval.suite=everything: expected one of [tiny, full, benchmarks]",
        ),
        (["+experiment=tiny", "eval.top_p_baselines=[0.5,1.5]"], "[1.5] not in (0, 1]"),
        (["+experiment=tiny", "eval.frontier_top_p=[0]"], "eval.frontier_top_p=[0.0]"),
        (["+experiment=tiny", "stage2.betas=[0.9,1.0]"], "stage2.betas=[0.9, 1.0]"),
        (["+experiment=tiny", "eval.frontier_items=1"], "eval.frontier_items=1"),
        (["+experiment=tiny", "stage2.loss=kl"], "stage2.loss=kl: expected one of [opd, topk_kl]"),
        (["+experiment=tiny", "eval.frontier_dial=[0]"], "eval.frontier_dial=[0.0]"),
        (["+experiment=tiny", "weight_sync.check_outlier_share=1"], "check_outlier_share=1"),
        (
            ["+experiment=tiny", "stage2.kl_positions=prompt"],
            "stage2.kl_positions=prompt: expected one of [response, all]",
        ),
        (
            ["+experiment=tiny", "stage2.loss=topk_kl", "stage2.teacher_top_k=512"],
            "stage2.teacher_top_k=512",
        ),
        (["+experiment=tiny", "teacher.temperature=0.7"], "teacher.temperature=0.7"),
        (["+experiment=tiny", "trainer.expert_parallel=3"], "trainer.expert_parallel=3"),
        (
            ["+experiment=tiny", "trainer.backend=deepspeed"],
            "trainer.backend=deepspeed: expected one of [torch, megatron]",
        ),
        (
            ["+experiment=tiny", "trainer.backend=megatron", "trainer.tensor_parallel=2"],
            "trainer.tensor_parallel=2",
        ),
        (
            [
                "+experiment=tiny",
                "trainer.backend=megatron",
                "trainer.num_workers=1",
                "trainer.expert_parallel=2",
            ],
            "trainer.expert_parallel=2 must divide trainer.num_workers=1",
        ),
        (["+experiment=tiny", "trainer.num_workers=8"], "resources offer 2"),
        (["+experiment=tiny", "resources.gpus_per_node=0", "rollout.gpus_per_worker=1"], "GPUs"),
        (["+experiment=tiny", "+prompts.mix.poetry=5"], "unknown tasks ['poetry']"),
        (["+experiment=tiny", "trainer.micro_batch_size=0"], "trainer.micro_batch_size=0"),
        (["+experiment=tiny", "stage1.global_batch=1"], "stage1.global_batch=1"),
        (
            ["+experiment=tiny", "resources.layout=ring"],
            "resources.layout=ring: expected one of [colocated, separate]",
        ),
        (
            ["+experiment=tiny", "weight_sync.method=rdma"],
            "weight_sync.method=rdma: expected one of [object_store, gloo, nccl, ipc]",
        ),
        (["+experiment=tiny", "weight_sync.method=nccl"], "weight_sync.method='nccl'"),
        (
            ["+experiment=tiny", "kernels.experts_backend=cutlass"],
            "experts_backend=cutlass: expected one of [auto, torch, triton, te]",
        ),
        (
            ["+experiment=tiny", "kernels.experts_backend=triton"],
            "neither the rollouts nor the trainer have GPUs",
        ),
        (
            ["+experiment=glm47", "dry_run=true", "model.family=qwen3_moe"],
            "model.architecture='glm47' is a glm4_moe_lite model",
        ),
    ],
)
def test_bad_config_fails_before_work(overrides, message):
    """Composed and validated in-process, as the launcher does before any work."""
    from zeda_rl.launch import checked_config

    with pytest.raises(Exception) as error:
        checked_config(_compose(*overrides))
    assert message in _refusal(error.value)


def _refusal(err: BaseException) -> str:
    """What a user reads: validation's message, or for a value outside a field's choices
    (an enum OmegaConf checks while composing) the override and the choices."""
    from hydra.errors import ConfigCompositionException

    if isinstance(err, ConfigCompositionException) and err.__cause__ is not None:
        override = str(err).removeprefix("Error merging override ")
        reason = str(err.__cause__).splitlines()[0]
        return f"{override}: {reason.split(', ', 1)[-1]}"
    return str(err)


def test_a_refused_config_is_one_line_and_exit_code_2(tmp_path):
    """Through the real launcher: one line naming the field, no traceback, and a refused
    relaunch into an existing run's folder leaves its record (.hydra/) as it was."""
    record = tmp_path / "run" / ".hydra"
    record.mkdir(parents=True)
    (record / "overrides.yaml").write_text("- the run's own record\n")
    result = _launch(tmp_path, "+experiment=tiny", "stage2.lr=-1")
    assert result.returncode == 2
    assert result.stderr.strip() == "zeda_rl: bad config: stage2.lr=-1.0: a learning rate > 0"
    assert "Traceback" not in result.stdout + result.stderr
    assert {p.name for p in (tmp_path / "run").iterdir()} <= {".hydra", "launch.log"}
    assert [p.name for p in record.iterdir()] == ["overrides.yaml"]
    assert (record / "overrides.yaml").read_text() == "- the run's own record\n"


@pytest.mark.parametrize("experiment", ["qwen3_30b_a3b", "glm47"])
def test_big_presets_plan_without_weights(tmp_path, experiment):
    """dry_run validates the 8-GPU preset and prints its memory plan; nothing is loaded."""
    result = _launch(tmp_path, f"+experiment={experiment}", "dry_run=true")
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["gpus_needed"] == 8
    assert plan["machines"]["8x H200"]["fits"] is True
    assert plan["machines"]["4x H200"]["why_not"] == ["needs 8 GPUs"]
    assert 29 < plan["parameters_billion"]["total"] < 32
    assert "8x H200 (141 GiB each): fits" in result.stdout
    assert not (tmp_path / "run" / "student").exists()
    # The launcher's record of the call, as Hydra writes it (bench/ reads it back).
    record = tmp_path / "run" / ".hydra"
    assert f"+experiment={experiment}" in (record / "overrides.yaml").read_text()
    assert "dry_run: true" in (record / "config.yaml").read_text()
    assert (record / "hydra.yaml").exists() and not (tmp_path / "run" / ".hydra.tmp").exists()


def test_wandb_sweep_file_names_real_config_fields(tmp_path):
    import yaml
    from omegaconf import OmegaConf

    from zeda_rl.config import RunConfig

    sweep = yaml.safe_load(Path("conf/sweep/gal.yaml").read_text())
    schema = OmegaConf.structured(RunConfig)
    overrides = []
    for key, spec in sweep["parameters"].items():
        assert OmegaConf.select(schema, key) is not None, key
        overrides.append(f"{key}={spec['values'][-1]}")
    assert sweep["command"][-1] == "${args_no_hyphens}"  # Hydra's key=value form
    result = _launch(tmp_path, "+experiment=tiny", "dry_run=true", *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "zero_expert_weight: 4.0" in result.stdout


def test_fine_grained_experiment_composes_on_tiny(tmp_path):
    """+experiment=tiny_fine is the tiny experiment with the cpu-fine teacher and a prompt
    mix over every task family it learned (validated, nothing trained)."""
    result = _launch(tmp_path, "+experiment=tiny_fine", "dry_run=true")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "teacher_preset: cpu-fine" in result.stdout
    assert "chain: 512" in result.stdout and "frontier: true" in result.stdout
    assert "max_new_tokens: 96" in result.stdout


def _compose(*overrides: str):
    """The launcher's config for ``overrides``, composed in-process (no subprocess)."""
    from hydra import compose, initialize_config_dir

    from zeda_rl.config import register_configs

    register_configs()
    conf_dir = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_prompt_mix_takes_the_obvious_override():
    """`prompts.mix={gsm:512}` adds a family the experiment did not name (struct mode used
    to refuse it), and a count of 0 drops one."""
    from zeda_rl.config import active_mix
    from zeda_rl.validation import validate

    cfg = _compose("+experiment=tiny", "prompts.mix={gsm:512,addition:0}")
    assert active_mix(cfg.prompts.mix) == {"arithmetic": 512, "gsm": 512}
    validate(cfg)
    # Elsewhere the config stays closed: a misspelt field is still an error.
    with pytest.raises(Exception, match="stage2"):
        _compose("+experiment=tiny", "stage2.stepz=3")


def test_dry_run_plan_checks_the_configured_gpus():
    """resources.gpu_memory_gib is the configured cluster's GPU memory: the plan checks it."""
    from zeda_rl.plan import ARCHITECTURES, plan

    for memory, fits in ((80, False), (141, True)):
        cfg = _compose("+experiment=glm47", f"resources.gpu_memory_gib={memory}")
        result = plan(cfg, ARCHITECTURES[cfg.model.architecture], 32)
        mine = result["machines"]["resources 1x8"]
        assert mine["gib"] == memory and mine["fits"] is fits, mine
        if not fits:
            assert "usable" in mine["why_not"][0]


@pytest.mark.parametrize(
    "override, message",
    [
        ("stage2.lr=-1", "stage2.lr=-1"),
        ("stage1.lr=0", "stage1.lr=0"),
        ("stage2.max_new_tokens=100000", "rollout.max_model_len=512"),
        ("stage1.max_new_tokens=0", "stage1.max_new_tokens=0"),
        ("logging.log_every=-1", "logging.log_every=-1"),
        ("stage2.betas=[0.9]", "stage2.betas=[0.9]"),
        ("stage2.ppo_clip=0", "stage2.ppo_clip=0.0 must be > 0"),
        ("stage2.lr_decay_ratio=1.5", "stage2.lr_decay_ratio=1.5 must be in [0, 1]"),
        ("trainer.grad_clip=-1", "trainer.grad_clip=-1.0 must be > 0"),
        ("resources.timeout_s=0", "resources.timeout_s=0.0 must be > 0"),
        ("resources.start_timeout_s=-5", "resources.start_timeout_s=-5.0 must be > 0"),
        ("resources.gpu_memory_gib=0", "resources.gpu_memory_gib=0.0 must be > 0"),
        ("rollout.kv_cache_gib=-1", "rollout.kv_cache_gib=-1 must be >= 0"),
        ("weight_sync.check_tolerance=-1", "weight_sync.check_tolerance=-1.0 must be > 0"),
        ("resources.num_nodes=0", "resources.num_nodes=0 must be >= 1"),
        ("resources.cpus_per_node=0", "resources.cpus_per_node=0.0 must be > 0"),
        ("seed=-1", "seed=-1 must be >= 0"),
        # Injected faults: the spec, the kind, the target, the pool's size.
        ("faults.stage2=[trainer-0@3]", "faults.stage2: 'trainer-0@3' is not <kind>:<target>"),
        ("faults.stage2=[explode:trainer-0@3]", "unknown kind 'explode'"),
        ("faults.stage2=[hang:trainer-0@3]", "hang takes rollout-<rank> or teacher-<rank>"),
        ("faults.stage2=[kill:driver@3]", "kill takes rollout-<rank> or teacher-<rank> or"),
        ("faults.stage2=[kill:trainer-2@3]", "'kill:trainer-2@3': the run has 2 trainer actor"),
        ("faults.stage2=[sigterm:driver-0@1]", "sigterm takes driver"),
    ],
)
def test_bad_values_are_refused_in_process(override, message):
    """Checked as the launcher checks (no subprocess): the message names the field."""
    from zeda_rl.launch import checked_config
    from zeda_rl.validation import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        checked_config(_compose("+experiment=tiny", override))
