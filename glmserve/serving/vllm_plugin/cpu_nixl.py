"""NIXL on CPU engines: no busy-polling progress thread.

NIXL's UCX backend starts a progress thread that polls its sockets with a zero timeout,
forever: measured here, every idle prefill or decode engine burned 75% of a core, which on
a small machine starves the engines themselves (and everything else). vLLM's NIXL worker
already drives transfers and notifications from each engine step, so CPU engines run the
agent without that thread. GPU engines keep NIXL's default.
Upstream fix: make `enable_prog_thread` configurable through `kv_connector_extra_config` in
`vllm/distributed/kv_transfer/kv_connector/v1/nixl/base_worker.py`.
"""

from __future__ import annotations

import importlib
from typing import Any


def quiet_agent_config(*args: Any, **kwargs: Any) -> Any:
    from vllm.distributed import nixl_utils

    real = importlib.import_module(nixl_utils._get_nixl_module_name("nixl_agent_config")).nixl_agent_config
    kwargs.setdefault("enable_prog_thread", False)
    return real(*args, **kwargs)


def apply() -> None:
    from vllm.distributed import nixl_utils
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or not nixl_utils.is_nixl_available():
        return
    # nixl_utils resolves its names lazily through __getattr__; a module global takes precedence,
    # and vLLM's NIXL worker imports the name from there when it is first loaded.
    nixl_utils.nixl_agent_config = quiet_agent_config
