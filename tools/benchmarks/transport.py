"""One hop of a 1080p frame between two processes: the source's real path against pickling through a Queue.

The project's hop is exactly what a source does for every frame: the real source runner (`pipeline.runner`, in its
own process, with `VideoSource` reading a 1080p clip) decodes the frame straight into a free shared-memory slot,
publishes it and sends a `FrameRecord` (msgpack header + slot reference) over a ZeroMQ ipc:// edge; this process,
the next stage, resolves the slot to a read-only view and acknowledges, which frees the slot. The baseline decodes
with the same `VideoSource` into a new array and puts it on a `multiprocessing.Queue` (pickled, written through a
pipe, unpickled). Latency runs from `capture_ns` (the source's stamp once the pixels are decoded) to usable pixels
in the receiver, one frame at a time (edge window 1: the next frame is read after the previous was acknowledged);
throughput lets the source run ahead within the window and includes its decoding.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import zmq

from pipeline.config import RuntimeConfig, StreamSpec
from pipeline.messages import FrameRecord, Heartbeat, Ready, Stop, decode, encode
from pipeline.runner import EdgeSpec, ProcessSpec, run_process
from pipeline.shm import RingReaders
from pipeline.transport import ControlServer, EdgeReceiver
from stages.source import SourceSettings, VideoSource, VideoSourceStage

HEIGHT, WIDTH = 1080, 1920
SHARED_CLIP = Path(__file__).resolve().parents[2].parent / "shared" / "assets" / "videos" / "aiog_outdoor_AB.mp4"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=300, help="frames per measurement")
    parser.add_argument("--window", type=int, default=4, help="edge window for the throughput run")
    parser.add_argument("--clip", type=Path, default=None,
                        help=f"a {WIDTH}x{HEIGHT} video (default: the shared outdoor clip scaled to it, made once)")


def clip_1080p(clip: Path | None) -> Path:
    """The clip to read: the one given, or the shared outdoor clip scaled to 1080p (cached in the temp dir)."""
    if clip is not None:
        return clip
    made = Path(tempfile.gettempdir()) / "gaitstream-bench-1080p.mp4"
    if not made.exists():
        capture = cv2.VideoCapture(str(SHARED_CLIP), cv2.CAP_FFMPEG)
        if not capture.isOpened():
            raise OSError(f"cannot read {SHARED_CLIP}; pass --clip")
        partial = made.with_suffix(".part.mp4")
        writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (WIDTH, HEIGHT))
        while (frame := capture.read()[1]) is not None:
            writer.write(cv2.resize(frame, (WIDTH, HEIGHT)))
        writer.release()
        capture.release()
        partial.rename(made)
    return made


def measure_source(clip: Path, frames: int, window: int) -> tuple[list[float], float, dict[str, int]]:
    """Latencies (ms) and frames/s of the real source runner's hop, and its frame copies by reason."""
    context = zmq.Context()
    folder = Path(tempfile.mkdtemp(prefix="gaitstream-bench-"))
    control = ControlServer(context, f"ipc://{folder}/control.sock")
    receiver = EdgeReceiver(context, f"ipc://{folder}/edge.sock")
    readers = RingReaders()
    spec = ProcessSpec(
        process="source-0", stage_cls=VideoSourceStage, config=SourceSettings(mode="batch", loop=True),
        runtime=RuntimeConfig(), run_id=uuid.uuid4().hex[:8], run_dir=folder,
        control_endpoint=f"ipc://{folder}/control.sock", incarnation=0, streams=("bench",),
        output=EdgeSpec(f"ipc://{folder}/edge.sock", window=window),
        inputs=(StreamSpec(uri=str(clip), id="bench"),),
    )
    source = mp.get_context("spawn").Process(target=run_process, args=(spec,))
    source.start()
    identity, counters = None, {}

    def service_control() -> None:
        nonlocal identity, counters
        while (received := control.recv()) is not None:
            message = decode(received[1])
            if isinstance(message, Ready):
                identity = received[0]
            elif isinstance(message, Heartbeat):
                counters = message.metrics.get("counters", {})

    latencies, started = [], None
    try:
        while len(latencies) < frames:
            service_control()
            if not receiver.socket.poll(10_000):
                raise RuntimeError("transport bench: the source stopped sending")
            incoming = receiver.recv()
            if incoming is None:
                continue
            message = decode(incoming.parts, resolve_frame=readers.resolve)
            if isinstance(message, FrameRecord):
                int(message.frame.pixels[HEIGHT // 2, WIDTH // 2, 0])  # the pixels are usable here
                latencies.append((time.monotonic_ns() - message.capture_ns) / 1e6)
                started = started or time.perf_counter()
            receiver.ack(incoming.sender, incoming.edge_seq)
        elapsed = time.perf_counter() - started
        service_control()
        if identity is not None:
            control.send(identity, encode(Stop("bench done")))
        deadline = time.monotonic() + 30
        while source.is_alive() and time.monotonic() < deadline:  # ack what is in flight so the source can close
            if receiver.socket.poll(50) and (incoming := receiver.recv()) is not None:
                receiver.ack(incoming.sender, incoming.edge_seq)
        service_control()  # the source's last heartbeat, sent as it closed
    finally:
        if source.is_alive():
            source.kill()
        readers.close()
        receiver.close()
        control.close()
        context.term()
    copies = {key: value for key, value in counters.items() if key.startswith("frames_copied_total")}
    return latencies, (frames - 1) / elapsed, copies


def _queue_sender(clip: str, queue, frames: int, paced: bool, done) -> None:
    source = VideoSource(StreamSpec(uri=clip, id="bench"), SourceSettings(loop=True), live=False, realtime=False)
    source.open()
    for _ in range(frames):
        frame = source.read()
        queue.put((frame.capture_ns, frame.pixels))
        if paced:
            done.get()
    source.close()


def measure_queue(clip: Path, frames: int, paced: bool) -> tuple[list[float], float]:
    spawn = mp.get_context("spawn")
    queue, done = spawn.Queue(maxsize=4), spawn.Queue()
    sender = spawn.Process(target=_queue_sender, args=(str(clip), queue, frames, paced, done))
    sender.start()
    latencies, started = [], None
    for _ in range(frames):
        capture_ns, pixels = queue.get(timeout=60)
        int(pixels[HEIGHT // 2, WIDTH // 2, 0])
        latencies.append((time.monotonic_ns() - capture_ns) / 1e6)
        started = started or time.perf_counter()
        if paced:
            done.put(None)
    elapsed = time.perf_counter() - started
    sender.join(30)
    return latencies, (frames - 1) / elapsed


def run(args: argparse.Namespace) -> dict:
    clip = clip_1080p(args.clip)
    capture = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    capture.release()
    if size != (WIDTH, HEIGHT):
        raise ValueError(f"{clip} is {size[0]}x{size[1]}, not {WIDTH}x{HEIGHT}")
    latency, _, copies = measure_source(clip, args.frames, window=1)
    _, fps, _ = measure_source(clip, args.frames, args.window)
    queue_latency, _ = measure_queue(clip, args.frames, paced=True)
    _, queue_fps = measure_queue(clip, args.frames, paced=False)
    p50, p99 = np.percentile(latency, [50, 99])
    base50, base99 = np.percentile(queue_latency, [50, 99])
    return {
        "frame": f"{WIDTH}x{HEIGHT}x3 uint8 ({HEIGHT * WIDTH * 3 / 1e6:.1f} MB)",
        "path": "source runner: VideoSource decodes into a shared-memory slot, FrameRecord over ZeroMQ ipc, "
                "the receiver resolves the slot",
        "clip": str(clip),
        "frames": args.frames,
        "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
        "frame_copies": copies,
        "fps": round(fps, 1), "fps_includes": "decoding",
        "baseline": "VideoSource.read() into a new array, multiprocessing.Queue (pickle)",
        "baseline_p50_ms": round(float(base50), 3), "baseline_p99_ms": round(float(base99), 3),
        "baseline_fps": round(queue_fps, 1),
        "speedup_p50": round(float(base50 / p50), 1),
    }
