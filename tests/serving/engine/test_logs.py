"""An engine replica keeps Serve's log handler through vLLM's and NIXL's logging setup when Ray runs
`glmserve.serving.engine.logs.configure` first (Ray's worker setup hook, set in the engine deployments' runtime env)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

from glmserve.serving.engine.logs import SETUP_HOOK
from glmserve.serving.tiny.create import create_tiny, default_cache_dir
from tests.serving.test_topology import ROUTER, local, rayservice

# A fresh process for each case: the setup changes the process's logging for good. What a replica
# does, in its order: Ray's setup hook (when given), Serve's replica logger, then Ray Serve LLM's
# engine config with the NIXL connector (vLLM's plugins, NIXL's import); then what the restarted
# controller's `is_allocated()` reads.
REPLICA = textwrap.dedent(
    """
    import logging, logging.handlers, sys, tempfile
    if sys.argv[2] == "hook":
        from glmserve.serving.engine.logs import configure
        configure()
    from ray.serve._private.common import ServeComponentType
    from ray.serve._private.logging_utils import configure_component_logger
    from ray.serve.schema import LoggingConfig
    configure_component_logger(component_name="Decode", component_id="r1", component_type=ServeComponentType.REPLICA,
        logging_config=LoggingConfig(logs_dir=tempfile.mkdtemp()), max_bytes=2**20, backup_count=1)
    (handler,) = [h for h in logging.getLogger("ray.serve").handlers if isinstance(h, logging.handlers.MemoryHandler)]
    from vllm.engine.arg_utils import AsyncEngineArgs
    AsyncEngineArgs(model=sys.argv[1], enforce_eager=True,
        kv_transfer_config={"kv_connector": "NixlConnector", "kv_role": "kv_consumer"}).create_engine_config()
    print("TARGET", type(handler.target).__name__, file=sys.__stdout__)
    """
)


def _serve_handler_target(checkpoint: str, hook: bool) -> str:
    ran = subprocess.run(
        [sys.executable, "-c", REPLICA, checkpoint, "hook" if hook else "none"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return next(line.split()[1] for line in ran.stdout.splitlines() if line.startswith("TARGET"))


@pytest.mark.slow  # two vLLM engine configs, ~20 s
def test_the_setup_hook_keeps_serves_replica_log_handler() -> None:
    checkpoint = str(create_tiny(default_cache_dir(), progress=lambda _: None))
    # Without it, the logging setup closes Serve's handler (a closed MemoryHandler has no target).
    assert _serve_handler_target(checkpoint, hook=False) == "NoneType"
    assert _serve_handler_target(checkpoint, hook=True) == "RotatingFileHandler"


def test_both_paths_run_the_setup_hook_in_every_engine_replica() -> None:
    for topology in (rayservice(ROUTER), local(ROUTER)):
        for engine in topology.engines.values():
            assert engine.llm_config.runtime_env == {"env_vars": {WORKER_PROCESS_SETUP_HOOK_ENV_VAR: SETUP_HOOK}}
