"""One hop of a 1080p frame between two processes: the project's transport against pickling through a Queue.

The project's hop is what a source does for every frame: copy the decoded frame into a shared-memory ring slot,
send a `FrameRecord` (msgpack header + slot reference) over a ZeroMQ ipc:// edge, and the next stage resolves the
slot to a read-only view; the slot is reused once the receiver acknowledges. The baseline puts the numpy frame on a
`multiprocessing.Queue` (pickled, written through a pipe, unpickled). Latency is capture to usable pixels in the
receiver, one frame at a time (the next is sent after the previous arrived); throughput lets the sender run ahead
within the edge's window.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
import uuid

import numpy as np
import zmq

from pipeline.messages import Frame, FrameRecord, decode, encode
from pipeline.shm import FrameRing, RingReaders, ring_name
from pipeline.transport import EdgeReceiver, EdgeSender

HEIGHT, WIDTH = 1080, 1920


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=300, help="frames per measurement")
    parser.add_argument("--window", type=int, default=4, help="edge window = ring slots (as the pipeline's)")


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _zmq_sender(endpoint: str, run_id: str, frames: int, window: int, paced: bool, ready) -> None:
    context = zmq.Context()
    sender = EdgeSender(context, endpoint, f"bench-{os.getpid()}", window)
    ring = FrameRing(ring_name(run_id, "bench"), window, HEIGHT, WIDTH)
    free = list(range(window))
    source = [_frame(i) for i in range(2)]
    ready.wait()
    try:
        sent = 0
        while sent < frames:
            for token in sender.handle_ack():
                free.append(token)
            sender.handle_monitor()
            if not free or (paced and sender.backlog):
                sender.socket.poll(100)
                continue
            slot = free.pop(0)
            capture_ns = time.monotonic_ns()
            generation = ring.write(slot, source[sent % 2])
            record = FrameRecord("bench", sent, 0, capture_ns, sent / 30, 30.0,
                                 Frame(HEIGHT, WIDTH, ring.view(slot), ring.name, slot, generation))
            sender.send(encode(record), slot)
            sent += 1
        while sender.backlog:  # the ring must outlive the receiver's last read
            sender.socket.poll(100)
            sender.handle_ack()
    finally:
        sender.close()
        ring.close()
        context.term()


def _queue_sender(queue, frames: int, paced: bool, done, ready) -> None:
    source = [_frame(i) for i in range(2)]
    ready.wait()
    for index in range(frames):
        queue.put((time.monotonic_ns(), source[index % 2]))
        if paced:
            done.get()


def measure_zmq(frames: int, window: int, paced: bool) -> tuple[list[float], float]:
    context = zmq.Context()
    endpoint = f"ipc://{tempfile.gettempdir()}/gaitstream-bench-{uuid.uuid4().hex[:8]}.sock"
    receiver = EdgeReceiver(context, endpoint)
    readers = RingReaders()
    ready = mp.get_context("spawn").Event()
    sender = mp.get_context("spawn").Process(target=_zmq_sender, args=(endpoint, uuid.uuid4().hex[:8], frames,
                                                                        window, paced, ready))
    sender.start()
    ready.set()
    latencies, started = [], None
    try:
        while len(latencies) < frames:
            if not receiver.socket.poll(10_000):
                raise RuntimeError("transport bench: the sender stopped sending")
            incoming = receiver.recv()
            if incoming is None:
                continue
            record = decode(incoming.parts, resolve_frame=readers.resolve)
            int(record.frame.pixels[HEIGHT // 2, WIDTH // 2, 0])  # the pixels are usable here
            latencies.append((time.monotonic_ns() - record.capture_ns) / 1e6)
            started = started or time.perf_counter()
            receiver.ack(incoming.sender, incoming.edge_seq)
        elapsed = time.perf_counter() - started
    finally:
        sender.join(30)
        readers.close()
        receiver.close()
        context.term()
    return latencies, (frames - 1) / elapsed


def measure_queue(frames: int, paced: bool) -> tuple[list[float], float]:
    spawn = mp.get_context("spawn")
    queue, done, ready = spawn.Queue(maxsize=4), spawn.Queue(), spawn.Event()
    sender = spawn.Process(target=_queue_sender, args=(queue, frames, paced, done, ready))
    sender.start()
    ready.set()
    latencies, started = [], None
    for _ in range(frames):
        capture_ns, pixels = queue.get(timeout=30)
        int(pixels[HEIGHT // 2, WIDTH // 2, 0])
        latencies.append((time.monotonic_ns() - capture_ns) / 1e6)
        started = started or time.perf_counter()
        if paced:
            done.put(None)
    elapsed = time.perf_counter() - started
    sender.join(30)
    return latencies, (frames - 1) / elapsed


def run(args: argparse.Namespace) -> dict:
    zmq_latency, _ = measure_zmq(args.frames, args.window, paced=True)
    _, zmq_fps = measure_zmq(args.frames, args.window, paced=False)
    queue_latency, _ = measure_queue(args.frames, paced=True)
    _, queue_fps = measure_queue(args.frames, paced=False)
    p50, p99 = np.percentile(zmq_latency, [50, 99])
    base50, base99 = np.percentile(queue_latency, [50, 99])
    return {
        "frame": f"{WIDTH}x{HEIGHT}x3 uint8 ({HEIGHT * WIDTH * 3 / 1e6:.1f} MB)",
        "frames": args.frames,
        "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3), "fps": round(zmq_fps, 1),
        "baseline": "multiprocessing.Queue (pickle)",
        "baseline_p50_ms": round(float(base50), 3), "baseline_p99_ms": round(float(base99), 3),
        "baseline_fps": round(queue_fps, 1),
        "speedup_p50": round(float(base50 / p50), 1),
    }
