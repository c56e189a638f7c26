"""Ray on demand: imported only where the cluster is asked for, joined or started once.

Without Ray installed every cluster entry point raises one `TalError` line naming the
``cluster`` extra; the rest of the toolkit never imports Ray. `connect` joins the cluster at
``address`` (``ray://head:10001`` or ``head:6379``), else at ``RAY_ADDRESS``, else starts a
local Ray on this machine (no dashboard), so one machine needs no setup.
"""
from __future__ import annotations

import os
from types import ModuleType

from ..errors import TalError

INSTALL_HINT = "pip install 'tal-reid[cluster]'"
NAMESPACE = "tal-reid"  # the Ray namespace of the toolkit's actors and Serve application
# Ray Serve kills an HTTP proxy that is not ready 5 s after it was scheduled, and `serve.start`
# then fails; on a busy machine starting the proxy's worker process takes longer than that. A
# local Ray started here inherits these settings (unless the environment sets them already);
# a cluster joined by address keeps its own.
LOCAL_RAY_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}


def require_ray(part: str = "") -> ModuleType:
    """The ``ray`` module (or ``ray.<part>``, e.g. "serve", "data"); `TalError` without it."""
    name = f"ray.{part}" if part else "ray"
    try:
        import importlib

        return importlib.import_module(name)
    except ImportError:
        raise TalError(f"the cluster features need Ray ({name} cannot be imported): "
                       f"{INSTALL_HINT}, the cluster extra") from None


def connect(address: str | None = None, num_cpus: int | None = None) -> ModuleType:
    """Ray, initialized: already initialized as it is; else joined to ``address`` (or
    ``RAY_ADDRESS``); else a local Ray with ``num_cpus`` CPUs (None: all)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
        else:
            for name, value in LOCAL_RAY_ENV.items():
                os.environ.setdefault(name, value)
            ray.init(num_cpus=num_cpus, include_dashboard=False, namespace=NAMESPACE,
                     log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = address or "a local Ray"
        raise TalError(f"cannot start or join {where}: {str(err).splitlines()[0]}") from None
    return ray
