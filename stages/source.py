"""Video inputs: recorded files, RTSP/HTTP streams and webcams, read with OpenCV's FFmpeg backend.

A live stream that drops is reopened with capped exponential back-off; every open and read is bounded by a
timeout, so a dead camera cannot hang the pipeline. A recorded file is read as fast as the pipeline takes it
(batch) or at its native frame rate (when run as a live stream, e.g. to simulate cameras), once or on repeat
(`loop`, for simulated cameras and soak runs). Rotation for cameras mounted sideways happens here, before anything
looks at the pixels.

Pixels are written once, where the caller wants them (`read(into=slot)`: OpenCV converts the decoded picture to BGR
straight into the source runner's shared-memory slot). A rotated camera is decoded into a buffer the source reuses
and rotated into the slot: the rotation has to move every pixel anyway, so it is the one write.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import cv2
import numpy as np
from pydantic import Field

from pipeline.config import StageConfig, StreamSpec
from pipeline.errors import SourceError
from pipeline.stage import CapturedFrame, SourceConfig, SourceStage

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm", ".ts", ".wmv", ".flv", ".h264")
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
# Containers' declared frame counts are estimates (from duration x rate) and may be off by a frame or two.
TRUNCATION_TOLERANCE_FRAMES = 2
# Rates outside this range are not a camera's (0: the input does not say; 90000: an RTSP clock rate).
PLAUSIBLE_FPS = (0.5, 1000.0)
ASSUMED_FPS = 25.0
_ROTATIONS = {"cw90": cv2.ROTATE_90_CLOCKWISE, "ccw90": cv2.ROTATE_90_COUNTERCLOCKWISE, "180": cv2.ROTATE_180}


class SourceSettings(SourceConfig):
    """How inputs are opened and kept alive."""

    connect_timeout_s: float = Field(10.0, gt=0, description="longest wait for a stream to open")
    read_timeout_s: float = Field(5.0, gt=0, description="a live read that takes longer counts as a lost stream")
    initial_connect_attempts: int = Field(
        3, ge=1, description="attempts before a stream that never opened is reported unreachable"
    )
    reconnect_backoff_initial_s: float = Field(0.5, gt=0)
    reconnect_backoff_max_s: float = Field(8.0, gt=0)
    max_outage_s: float | None = Field(
        None, gt=0, description="give up on a live stream down this long; null: keep trying while running"
    )
    rtsp_transport: str = Field("tcp", pattern="^(tcp|udp)$", description="RTSP over TCP survives lossy networks")
    fps_limit: float | None = Field(
        None, gt=0, description="deliver at most this many frames per second of media time, files and cameras "
        "alike (the rest is decoded and skipped, so a live stream never lags)")
    loop: bool = Field(
        False, description="replay recorded files from the start when they end, until stopped (simulated cameras)"
    )


def stream_id_for(uri: str) -> str:
    """Default stream id: a file's stem, a URL's host and path, `webcam0` for `webcam:0`."""
    if uri.startswith("webcam:"):
        return "webcam" + uri.split(":", 1)[1]
    parts = urlsplit(uri)
    if parts.scheme in LIVE_SCHEMES:
        path = parts.path.strip("/").replace("/", "_")
        return f"{parts.hostname or 'stream'}{'_' + str(parts.port) if parts.port else ''}{'_' + path if path else ''}"
    return Path(uri).stem


def expand_sources(arguments: Sequence[str]) -> list[StreamSpec]:
    """`--source` values (files, folders searched recursively for videos, glob patterns) -> one StreamSpec each.

    Raises SourceError for a path that does not exist or a folder/pattern with no video files. Ids are file stems,
    made unique with a numeric suffix.
    """
    files: list[Path] = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if any(ch in argument for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise SourceError(f"no files match {argument}")
            files.extend(matches)
        elif path.is_dir():
            videos = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if not videos:
                raise SourceError(f"no video files in folder {argument} (looked for {', '.join(VIDEO_SUFFIXES)})")
            files.extend(videos)
        elif path.is_file():
            files.append(path)
        else:
            raise SourceError(f"no such file or folder: {argument}")
    specs: list[StreamSpec] = []
    used: dict[str, int] = {}
    for file in files:
        stem = file.stem
        used[stem] = used.get(stem, 0) + 1
        stream_id = stem if used[stem] == 1 else f"{stem}-{used[stem]}"
        specs.append(StreamSpec(uri=str(file.absolute()), id=stream_id))
    return specs


def probe_video(path: str) -> tuple[int, float]:
    """Open a recorded file and decode its first frame; returns (frame count, fps) or raises SourceError."""
    file = Path(path)
    if not file.is_file():
        raise SourceError(f"video file not found: {path}")
    capture = cv2.VideoCapture(str(file), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise SourceError(f"cannot read {path}: not a video, or a codec OpenCV's FFmpeg cannot decode")
        ok, frame = capture.read()
        if not ok or frame is None:
            raise SourceError(f"cannot read {path}: the file opens but no frame decodes (truncated or corrupt)")
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()


class VideoSource:
    """One input read with OpenCV; see the module docstring for the live and batch behaviour."""

    def __init__(self, spec: StreamSpec, settings: SourceSettings, *, live: bool, realtime: bool) -> None:
        self.uri = spec.uri
        self.stream_id = spec.id or stream_id_for(spec.uri)
        self.live = live
        self.realtime = realtime
        self.settings = settings
        self.rotation = _ROTATIONS.get(spec.rotate)
        self.native_fps = 0.0  # the input's own rate: media time and pacing follow it
        self.fps = 0.0  # the rate frames are delivered at (capped by fps_limit): what downstream sees
        self.frame_count: int | None = None
        self.frame_shape: tuple[int, int, int] | None = None  # (H, W, 3) the next frame should have
        self._decoded: np.ndarray | None = None  # a rotated camera's frame before rotation, reused
        self._capture: cv2.VideoCapture | None = None
        self._index = 0
        self._opened_ns = 0
        self._interrupted = threading.Event()
        self._next_due_s = 0.0
        self._next_pts_s = 0.0  # media time from which the next frame is delivered (fps_limit)
        self._pass_start = 0  # index of the first frame of the current pass over a looped file
        self._warned_fps = False

    # --- opening -----------------------------------------------------------------------------------------------
    def _capture_args(self) -> tuple[str | int, int, list[int]]:
        timeouts = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.settings.connect_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.settings.read_timeout_s * 1000),
        ]
        if self.uri.startswith("webcam:"):
            return int(self.uri.split(":", 1)[1]), cv2.CAP_ANY, []
        return self.uri, cv2.CAP_FFMPEG, timeouts

    def _try_open(self) -> str | None:
        """Open the capture; returns None on success or why it failed."""
        if not self.live and not Path(self.uri).is_file():
            return f"video file not found: {self.uri}"
        if self.uri.startswith(("rtsp://", "rtsps://")):
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{self.settings.rtsp_transport}"
        target, api, params = self._capture_args()
        capture = cv2.VideoCapture(target, api, params)
        if not capture.isOpened():
            capture.release()
            return "not a video, or a codec OpenCV's FFmpeg cannot decode" if not self.live else "cannot connect"
        self._capture = capture
        self.native_fps = self._native_fps(float(capture.get(cv2.CAP_PROP_FPS) or 0.0))
        limit = self.settings.fps_limit
        self.fps = min(self.native_fps, limit) if limit else self.native_fps
        height, width = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        if self.rotation in (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_90_COUNTERCLOCKWISE):
            height, width = width, height
        self.frame_shape = (height, width, 3) if height > 0 and width > 0 else None
        if not self.live:
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            self.frame_count = count if count > 0 else None
        return None

    def _native_fps(self, reported: float) -> float:
        """The rate the input reports, or `ASSUMED_FPS` with a warning when that is implausible.

        Not an error: cameras that report 0 or an RTSP clock rate still deliver frames, and refusing them would take
        a working camera offline. Not silent either: media time, the annotated video's rate and the tracker's
        frames per track lifetime all follow this rate, so the operator is told which rate was assumed (once per
        input, not on every reconnect).
        """
        low, high = PLAUSIBLE_FPS
        if low < reported < high:
            return reported
        if not self._warned_fps:
            self._warned_fps = True
            log.warning("stream=%s reports %g frames per second, not a plausible rate: assuming %g (media time, "
                        "the annotated video and track lifetimes follow it)", self.stream_id, reported, ASSUMED_FPS)
        return ASSUMED_FPS

    def open(self) -> None:
        attempts = 1 if not self.live else self.settings.initial_connect_attempts
        delay = self.settings.reconnect_backoff_initial_s
        why = ""
        for attempt in range(attempts):
            failure = self._try_open()
            if failure is None:
                self._opened_ns = time.monotonic_ns()
                self._next_due_s = time.monotonic()
                return
            why = failure
            if attempt + 1 < attempts and not self._interrupted.wait(delay):
                delay = min(delay * 2, self.settings.reconnect_backoff_max_s)
        if self.live:
            raise SourceError(f"cannot open stream {self.uri}: {why} after {attempts} attempts "
                              f"(timeout {self.settings.connect_timeout_s:.0f}s each)")
        raise SourceError(f"cannot read {self.uri}: {why}")

    # --- reading -----------------------------------------------------------------------------------------------
    def _pace(self) -> None:
        """Recorded files played as live streams keep their native rate."""
        rate = self.native_fps if self.realtime and not self.live else 0.0
        if not rate:
            return
        delay = self._next_due_s - time.monotonic()
        if delay > 0:
            self._interrupted.wait(delay)
        self._next_due_s = max(self._next_due_s + 1.0 / rate, time.monotonic() - 1.0 / rate)

    def _media_time_s(self) -> float:
        """Of the frame just grabbed: time since opening for live streams, the frame's own time for files."""
        if self.live:
            return (time.monotonic_ns() - self._opened_ns) / 1e9
        return self._index / self.native_fps

    def _retrieve(self, into: np.ndarray | None) -> np.ndarray | None:
        """The grabbed frame as BGR pixels, in `into` when it fits (then `into` itself is returned)."""
        assert self._capture is not None
        if self.rotation is None:
            ok, pixels = self._capture.retrieve(image=into)
        else:
            ok, self._decoded = self._capture.retrieve(image=self._decoded)
            pixels = cv2.rotate(self._decoded, self.rotation, dst=into) if ok else None
        if not ok or pixels is None:
            return None
        in_place = into is not None and pixels.shape == into.shape and pixels.ctypes.data == into.ctypes.data
        return into if in_place else pixels

    def read(self, into: np.ndarray | None = None) -> CapturedFrame | None:
        """The next frame to deliver, in `into` when it has the frame's shape (see `FrameSource`).

        With `fps_limit`, frames closer than 1/fps_limit of media time to the last delivered one are grabbed and
        skipped: decoding cannot be skipped, but their conversion to BGR and every write of their pixels can.
        """
        grabbed = self._grab()
        while grabbed:
            pts_s = self._media_time_s()
            limit = self.settings.fps_limit
            if limit and pts_s + 0.25 / self.native_fps < self._next_pts_s:
                self._index += 1
                grabbed = self._grab()
                continue
            pixels = self._retrieve(into)
            if pixels is None:
                grabbed = self._after_failed_read()
                continue
            if limit:
                self._next_pts_s = max(self._next_pts_s + 1.0 / limit, pts_s + 0.75 / limit)
            frame = CapturedFrame(pixels, self._index, pts_s, time.monotonic_ns())
            self._index += 1
            self.frame_shape = pixels.shape
            return frame
        return None

    def _grab(self) -> bool:
        """Advance to the next frame, decoded but not yet converted; False at the end or when interrupted."""
        if self._interrupted.is_set():
            return False
        self._pace()
        if self._capture is not None and self._capture.grab():
            return True
        return self._after_failed_read()

    def _after_failed_read(self) -> bool:
        """The end of a file (or, looped, its next pass) or a lost live stream; True once a frame is grabbed again."""
        if self.live:
            return self._reconnect()
        played = self._index - self._pass_start
        if self.frame_count and played < self.frame_count - TRUNCATION_TOLERANCE_FRAMES:
            raise SourceError(f"{self.uri} is truncated: it ends after {played} of the {self.frame_count} "
                              "frames it declares")
        return bool(self.settings.loop and played) and self._replay()

    def _replay(self) -> bool:
        """Reopen a looped file at its start; frame indices and media time keep counting, so the stream goes on."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None
        self._pass_start = self._index
        if self._try_open() is None and self._capture.grab():  # type: ignore[union-attr]
            return True
        log.warning("%s no longer decodes; stopping its replay stream=%s", self.uri, self.stream_id)
        return False

    def _reconnect(self) -> bool:
        """Reopen a lost live stream with capped exponential back-off; SourceError after max_outage_s."""
        lost_at = time.monotonic()
        delay = self.settings.reconnect_backoff_initial_s
        attempt = 0
        log.warning("stream lost; reconnecting stream=%s uri=%s", self.stream_id, self.uri)
        while not self._interrupted.is_set():
            if self._capture is not None:
                self._capture.release()
                self._capture = None
            attempt += 1
            if self._try_open() is None and self._capture.grab():  # type: ignore[union-attr]
                log.info("stream restored after %.1fs stream=%s attempts=%d",
                         time.monotonic() - lost_at, self.stream_id, attempt)
                return True
            outage = time.monotonic() - lost_at
            if self.settings.max_outage_s is not None and outage > self.settings.max_outage_s:
                raise SourceError(f"stream {self.uri} lost for {outage:.0f}s (max_outage_s="
                                  f"{self.settings.max_outage_s:.0f}); giving up")
            log.info("reconnect failed; next try in %.1fs stream=%s attempt=%d", delay, self.stream_id, attempt)
            self._interrupted.wait(delay)
            delay = min(delay * 2, self.settings.reconnect_backoff_max_s)
        return False

    def interrupt(self) -> None:
        self._interrupted.set()

    def close(self) -> None:
        self._interrupted.set()
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class VideoSourceStage(SourceStage[SourceSettings]):
    """The source stage: one VideoSource per input, driven by the runtime's source runner."""

    name = "source"
    Config: ClassVar[type[StageConfig]] = SourceSettings

    @classmethod
    def is_live(cls, spec: StreamSpec) -> bool:
        scheme = urlsplit(spec.uri).scheme
        return spec.uri.startswith("webcam:") or scheme in LIVE_SCHEMES

    def open_source(self, spec: StreamSpec, *, realtime: bool) -> VideoSource:
        return VideoSource(spec, self.config, live=self.is_live(spec), realtime=realtime)
