"""Test-session set-up, before any test imports torch or MuJoCo.

* Under pytest-xdist (``-n auto``, the default ``addopts``) every worker and the processes its
  tests start use one thread: two workers on a 2-core machine with two OpenMP threads each spend
  most of their time waiting on each other's spinning threads (measured: a 20 s in-process
  learning test took 108 s).
* Picks MuJoCo's headless OpenGL backend (EGL, else OSMesa) so the video tests can render
  offscreen (``mtrl.video.configure_headless_gl``).
"""

import os

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = "1"
    import torch

    torch.set_num_threads(1)

from mtrl.video import configure_headless_gl  # noqa: E402

configure_headless_gl()


#: the longest tests of the default suite (about a minute each or more on two cores), started
#: first so that pytest-xdist's workers do not end on one long test while the others idle
LONG_FIRST = (
    "tests/test_sweep.py::test_run_longer_than_its_time_limit",
    "tests/test_resume.py::test_metaworld_sigterm",
    "tests/test_cli.py::test_quick_config_trains",
    "tests/test_metaworld_protocol.py::test_quick_mt10_agent",
    "tests/test_resume.py::test_sigkill",
)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(LONG_FIRST))  # stable: the rest keep their order
