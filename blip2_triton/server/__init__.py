"""Running the real tritonserver (from the ``nvidia-pytriton`` wheel) on a model repository.

``TritonServer`` is the process; the modules below it each do one job: ``installation`` (where
the server and our Python-backend stub are), ``environment``, ``ports`` (and who holds one),
``access`` (bind address, HTTP, the admin key of the restricted APIs), ``log_parsing`` (why a start
failed), ``errors``, ``process_table`` (stubs, their shared memory, memory from /proc),
``guardian`` (cleans up after tritonserver if its parent dies), ``model_graph`` (who calls whom),
``lifecycle`` (serve's one state and its rules; restart budgets), ``stub_watchdog`` (notice a stub
exit), ``stub_recovery`` (reload a dead stub's model, or find its requests stuck), ``liveness``
(a real inference on a timer), ``drain`` (finish accepted work before stopping) and
``supervisor`` (the one owner of all of these). ``serve_command`` is ``blip2-triton serve``.
"""

from .environment import server_environment
from .errors import (
    ModelLoadError,
    PortInUseError,
    ServerProcessError,
    ServerStartupError,
    TritonNotInstalledError,
)
from .installation import prepare_backend_directory, tritonserver_binary, tritonserver_root
from .ports import free_port, free_ports, port_in_use
from .process import TritonServer

__all__ = [
    "ModelLoadError",
    "PortInUseError",
    "ServerProcessError",
    "ServerStartupError",
    "TritonNotInstalledError",
    "TritonServer",
    "free_port",
    "free_ports",
    "port_in_use",
    "prepare_backend_directory",
    "server_environment",
    "tritonserver_binary",
    "tritonserver_root",
]
