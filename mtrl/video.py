"""Rollout videos: one deterministic episode per task, rendered offscreen, titled with success and return.

    mtrl evaluate RUN_DIR --video DIR [--episodes N]     # DIR/<task>.mp4 (or .gif)
    train.video_every: N                                # the same into RUN_DIR/videos/step<S>/

The episodes run on MetaWorld's own vector env of the run's benchmark and seed (the training goal
set, ``mtrl.evaluate.make_metaworld_envs``) with the policy behind ``MetaWorldAgent``, and end like
evaluation episodes (at the first success when ``env.eval_terminate_on_success``). Frames come
from MuJoCo's own offscreen renderer (``mujoco.Renderer``) with shadows and reflections off,
which made software rendering about 5x faster here at no cost to what the video shows.

Headless rendering needs ``MUJOCO_GL=egl`` or ``MUJOCO_GL=osmesa`` (Debian: ``libosmesa6``) set
before MuJoCo is first imported; ``configure_headless_gl`` picks one that works in a subprocess
(EGL first, then OSMesa) and sets it, and the command line calls it before importing anything.

Files are MP4 (H.264) when the ``video`` extra is installed (``imageio`` with its bundled
``ffmpeg``), else GIF through Pillow (which matplotlib already needs).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "TaskVideo", "TrainingVideos", "VideoRecorder", "configure_headless_gl", "expected_frames", "read_frame_count", "video_format",
    "write_video",
]

#: MetaWorld v3 steps at 80 Hz (frame_skip 5 x 2.5 ms): a frame every 4 steps plays in real time at 20 fps.
CONTROL_HZ = 80
_GL_BACKENDS = ("egl", "osmesa")
_PROBE = (
    "import mujoco\n"
    "model = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\"1\"/></worldbody></mujoco>')\n"
    "renderer = mujoco.Renderer(model, 8, 8)\n"
    "renderer.update_scene(mujoco.MjData(model))\n"
    "renderer.render()\n"
)


def configure_headless_gl() -> str | None:
    """Choose MuJoCo's OpenGL backend for offscreen rendering; returns it (None: none works).

    Respects a ``MUJOCO_GL`` already set. Otherwise tries EGL, then OSMesa, each in a fresh
    interpreter (a failed backend cannot be swapped out inside a process), and sets the first
    that renders. Must run before ``mujoco`` is first imported; afterwards it only reports."""
    chosen = os.environ.get("MUJOCO_GL")
    if chosen or "mujoco" in sys.modules:
        return chosen or None
    for backend in _GL_BACKENDS:
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
        try:
            ok = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=120).returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if ok:
            os.environ["MUJOCO_GL"] = backend
            return backend
    return None


def _check_gl() -> None:
    backend = os.environ.get("MUJOCO_GL", "").lower()
    if backend not in _GL_BACKENDS and not os.environ.get("DISPLAY"):
        raise ValueError(
            f"offscreen rendering needs MUJOCO_GL=egl or MUJOCO_GL=osmesa (set before MuJoCo is imported; got "
            f"{backend or 'unset'} and no display). OSMesa: apt-get install -y libosmesa6"
        )


def video_format() -> str:
    """``mp4`` when an H.264 encoder is installed (the ``video`` extra), else ``gif``."""
    try:
        import imageio.v3  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return "gif"
    return "mp4"


def write_video(path: Path, frames: list[np.ndarray], fps: float, fmt: str | None = None) -> Path:
    """Write frames [H, W, 3] uint8 to ``path`` with the suffix of ``fmt`` (default ``video_format()``)."""
    fmt = fmt or video_format()
    if fmt not in ("mp4", "gif"):
        raise ValueError(f"video format must be mp4 or gif, got {fmt!r}")
    path = Path(path).with_suffix(f".{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        import imageio.v3 as iio

        iio.imwrite(path, np.stack(frames), extension=".mp4", fps=fps, codec="libx264", macro_block_size=8)
    else:
        from PIL import Image

        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0, optimize=True)
    return path


def read_frame_count(path: Path) -> int:
    """Number of frames of a video written by ``write_video`` (decodes the file)."""
    path = Path(path)
    if path.suffix == ".gif":
        from PIL import Image

        with Image.open(path) as image:
            return image.n_frames
    import imageio.v3 as iio

    return sum(1 for _ in iio.imiter(path, extension=".mp4"))


def _title(frame: np.ndarray, text: str) -> np.ndarray:
    """The frame with ``text`` on a dark band at its top."""
    from PIL import Image, ImageDraw, ImageFont

    height = max(12, frame.shape[0] // 16)
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=max(8, height - 4))
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    draw.rectangle((0, 0, frame.shape[1], height), fill=(0, 0, 0))
    draw.text((4, 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


class _Camera:
    """Offscreen frames of one MuJoCo model from one camera, upright."""

    def __init__(self, model, data, camera: str, size: int) -> None:
        import mujoco

        self.data, self.camera = data, camera
        self.renderer = mujoco.Renderer(model, size, size)
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
            self.renderer.scene.flags[flag] = False
        # MetaWorld's corner cameras look with their up axis pointing down: their images come out
        # rotated by 180 degrees; the camera's y axis in the world frame tells.
        camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if camera_id < 0:
            names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
            raise ValueError(f"unknown camera {camera!r}; this model has {', '.join(names)}")
        mujoco.mj_forward(model, data)
        self.rotate = data.cam_xmat[camera_id].reshape(3, 3)[2, 1] < 0

    def frame(self) -> np.ndarray:
        self.renderer.update_scene(self.data, camera=self.camera)
        image = self.renderer.render()
        return np.ascontiguousarray(image[::-1, ::-1]) if self.rotate else image

    def close(self) -> None:
        self.renderer.close()


@dataclass(frozen=True)
class TaskVideo:
    """One task's video: where it is, its frames and what its episodes scored."""

    task: str
    path: Path
    frames: int
    success: list[bool]
    returns: list[float]


