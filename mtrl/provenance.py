"""What produced a run: software versions, the machine and its numerical libraries.

Every start and every resume of a run appends one JSON object to ``provenance.jsonl`` in the run
directory (``record``). Results can differ in their last bits with another torch, numpy,
MetaWorld or MuJoCo version, another BLAS or oneDNN, another CPU instruction set or thread count,
or another device; a record names each of them:

* ``event`` (``start`` or ``resume``), ``step`` (where it started), ``time`` (UTC, ISO 8601);
* ``python``, ``platform``, ``host``;
* ``packages``: torch, numpy, gymnasium, metaworld, mujoco and mtrl versions (None where a
  package is not installed);
* ``mtrl``: the source directory, its git commit and whether tracked files differ from it
  (``dirty``), when the source is a git checkout and git runs (``git`` says why not otherwise);
* ``torch``: CUDA and cuDNN versions (None without them), the CPU capability torch dispatches to
  (``torch.backends.cpu.get_cpu_capability()``), intra- and inter-op threads, and what
  ``torch.__config__.show()`` says of BLAS, LAPACK, MKL and oneDNN;
* ``numpy``: the BLAS and LAPACK numpy was built with (``numpy.show_config``);
* ``threadpools``: the BLAS and OpenMP libraries loaded, with versions and threads, when
  ``threadpoolctl`` is installed (None otherwise);
* ``cpu``: the model name and the instruction-set flags among ``CPU_FLAGS`` (``/proc/cpuinfo``,
  Linux), ``os.cpu_count()`` and the CPUs this process may run on (its affinity mask);
* ``thread_env``: the thread and determinism environment variables that are set;
* ``device``, ``device_name`` (and ``device_capability`` on CUDA): the device the run computes on.

It costs one ``git status`` (skipped when the source is not a checkout) and a few reads of
files and attributes; the trainer stores what recording it took in ``provenance_s``
(``docs/checkpoints.md`` gives measured figures).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from mtrl.runs import PROVENANCE, append_jsonl, read_jsonl_records

__all__ = ["CPU_FLAGS", "COMPARED_PACKAGES", "collect", "git_state", "read_provenance", "record", "differences"]

#: Instruction-set flags worth naming (the rest of /proc/cpuinfo's list does not change arithmetic).
CPU_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve",
)
#: Packages whose versions ``mtrl report`` compares across the runs it reports.
COMPARED_PACKAGES = ("torch", "metaworld", "mujoco")
_THREAD_ENV = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED",
)
_TORCH_SETTINGS = ("BLAS_INFO", "LAPACK_INFO", "USE_MKL", "USE_MKLDNN", "USE_OPENMP", "USE_CUDA", "USE_CUDNN", "TORCH_VERSION")


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_state(source: Path) -> dict[str, Any]:
    """``{"commit", "dirty", "git"}`` of the checkout holding ``source``: one ``git status`` call,
    only when ``source`` is a checkout's root (its ``.git`` exists); ``git`` says why there is
    no commit otherwise. ``dirty``: tracked files differ from the commit (untracked files, such as
    run directories inside the checkout, are not looked at)."""
    if not (source / ".git").exists():
        return {"commit": None, "dirty": None, "git": "not a git checkout"}
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as err:
        return {"commit": None, "dirty": None, "git": f"git did not run: {err}"}
    if done.returncode != 0:
        return {"commit": None, "dirty": None, "git": f"git status failed: {done.stderr.strip()[:200]}"}
    lines = done.stdout.splitlines()
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
    return {"commit": None if commit == "(initial)" else commit, "dirty": any(not line.startswith("#") for line in lines), "git": "ok"}


def _cpu() -> dict[str, Any]:
    model, flags = None, None
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model name") and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and flags is None:
                    flags = set(value.split())
                if model is not None and flags is not None:
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "model": model or platform.processor() or None,
        "flags": None if flags is None else [f for f in CPU_FLAGS if f in flags],
        "count": os.cpu_count(),
        "affinity": affinity,
    }


def _torch(device: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    shown = torch.__config__.show()
    settings, libraries = {}, []
    for line in shown.splitlines():
        line = line.strip(" -")
        if line.startswith("Build settings:"):
            for part in line[len("Build settings:"):].split(", "):
                key, _, value = part.strip().partition("=")
                if key in _TORCH_SETTINGS:
                    settings[key] = value.strip(" ,")
        elif any(word in line for word in ("Math Kernel", "MKL-DNN", "oneDNN", "OpenBLAS", "LAPACK", "OpenMP", "CPU capability")):
            libraries.append(line)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info = {
        "version": torch.__version__,
        "git_version": getattr(torch.version, "git_version", None),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "libraries": libraries,
        "settings": settings,
    }
    device_info: dict[str, Any] = {"device": None if device is None else str(device), "device_name": None}
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_available():
            index = device.index if device.index is not None else torch.cuda.current_device()
            device_info["device_name"] = torch.cuda.get_device_name(index)
            device_info["device_capability"] = list(torch.cuda.get_device_capability(index))
    return info, device_info


def _numpy() -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {"version": np.__version__}
    try:
        config = np.show_config(mode="dicts") or {}
        for name, dep in (config.get("Build Dependencies") or {}).items():
            if name in ("blas", "lapack") and isinstance(dep, dict):
                out[name] = {k: dep.get(k) for k in ("name", "version", "openblas configuration") if dep.get(k) is not None}
    except (TypeError, ValueError, AttributeError):  # numpy < 1.25 has no mode="dicts"
        out["blas"] = None
    return out


def _threadpools() -> list[dict[str, Any]] | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keep = ("user_api", "internal_api", "prefix", "version", "num_threads", "threading_layer", "architecture")
    return [{k: pool.get(k) for k in keep if k in pool} for pool in threadpool_info()]


def collect(device: Any = None, event: str = "start", step: int = 0) -> dict[str, Any]:
    """One provenance record (see the module docstring) for a run computing on ``device``."""
    import mtrl

    source = Path(mtrl.__file__).resolve().parent.parent
    torch_info, device_info = _torch(device)
    cpu = _cpu()
    if device_info["device"] is not None and device_info["device"].startswith("cpu"):
        device_info["device_name"] = cpu["model"]
    numpy_info = _numpy()
    return {
        "event": event,
        "step": int(step),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(), "executable": sys.executable},
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": {
            "torch": torch_info["version"], "numpy": numpy_info["version"], "gymnasium": _version("gymnasium"),
            "metaworld": _version("metaworld"), "mujoco": _version("mujoco"), "mtrl": _version("mtrl"),
        },
        "mtrl": {"source": str(source), **git_state(source)},
        "torch": torch_info,
        "numpy": numpy_info,
        "threadpools": _threadpools(),
        "cpu": cpu,
        "thread_env": {name: os.environ[name] for name in _THREAD_ENV if name in os.environ},
        **device_info,
    }


def record(run_dir: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` to the run's ``provenance.jsonl`` (atomically)."""
    append_jsonl(Path(run_dir) / PROVENANCE, [entry])


