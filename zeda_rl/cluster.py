"""The run's Ray: a private local instance, or an existing cluster it joins (``ray.address``).

A local instance is started with this machine's (or ``resources.cpus_per_node``) CPUs and
stopped at the end. Joining a cluster (``auto`` inside a cluster or a job submission,
``ray://host:port`` through Ray Client) only connects and disconnects: the run never starts
or stops Ray there, and kills only the actors it created. Either way the pools are checked
against the live cluster's nodes before any actor starts.
"""

from __future__ import annotations

import logging

from zeda_rl.config import RunConfig

log = logging.getLogger(__name__)


def connect(cfg: RunConfig, runtime_env: dict | None = None) -> str | None:
    """Initialise Ray for this run and check that the pools fit it; returns the dashboard
    URL (None when the cluster does not serve one to this driver)."""
    import ray

    from zeda_rl.validation import ConfigError, validate_cluster

    if cfg.ray.address is None:
        ctx = ray.init(
            num_cpus=cfg.resources.cpus_per_node,
            include_dashboard=True,
            log_to_driver=False,
            ignore_reinit_error=True,
            runtime_env=runtime_env,
            # Ray's start-up lines (token auth, "Started a local Ray instance") stay out of
            # the console; the run prints the dashboard's address itself.
            logging_level=logging.ERROR,
        )
    else:
        # A job submission's runtime_env (working_dir, env vars) is the job's default: only
        # add one when the run needs its own.
        extra = {"runtime_env": runtime_env} if runtime_env else {}
        ctx = ray.init(
            address=cfg.ray.address, namespace=cfg.ray.namespace, log_to_driver=False, **extra
        )
        log.info("joined the Ray cluster at %s", cfg.ray.address)
    try:
        validate_cluster(cfg, live_nodes())
    except ConfigError:
        ray.shutdown()  # a joined cluster is only left, never stopped
        raise
    url = getattr(ctx, "dashboard_url", None)
    return f"http://{url}" if url else None


def live_nodes() -> list[dict[str, float]]:
    """The resources of every alive node of the connected cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
