"""The environment tritonserver needs so that the Python backend runs this interpreter."""

from __future__ import annotations

import os
import sys
import sysconfig

from .installation import site_packages


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver (and perf_analyzer) so the Python backend runs this interpreter.

    PATH starts with the folder of ``sys.executable`` (the stub finds site-packages through the
    ``python3`` on PATH); LD_LIBRARY_PATH starts with the base interpreter's LIBDIR (the stub embeds
    whichever libpython the linker finds first), ``nvidia_pytriton.libs`` and, when installed,
    ``nvidia/cuda_runtime/lib`` (perf_analyzer). PYTHONPATH is dropped: the backend ignores it.
    """
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONPATH", None)
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
    site = site_packages()
    libs = [sysconfig.get_config_var("LIBDIR"), site / "nvidia_pytriton.libs"]
    cuda_runtime = site / "nvidia" / "cuda_runtime" / "lib"
    if cuda_runtime.is_dir():
        libs.append(cuda_runtime)
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(str(p) for p in libs if p)
    return env
