"""Launch torchrun on loopback with a free port, with a hard timeout and no stray processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


def torchrun(script: str, args: list[str], nproc: int = 2, env: dict[str, str] | None = None,
             timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``script`` on ``nproc`` local ranks; kill the whole process group on timeout.

    Returns the completed process; raises ``AssertionError`` if any process of
    the launch is still alive afterwards.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--nnodes=1",
           "--node-rank=0", "--master-addr=127.0.0.1", f"--master-port={free_port()}",
           "--max-restarts=0", script, *args]
    full_env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                    TORCHELASTIC_ERROR_FILE="", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
                            start_new_session=True)
    pgid = proc.pid
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"torchrun timed out after {timeout}s:\n{out[-4000:]}") from None
    finally:
        deadline = time.time() + 10
        while _group_alive(pgid) and time.time() < deadline:
            time.sleep(0.1)
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
            raise AssertionError("stray processes were left by torchrun (killed)")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)