class VideoRecorder:
    """Renders deterministic episodes of every task of a benchmark into one video per task.

    Built once (the MetaWorld env and one renderer per task) and reused, e.g. at every
    ``train.video_every`` evaluation.

    Args:
        benchmark, seed, max_episode_steps: the run's (``seed`` picks the goal set, as in training).
        task_names: our task order, the policy's rows.
        terminate_on_success: end an episode at its first success (as evaluation does).
        size: frame width and height in pixels.
        frame_every: render every N-th step (and each episode's first and last state); 4 plays
            in real time at 20 fps.
        camera: a MetaWorld camera name (``corner``, ``corner2``, ``corner3``, ``topview``, ...).
    """

    def __init__(
        self, benchmark: str, seed: int, task_names: list[str], *, max_episode_steps: int = 500,
        terminate_on_success: bool = True, size: int = 256, frame_every: int = 4, camera: str = "corner2",
    ) -> None:
        from mtrl.evaluate import env_task_names, make_metaworld_envs, metaworld_obs_dim

        if frame_every < 1 or size < 16:
            raise ValueError(f"frame_every must be >= 1 and size >= 16, got frame_every={frame_every}, size={size}")
        _check_gl()
        self.task_names = list(task_names)
        self.frame_every, self.fps = frame_every, CONTROL_HZ / frame_every
        # NEXT_STEP autoreset: the step that ends an episode still shows its last state
        self.envs = make_metaworld_envs(benchmark, seed, max_episode_steps, autoreset="next_step")
        self.envs.call("toggle_terminate_on_success", terminate_on_success)
        self.row_names = env_task_names(self.envs)
        self.obs_dim = metaworld_obs_dim(self.envs, benchmark)
        self.action_dim = int(self.envs.single_action_space.shape[0])
        self.cameras = [_Camera(env.unwrapped.model, env.unwrapped.data, camera, size) for env in self.envs.envs]

    @classmethod
    def for_config(cls, cfg: Any, task_names: list[str]) -> VideoRecorder:
        """The recorder of a run's config: its benchmark, seed, episode length and evaluation ending."""
        return cls(
            cfg.env.benchmark, cfg.seed, task_names, max_episode_steps=cfg.env.max_episode_steps,
            terminate_on_success=cfg.env.eval_terminate_on_success,
        )

    def record(
        self, policy: Callable[[np.ndarray], np.ndarray], out_dir: Path, episodes: int = 1, fmt: str | None = None,
    ) -> list[TaskVideo]:
        """Play ``episodes`` episodes per task with ``policy`` (observations [K, obs_dim] -> actions
        [K, A], deterministic) and write ``out_dir/<task>.mp4`` (or ``.gif``), episodes back to back."""
        from mtrl.evaluate import MetaWorldAgent

        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        agent = MetaWorldAgent(policy, self.task_names, self.row_names, self.obs_dim)
        K = len(self.row_names)
        frames: list[list[np.ndarray]] = [[] for _ in range(K)]
        done = np.zeros(K, dtype=np.int64)  # finished episodes per row
        steps = np.zeros(K, dtype=np.int64)
        episode_return, succeeded = np.zeros(K), np.zeros(K, dtype=bool)
        results: list[tuple[list[bool], list[float]]] = [([], []) for _ in range(K)]
        resetting = np.zeros(K, dtype=bool)  # NEXT_STEP: this row's next step is its reset

        def shoot(k: int) -> None:
            text = f"{self.row_names[k]}  return {episode_return[k]:.0f}  success {'yes' if succeeded[k] else 'no'}"
            frames[k].append(_title(self.cameras[k].frame(), text))

        obs, _ = self.envs.reset()
        for k in range(K):
            shoot(k)
        while (done < episodes).any():
            obs, reward, terminated, truncated, info = self.envs.step(agent.eval_action(obs))
            for k in np.flatnonzero(done < episodes):
                if resetting[k]:  # the env reset instead of stepping: a new episode starts
                    resetting[k] = False
                    steps[k], episode_return[k], succeeded[k] = 0, 0.0, False
                    shoot(k)
                    continue
                steps[k] += 1
                episode_return[k] += float(reward[k])
                succeeded[k] |= bool(info["success"][k])
                ended = bool(terminated[k] or truncated[k])
                if ended or steps[k] % self.frame_every == 0:
                    shoot(k)
                if ended:
                    results[k][0].append(bool(succeeded[k]))
                    results[k][1].append(float(episode_return[k]))
                    done[k] += 1
                    resetting[k] = True
        videos = []
        for k, name in enumerate(self.row_names):
            path = write_video(Path(out_dir) / name, frames[k], self.fps, fmt)
            videos.append(TaskVideo(name, path, len(frames[k]), *results[k]))
        order = {name: i for i, name in enumerate(self.task_names)}
        return sorted(videos, key=lambda video: order[video.task])

    def close(self) -> None:
        for camera in self.cameras:
            camera.close()
        self.envs.close()


