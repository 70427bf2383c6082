"""An engine replica's logging, set up before Serve's: Ray runs `configure` in the replica's worker
process before the replica actor exists (`RUNTIME_ENV`, the engine deployments' runtime env).

vLLM and NIXL each set up logging with `logging.config.dictConfig`, which closes every handler the
process has. Run inside the replica, that closes Serve's replica log handler: its `MemoryHandler`
loses its target, the replica's log lines are dropped, and a restarted Serve controller (after the
Ray head returns) fails the replica's `is_allocated()` on it and replaces a healthy engine. Both
set up here, before Serve's handler exists, neither runs again: vLLM skips a logging config it
already applied, and NIXL configures once per process.
"""

from __future__ import annotations

import importlib

from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

SETUP_HOOK = f"{__name__}.configure"
# Ray 2.60 turns only ray.init's `worker_process_setup_hook` into this variable, which its worker
# reads at start; an actor's own runtime env must set the variable itself.
RUNTIME_ENV = {"env_vars": {WORKER_PROCESS_SETUP_HOOK_ENV_VAR: SETUP_HOOK}}


def configure() -> None:
    from vllm.config.logging import LoggingConfig
    from vllm.distributed import nixl_utils
    from vllm.logger import configure_logging

    configure_logging(LoggingConfig())
    if nixl_utils.is_nixl_available():
        importlib.import_module(nixl_utils._get_nixl_package_name())  # sets up NIXL's logging on import