def read_provenance(run_dir: Path) -> list[dict[str, Any]]:
    """The run's provenance records, oldest first ([] for runs written before they existed)."""
    return read_jsonl_records(Path(run_dir) / PROVENANCE)


#: What a resume compares with the previous record: a difference means the continuation may
#: differ in its last bits from what the run would have computed where it started.
_COMPARED = (
    ("torch", lambda r: (r.get("packages") or {}).get("torch")),
    ("numpy", lambda r: (r.get("packages") or {}).get("numpy")),
    ("metaworld", lambda r: (r.get("packages") or {}).get("metaworld")),
    ("mujoco", lambda r: (r.get("packages") or {}).get("mujoco")),
    ("mtrl commit", lambda r: (r.get("mtrl") or {}).get("commit")),
    ("device", lambda r: r.get("device")),
    ("CPU", lambda r: (r.get("cpu") or {}).get("model")),
    ("CPU capability", lambda r: (r.get("torch") or {}).get("cpu_capability")),
    ("torch threads", lambda r: (r.get("torch") or {}).get("threads")),
    ("BLAS", lambda r: ((r.get("torch") or {}).get("settings") or {}).get("BLAS_INFO")),
)


def differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"<what>: <old> -> <new>"`` for each compared item that differs between two records."""
    out = []
    for name, get in _COMPARED:
        old, new = get(previous), get(current)
        if old != new:
            out.append(f"{name}: {old} -> {new}")
    return out
