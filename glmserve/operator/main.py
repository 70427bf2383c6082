"""The operator process: `kopf run -m glmserve.operator.main --all-namespaces --peering=glmserve`.

Two replicas are safe: with peering, the one with the highest priority works and the others wait
(kopf pauses all operators of equal priority, so each replica draws its own at start-up unless
given one with --priority).
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import kopf
import kubernetes

from glmserve.common.errors import ConfigError
from glmserve.common.resource import GROUP
from glmserve.operator import handlers  # noqa: F401  (registers the handlers)
from glmserve.operator.cluster import Cluster, load_config
from glmserve.operator.reconciler import Reconciler
from glmserve.operator.settings import OperatorSettings

PRIORITY_RANGE = (1, 32767)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    if not settings.peering.priority:  # `kopf run --priority N` wins
        settings.peering.priority = random.randint(*PRIORITY_RANGE)
    # Handler progress lives in annotations: our CRDs' status schemas have no room for kopf's.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Events only for what users act on (our condition transitions); routine logs stay in the log.
    settings.posting.level = logging.WARNING
    load_config()
    memo.discovery_dir = tempfile.mkdtemp(prefix="glmserve-operator-")
    cluster = Cluster(kubernetes.client.ApiClient(), str(Path(memo.discovery_dir) / "discovery.json"))
    try:
        memo.reconciler = Reconciler(cluster, OperatorSettings.from_env())
    except ConfigError as exc:  # a wrong setting needs a human; retrying cannot help
        raise kopf.PermanentError(exc.message) from None


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    shutil.rmtree(memo.discovery_dir, ignore_errors=True)
