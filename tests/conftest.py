"""Picks MuJoCo's headless OpenGL backend (EGL, else OSMesa) before any test imports MuJoCo, so
the video tests can render offscreen (``mtrl.video.configure_headless_gl``)."""

from mtrl.video import configure_headless_gl

configure_headless_gl()
