"""The pools against a live cluster's nodes (validate_cluster, in-process with the node lists
``ray.nodes()`` reports) and the bundles and strategy the placement group gets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.test_launch import _compose

REPO = Path(__file__).resolve().parents[1]

HEAD = {"CPU": 2.0, "memory": 8e9, "node:127.0.0.1": 1.0, "head": 10.0}
WORKER = {"CPU": 2.0, "memory": 8e9, "node:127.0.0.2": 1.0, "other": 10.0}


def _cfg(*overrides: str):
    from zeda_rl.launch import checked_config

    return checked_config(
        _compose("+experiment=tiny", "model.source=random", "ray.address=auto", *overrides)
    )


def test_pools_spread_over_two_nodes_by_custom_resources():
    from zeda_rl.pools.placement import placement_strategy, pool_bundles
    from zeda_rl.validation import validate_cluster

    cfg = _cfg(
        "rollout.custom_resources={other:1}",
        "teacher.custom_resources={head:1}",
        "trainer.custom_resources={head:1}",
        "resources.placement=SPREAD",
    )
    bundles = pool_bundles(cfg)
    assert bundles[0] == {"CPU": 0.5, "other": 1.0}
    assert all(b.get("head") == 1.0 for b in bundles[1:])
    assert placement_strategy(cfg) == "SPREAD"
    validate_cluster(cfg, [HEAD, WORKER])  # fits: nothing raised


@pytest.mark.parametrize(
    ("overrides", "nodes", "message"),
    [
        ([], [{"CPU": 1.0}], "the pools ask for 2 CPU"),
        (
            ["resources.num_nodes=3"],
            [HEAD, WORKER],
            "resources.num_nodes=3 but the Ray cluster has 2",
        ),
        (["rollout.custom_resources={tpu_host:1}"], [HEAD, WORKER], "1 tpu_host"),
        (["trainer.gpus_per_worker=1", "resources.gpus_per_node=1"], [HEAD, WORKER], "GPU"),
        (["trainer.cpus_per_worker=3"], [{"CPU": 2.0}] * 4, "no node of the Ray cluster holds"),
        (["resources.placement=STRICT_PACK"], [{"CPU": 1.5}, {"CPU": 1.5}], "STRICT_PACK"),
    ],
)
def test_a_cluster_without_the_resources_is_refused(overrides, nodes, message):
    from zeda_rl.validation import ConfigError, validate_cluster

    cfg = _cfg(*overrides)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate_cluster(cfg, nodes)


def test_prompts_longer_than_the_context_are_refused():
    from zeda_rl.validation import ConfigError, validate_prompt_lengths

    cfg = _cfg("rollout.max_model_len=256", "teacher.max_model_len=512")
    validate_prompt_lengths(cfg, 100)  # 100 + 48 fits both
    with pytest.raises(ConfigError, match="stage2.max_new_tokens=48 exceeds rollout.max_model"):
        validate_prompt_lengths(cfg, 220)  # stage 1 (the teacher's 512) fits; stage 2 not


def test_joining_a_cluster_skips_the_local_core_count():
    """resources.cpus_per_node describes this machine; a joined cluster is checked live."""
    cfg = _cfg("trainer.num_workers=8")
    assert cfg.trainer.num_workers == 8  # validate() passed: the live check decides


@pytest.mark.slow
def test_pipeline_across_two_nodes_of_an_existing_cluster(tmp_path, launch_cache):
    """A two-node Ray cluster on this machine (the test starts and stops it); the tiny
    pipeline, sent as a Ray job (`ray job submit --working-dir`: the code travels with the
    job), joins it (ray.address=auto) with the rollout engine forced onto the second node
    by a custom resource: both stages run, weights reach the other node, the logprob check
    after each sync passes; a relaunch from this process resumes from the run's
    checkpoint, syncing over gloo across the nodes. A run that asks for more than the
    cluster has is refused before any actor starts."""
    import json
    import os
    import subprocess

    from ray.cluster_utils import Cluster

    from tests.test_pipeline import COMMON, _stage_steps
    from zeda_rl.trainer.distributed import free_port

    # Free ports for the dashboard and its agents: a Ray cluster the user already runs on
    # this machine holds the defaults (8265, 52365), and jobs need the agent.
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 2,
            "resources": {"head": 10},
            "include_dashboard": True,
            "dashboard_port": free_port(),
            "dashboard_agent_listen_port": free_port(),
        },
    )
    try:
        # Its own runtime-env folder, as a second machine would have: two nodes unpacking the
        # job's code into one shared path replace the folder the job's driver runs in.
        cluster.add_node(
            num_cpus=1,
            resources={"other": 10},
            runtime_env_dir_name="runtime_resources_other",
            dashboard_agent_listen_port=free_port(),
        )
        cluster.wait_for_nodes()
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "ZEDA_CACHE_DIR": str(launch_cache)}
        run_dir = tmp_path / "run"

        def command(*overrides: str, folder=run_dir) -> list[str]:
            return [
                sys.executable,
                "-m",
                "zeda_rl.launch",
                *COMMON,
                "ray.address=auto",
                "resources.num_nodes=2",
                "rollout.custom_resources={other:1}",
                "teacher.custom_resources={head:1}",
                "trainer.custom_resources={head:1}",
                "weight_sync.check_logprobs=true",
                *overrides,
                f"hydra.run.dir={folder}",
            ]

        def launch(*overrides: str, folder=run_dir) -> subprocess.CompletedProcess:
            return subprocess.run(
                command(*overrides, folder=folder),
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )

        # Refused by the live cluster, after the config's own checks: a relaunch into a
        # run's folder leaves that run's record (.hydra/) as it was.
        record = tmp_path / "refused" / ".hydra"
        record.mkdir(parents=True)
        (record / "overrides.yaml").write_text("- the run's own record\n")
        refused = launch("resources.num_nodes=3", folder=tmp_path / "refused")
        assert refused.returncode == 2, refused.stderr[-4000:]
        assert "resources.num_nodes=3 but the Ray cluster has 2" in refused.stderr
        assert not (tmp_path / "refused" / "checkpoints").exists()
        assert (record / "overrides.yaml").read_text() == "- the run's own record\n"
        assert not (tmp_path / "refused" / ".hydra.previous").exists()

        # The job carries the code (a copy of the repository, .gitignore'd paths left out) and
        # the cache folder; its driver runs on the head from that copy.
        job_env = {"env_vars": {"ZEDA_CACHE_DIR": str(launch_cache)}}
        dashboard = cluster.head_node.address_info["webui_url"]
        first = subprocess.run(
            [
                str(Path(sys.executable).parent / "ray"),
                "job",
                "submit",
                f"--address=http://{dashboard}",
                f"--working-dir={REPO}",
                f"--runtime-env-json={json.dumps(job_env)}",
                "--",
                *command("stage2.steps=2"),
            ],
            env={**os.environ, "RAY_ADDRESS": f"http://{dashboard}"},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
        assert "succeeded" in first.stdout, first.stdout[-4000:]
        pipe = json.loads((run_dir / "summary.json").read_text())["pipeline"]
        assert pipe["stage2"]["last"]["sync_logprob_max_diff"] < 1e-3
        # The resume syncs through vLLM's weight transfer API over gloo instead of the object
        # store: a process group from the trainer's node to the engine's.
        again = launch("stage2.steps=3", "checkpoint.resume=true", "weight_sync.method=gloo")
        assert again.returncode == 0, again.stderr[-4000:]
        assert _stage_steps(run_dir, "stage2") == [0, 1, 2]
        pipe = json.loads((run_dir / "summary.json").read_text())["pipeline"]
        assert pipe["stage2"]["last"]["sync_logprob_max_diff"] < 1e-3
    finally:
        cluster.shutdown()
