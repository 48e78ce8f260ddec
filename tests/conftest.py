"""Test-session set-up, before any test imports torch or MuJoCo.

* Under pytest-xdist (``-n auto``, the default ``addopts``) every worker and the processes its
  tests start use one thread: two workers on a 2-core machine with two OpenMP threads each spend
  most of their time waiting on each other's spinning threads (measured: a 20 s in-process
  learning test took 108 s).
* ``one_thread``: a fixture that runs a test with one torch thread (populations are bit for bit
  their members alone with one thread; ``pytestmark = pytest.mark.usefixtures("one_thread")``).
* Picks MuJoCo's headless OpenGL backend (EGL, else OSMesa) so the video tests can render
  offscreen (``mtrl.video.configure_headless_gl``).
"""

import os

import pytest

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = "1"
    import torch

    torch.set_num_threads(1)

from mtrl.video import configure_headless_gl  # noqa: E402

configure_headless_gl()


@pytest.fixture
def one_thread():
    """Run the test with one torch thread, then restore the count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