def expected_frames(episode_length: int, frame_every: int) -> int:
    """Frames of one recorded episode of ``episode_length`` steps: its first state, every
    ``frame_every``-th step and its last step."""
    return 1 + math.ceil(episode_length / frame_every)


class TrainingVideos:
    """``train.video_every``: videos at the evaluations of every N-th step (and the last one) into
    ``<run>/videos/step<N>/``, their paths logged as ``video/<task>`` (W&B shows them as videos).

    Checks the benchmark and the OpenGL backend when built, so a run fails at its start rather
    than at its first video; the recorder itself is built at the first recording."""

    def __init__(self, cfg: Any, task_names: list[str], run_dir: Path) -> None:
        self.every, self.total = cfg.train.video_every, cfg.train.total_steps
        self.cfg, self.task_names, self.run_dir = cfg, list(task_names), Path(run_dir)
        self._recorder: VideoRecorder | None = None
        if self.every:
            benchmark = cfg.env.benchmark
            if benchmark not in ("MT10", "MT50") and not benchmark.startswith("MT1-"):
                raise ValueError(f"train.video_every renders MetaWorld benchmarks (MT10, MT50, MT1-<task>), not {benchmark!r}")
            _check_gl()

    def maybe_record(self, step: int, policy: Callable[[np.ndarray], np.ndarray], logger: Any) -> None:
        if not self.every or (step % self.every and step != self.total):
            return
        if self._recorder is None:
            self._recorder = VideoRecorder.for_config(self.cfg, self.task_names)
        videos = self._recorder.record(policy, self.run_dir / "videos" / f"step{step}")
        row: dict[str, Any] = {}
        for video in videos:
            row[f"video/{video.task}"] = str(video.path)
            row[f"video_success/{video.task}"] = float(video.success[0])
        logger.log(step, row)

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
