"""The supervisor: starts the process graph, watches it, restarts what dies, and shuts everything down cleanly.

Start-up is a handshake: every stage process reports `Ready` once its weights are loaded and its sockets are
up, and only then do the sources start. While running, the supervisor reads heartbeats (metrics) and reports on
one ROUTER socket, restarts a process that exited abnormally or went silent (capped exponential back-off; more
than `max_restarts` within `restart_window_s` ends the run as FAILED), and drives the progress bar. A batch run
ends when every source has delivered its inputs and every stage has drained.

With `sources_on_demand` (a node of a site, `pipeline/node.py`) every stream gets a source process of its own that
runs only while asked to: `start_source` / `stop_source`, from any thread, start and stop it (a stop is a `Stop`,
then a kill at its deadline), and the run goes on until it is stopped. SIGINT/SIGTERM send `Stop`, join
with a deadline, then terminate and kill; every shared-memory ring of the run is unlinked at the end.

Must not import `stages` or `engines`: the stage classes come from the caller.
"""

from __future__ import annotations

import difflib
import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import zmq
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import start_http_server

from pipeline.config import CurveSettings, RuntimeConfig, StageConfig, StreamSpec
from pipeline.errors import ConfigError, SchemaError
from pipeline.fence import deadline_path
from pipeline.messages import Heartbeat, Ready, Report, ReportEvent, Stop, decode, encode
from pipeline.metrics import BoardCollector, MetricsBoard, frames_passed
from pipeline.runner import EXIT_FATAL, EXIT_OK, EdgeSpec, ProcessSpec, run_process
from pipeline.shm import new_run_id, remove_orphaned_rings, remove_run_rings, shm_dir
from pipeline.stage import SourceStage, Stage
from pipeline.transport import ControlServer, CurveKeys, ipc_folder_fits

log = logging.getLogger(__name__)

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class ProcessState(Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass
class ManagedProcess:
    """One supervised process and its restart history."""

    name: str
    spec: ProcessSpec
    is_source: bool
    process: Any = None
    state: ProcessState = ProcessState.STARTING
    identity: bytes | None = None
    started_s: float = 0.0
    last_heartbeat_s: float = 0.0
    restart_times: deque[float] = field(default_factory=deque)
    restart_at_s: float | None = None
    drained: bool = False
    acked_seq: dict[str, int] = field(default_factory=dict)
    done_inputs: list[str] = field(default_factory=list)
    wanted: bool = True  # False: a source on demand that is not to run; it is stopped, never restarted
    stop_by_s: float | None = None  # a released source still alive at this monotonic time is killed


@dataclass
class RunResult:
    """How a run ended: exit code (0 ok, 1 partial or failed stage, 2 nothing done), per-stream outcomes."""

    exit_code: int
    reason: str
    streams: dict[str, dict[str, Any]]
    skipped: dict[str, str]
    errors: list[str]
    metrics: dict[str, Any]
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "reason": self.reason,
            "elapsed_s": self.elapsed_s,
            "streams": self.streams,
            "skipped": self.skipped,
            "errors": self.errors,
            "processes": self.metrics,
        }


def _curve_keys(settings: CurveSettings | None) -> CurveKeys | None:
    if settings is None:
        return None
    return CurveKeys(
        settings.server_public_file,
        settings.server_secret_file,
        settings.client_secret_file,
        settings.authorized_clients_dir,
    )


def serve_metrics(registry: CollectorRegistry, port: int) -> WSGIServer:
    """Serve `registry` for Prometheus on 127.0.0.1:port from a daemon thread; returns the server to shut down.
    A port that cannot be bound is a configuration error, reported before any process starts."""
    try:
        server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot serve metrics there ({exc.strerror or exc})") from None
    return server


def assign_inputs(
    streams: list[StreamSpec], is_live: Callable[[StreamSpec], bool], parallel: int
) -> list[list[StreamSpec]]:
    """One source process per live stream (a camera, or a file played as one in `mode: live`); recorded files spread
    round-robin over `parallel` processes."""
    live = [[s] for s in streams if is_live(s)]
    files = [s for s in streams if not is_live(s)]
    lanes = [files[i::parallel] for i in range(min(parallel, len(files)))]
    return live + [lane for lane in lanes if lane]



def make_run_dir() -> Path:
    """A fresh folder for a run's ipc sockets: in $TMPDIR, unless that is too deep for ZeroMQ's ipc path limit (a
    test runner's or a CI job's temp folder can be), then in /tmp."""
    folder = Path(tempfile.mkdtemp(prefix="gaitstream-"))
    if ipc_folder_fits(folder):
        return folder
    folder.rmdir()
    return Path(tempfile.mkdtemp(prefix="gaitstream-", dir="/tmp"))

class Supervisor:
    """Runs one pipeline (or the `only` subset of its processes placed on this host) to completion or stop."""

    def __init__(
        self,
        config: Any,
        stages: Mapping[str, type[Stage]],
        *,
        source_stage: str = "source",
        only: set[str] | None = None,
        on_report: Callable[[Report], None] | None = None,
        sources_on_demand: bool = False,
        read_deadlines: bool = False,
        on_ready: Callable[[], None] | None = None,
        host: str | None = None,
    ) -> None:
        self.config = config
        self.runtime: RuntimeConfig = config.runtime
        self.stages = stages
        self.source_stage = source_stage
        self.only = only
        self.on_report = on_report
        self.sources_on_demand = sources_on_demand
        self.read_deadlines = read_deadlines  # each on-demand source reads only until its deadline (pipeline.fence)
        self.on_ready = on_ready  # called once, from run(), when every stage is ready for frames
        self.host = host or os.uname().nodename  # in the log lines of sources on demand
        self._source_requests: queue.SimpleQueue[tuple[str, bool, float]] = queue.SimpleQueue()
        self._source_of: dict[str, ManagedProcess] = {}
        self._control: ControlServer | None = None
        self.run_id = new_run_id()
        self.board = MetricsBoard()
        self.metrics_registry = CollectorRegistry()  # this run's own: two runs in one process never clash
        self.metrics_registry.register(BoardCollector(self.board))
        self.processes: dict[str, ManagedProcess] = {}
        self.by_identity: dict[bytes, ManagedProcess] = {}
        self.streams: dict[str, dict[str, Any]] = {}
        self.skipped: dict[str, str] = {}
        self.errors: list[str] = []
        self.stop_reason: str | None = None
        self.failed = False
        self._signals = 0
        self._owns_run_dir = self.runtime.run_dir is None
        if self.runtime.run_dir is not None and not ipc_folder_fits(Path(self.runtime.run_dir)):
            raise ConfigError(f"runtime.run_dir {self.runtime.run_dir}: too deep for the run's ZeroMQ ipc sockets "
                              f"(a socket path may have at most {zmq.IPC_PATH_MAX_LEN} characters); choose a shorter "
                              "folder")
        self.run_dir = Path(self.runtime.run_dir) if self.runtime.run_dir is not None else make_run_dir()
        self.control_endpoint = f"ipc://{self.run_dir}/control-{self.run_id}.sock"
        self._mp = mp.get_context("spawn")
        self._progress: Any = None
        self._progress_total = 0
        self._next_metrics_log_s = 0.0
        self._metrics_logged_s = time.monotonic()
        self._frames_logged: dict[str, float] = {}  # per process, frames passed at the previous metrics log line
        self._metrics_server: Any = None

    # --- graph -----------------------------------------------------------------------------------------------
    def _stage_config(self, name: str) -> StageConfig:
        return getattr(self.config.stages, name)

    def _edge_into(self, name: str) -> EdgeSpec:
        config = self._stage_config(name)
        endpoint = config.input_endpoint or f"ipc://{self.run_dir}/{name}-{self.run_id}.sock"
        return EdgeSpec(endpoint, config.input_bind, config.window, config.frame_encoding, _curve_keys(config.curve))

    def _build(self) -> None:
        graph: list[str] = list(self.config.graph)
        if not graph:
            raise ConfigError("graph: needs at least one stage after the sources")
        if self.only is not None:
            known = [self.source_stage, *graph]
            unknown = sorted(self.only - set(known))
            if unknown:
                close = difflib.get_close_matches(unknown[0], known, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(f"--only: unknown stage {', '.join(unknown)} (stages: {', '.join(known)}){hint}")
        stream_ids = tuple(s.id or s.uri for s in self.config.streams)
        if len(set(stream_ids)) != len(stream_ids):
            raise ConfigError(f"streams: ids must be unique, got {list(stream_ids)}")
        common = dict(runtime=self.runtime, run_id=self.run_id, run_dir=self.run_dir,
                      control_endpoint=self.control_endpoint, incarnation=0, streams=stream_ids)
        for i, name in enumerate(graph):
            output = self._edge_into(graph[i + 1]) if i + 1 < len(graph) else None
            spec = ProcessSpec(process=name, stage_cls=self.stages[name], config=self._stage_config(name),
                               input=self._edge_into(name), output=output, **common)
            self._add(ManagedProcess(name, spec, is_source=False))
        source_cls = self.stages[self.source_stage]
        if not issubclass(source_cls, SourceStage):
            raise ConfigError(f"stage {self.source_stage!r} is not a source")
        source_config = self._stage_config(self.source_stage)
        parallel = getattr(source_config, "parallel_inputs", 1)
        mode = getattr(source_config, "mode", "auto")

        def runs_live(spec: StreamSpec) -> bool:  # the source runner decides the same way per input
            return source_cls.is_live(spec) if mode == "auto" else mode == "live"

        streams = list(self.config.streams)
        lanes = [[s] for s in streams] if self.sources_on_demand else assign_inputs(streams, runs_live, parallel)
        for i, lane in enumerate(lanes):
            deadline = (deadline_path(self.run_dir, lane[0].id or lane[0].uri)
                        if self.sources_on_demand and self.read_deadlines else None)
            spec = ProcessSpec(process=f"{self.source_stage}-{i}", stage_cls=source_cls, config=source_config,
                               output=self._edge_into(graph[0]), inputs=tuple(lane), read_deadline=deadline,
                               **common)
            managed = ManagedProcess(spec.process, spec, is_source=True, wanted=not self.sources_on_demand)
            self._add(managed)
            if self.sources_on_demand:
                self._source_of[lane[0].id or lane[0].uri] = managed

    def _add(self, managed: ManagedProcess) -> None:
        base = managed.name.split("-")[0] if managed.is_source else managed.name
        if self.only is None or base in self.only or managed.name in self.only:
            self.processes[managed.name] = managed

    # --- processes -------------------------------------------------------------------------------------------
    def _start(self, managed: ManagedProcess) -> None:
        saved = {k: os.environ.get(k) for k in _THREAD_ENV}
        threads = str(managed.spec.config.threads)
        os.environ.update({k: threads for k in _THREAD_ENV})
        try:
            process = self._mp.Process(target=run_process, args=(managed.spec,), name=managed.name, daemon=False)
            process.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        managed.process = process
        managed.state = ProcessState.STARTING
        managed.started_s = managed.last_heartbeat_s = time.monotonic()
        managed.drained = False
        log.info("started %s pid=%d incarnation=%d", managed.name, process.pid, managed.spec.incarnation)

    def _schedule_restart(self, managed: ManagedProcess, why: str) -> None:
        now = time.monotonic()
        while managed.restart_times and now - managed.restart_times[0] > self.runtime.restart_window_s:
            managed.restart_times.popleft()
        if len(managed.restart_times) >= self.runtime.max_restarts:
            message = (f"{managed.name} failed {len(managed.restart_times) + 1} times within "
                       f"{self.runtime.restart_window_s:.0f}s ({why}); giving up")
            self._fail(managed, message)
            return
        delay = min(self.runtime.restart_backoff_max_s,
                    self.runtime.restart_backoff_initial_s * 2 ** len(managed.restart_times))
        managed.restart_times.append(now)
        managed.restart_at_s = now + delay
        managed.state = ProcessState.RESTARTING
        self.board.restarted(managed.name)
        log.warning("%s died (%s); restarting in %.1fs (restart %d)", managed.name, why, delay,
                    self.board.restarts[managed.name])

    def _restart(self, managed: ManagedProcess) -> None:
        spec = replace(managed.spec, incarnation=managed.spec.incarnation + 1)
        if managed.is_source:
            spec = replace(spec, resume_after_seq=dict(managed.acked_seq), done_inputs=tuple(managed.done_inputs))
        managed.spec = spec
        managed.restart_at_s = None
        if managed.identity is not None:
            self.by_identity.pop(managed.identity, None)
            managed.identity = None
        self._start(managed)

    def _fail(self, managed: ManagedProcess, message: str) -> None:
        managed.state = ProcessState.FAILED
        self.errors.append(message)
        self.failed = True
        log.debug("%s", message)  # the run's result carries it: the caller prints it once
        self.stop_reason = self.stop_reason or "failure"

    def _check_processes(self) -> None:
        now = time.monotonic()
        for managed in self.processes.values():
            if managed.process is None or managed.state in (ProcessState.STOPPED, ProcessState.FAILED):
                continue
            if not managed.wanted:
                self._check_released(managed, now)
                continue
            if managed.state == ProcessState.RESTARTING:
                if managed.restart_at_s is not None and now >= managed.restart_at_s and not self.stop_reason:
                    self._restart(managed)
                continue
            code = managed.process.exitcode
            if code is None:
                silent_s = now - managed.last_heartbeat_s
                limit = (self.runtime.ready_timeout_s if managed.state == ProcessState.STARTING
                         else self.runtime.heartbeat_timeout_s)
                if silent_s > limit:
                    log.warning("%s silent for %.1fs; killing it", managed.name, silent_s)
                    managed.process.kill()
                    managed.process.join(5)
                    self._schedule_restart(managed, f"no heartbeat for {silent_s:.1f}s")
                continue
            if self.stop_reason or (code == EXIT_OK and managed.is_source):
                managed.state = ProcessState.STOPPED  # shutting down: whatever the exit, never restart
                if code not in (EXIT_OK, None):
                    log.info("%s ended with exit code %s while stopping", managed.name, code)
            elif code == EXIT_FATAL:
                # The process reported why (open_failed) unless it died before it could.
                if managed.state != ProcessState.FAILED:
                    self._fail(managed, f"{managed.name} could not start (exit code {code}); see the log above")
            else:
                self._schedule_restart(managed, f"exit code {code}")

    # --- sources on demand ---------------------------------------------------------------------------------------
    def start_source(self, stream_id: str) -> None:
        """Run the source of `stream_id` (sources on demand; any thread): now, or once the stages are ready."""
        self._source_requests.put((stream_id, True, 0.0))

    def stop_source(self, stream_id: str, within_s: float) -> None:
        """Stop the source of `stream_id` (any thread): `Stop` at once, killed if still alive `within_s` later."""
        self._source_requests.put((stream_id, False, within_s))

    def _serve_source_requests(self, stages_ready: bool) -> None:
        while True:
            try:
                stream_id, wanted, within_s = self._source_requests.get_nowait()
            except queue.Empty:
                return
            managed = self._source_of.get(stream_id)
            if managed is None:
                log.warning("no source for camera %s here (streams: %s)", stream_id, ", ".join(self._source_of))
                continue
            managed.wanted = wanted
            alive = managed.process is not None and managed.process.exitcode is None
            if wanted and stages_ready and not alive and not self.stop_reason:
                self._open_source(managed)
            elif not wanted and alive:
                managed.stop_by_s = time.monotonic() + within_s
                if managed.identity is not None and self._control is not None:
                    self._control.send(managed.identity, encode(Stop("released")))
                else:
                    managed.process.terminate()
            elif not wanted:
                managed.state = ProcessState.STOPPED  # a restart that was due is called off

    def _open_source(self, managed: ManagedProcess) -> None:
        """(Re)start a source on demand as a fresh process: its own restart history, every input to do again."""
        if managed.process is not None:
            managed.spec = replace(managed.spec, incarnation=managed.spec.incarnation + 1, resume_after_seq={},
                                   done_inputs=())
            if managed.identity is not None:
                self.by_identity.pop(managed.identity, None)
                managed.identity = None
        managed.restart_times.clear()
        managed.restart_at_s = None
        managed.stop_by_s = None
        managed.acked_seq, managed.done_inputs = {}, []
        self._start(managed)
        log.info("source started camera=%s host=%s process=%s pid=%d at=%.3f", managed.spec.inputs[0].id,
                 self.host, managed.name, managed.process.pid, time.time())

    def _check_released(self, managed: ManagedProcess, now: float) -> None:
        """A source that is not wanted: stopped once it has exited, killed at its deadline."""
        code = managed.process.exitcode
        if code is None and managed.state != ProcessState.RESTARTING:
            if managed.stop_by_s is not None and now >= managed.stop_by_s:
                log.warning("%s did not stop in time; killing it", managed.name)
                managed.process.kill()
                managed.process.join(1)
                code = managed.process.exitcode
            if code is None:
                return
        managed.state = ProcessState.STOPPED
        log.info("source stopped camera=%s host=%s process=%s exit=%s at=%.3f", managed.spec.inputs[0].id,
                 self.host, managed.name, code, time.time())

    # --- control messages --------------------------------------------------------------------------------------
    def _handle_control(self, server: ControlServer) -> None:
        while (item := server.recv()) is not None:
            identity, parts = item
            try:
                message = decode(parts)
            except SchemaError as exc:
                log.warning("control: dropped malformed message: %s", exc)
                continue
            name = identity.decode(errors="replace").split(":")[0]
            managed = self.processes.get(name)
            if managed is None:
                continue
            if isinstance(message, Ready):
                incarnation = int(identity.decode().split(":")[1])
                if incarnation != managed.spec.incarnation:
                    continue  # a message from a previous incarnation
                managed.identity = identity
                self.by_identity[identity] = managed
                managed.state = ProcessState.RUNNING
                managed.last_heartbeat_s = time.monotonic()
                log.info("%s ready pid=%d", name, message.pid)
            elif isinstance(message, Heartbeat):
                if identity != managed.identity:
                    continue
                managed.last_heartbeat_s = time.monotonic()
                self.board.update(name, message.metrics)
                if managed.is_source:
                    managed.acked_seq.update(message.metrics.get("acked_seq", {}))
            elif isinstance(message, Report):
                self._handle_report(managed, message)

    def _handle_report(self, managed: ManagedProcess, report: Report) -> None:
        if self.on_report is not None:
            self.on_report(report)
        stream = report.stream_id
        if report.event is ReportEvent.FATAL:
            self._fail(managed, f"{managed.name}: {report.detail}")
        elif report.event is ReportEvent.INPUT_FAILED:
            self.skipped[report.data.get("uri", stream)] = report.detail
        elif report.event is ReportEvent.STREAM_OPENED:
            self.streams.setdefault(stream, {}).update(report.data, uri=report.detail,
                                                       opened_at_s=round(time.monotonic(), 3))
            total = report.data.get("frame_count") or 0
            self._progress_total += int(total)
            if self._progress is not None:
                self._progress.total = self._progress_total
                self._progress.refresh()
        elif report.event is ReportEvent.STREAM_LOST:
            self.streams.setdefault(stream, {})["lost"] = report.detail
        elif report.event is ReportEvent.INPUT_DONE:
            managed.done_inputs.append(stream)
        elif report.event is ReportEvent.STREAM_FINISHED:
            entry = self.streams.setdefault(stream, {})
            entry.update(finished=True, frames=report.data.get("frames"), end_reason=report.data.get("reason"))
            if "opened_at_s" in entry:  # first frame read to last frame out of the sink, start-up excluded
                entry["finished_at_s"] = round(time.monotonic(), 3)  # monotonic clock: spans across streams
                entry["processing_s"] = round(entry["finished_at_s"] - entry["opened_at_s"], 3)
            if report.detail:
                entry["detail"] = report.detail
        elif report.event is ReportEvent.DRAINED:
            managed.drained = True
        elif report.event is ReportEvent.STOP_REQUESTED:
            log.info("stop requested by %s: %s", managed.name, report.detail)
            self.stop_reason = self.stop_reason or "user"

    def stop(self, reason: str = "user") -> None:
        """Ask a running `run()` (from another thread) to stop as Ctrl-C would: Stop to every process, then join."""
        self.stop_reason = self.stop_reason or reason

    # --- run ---------------------------------------------------------------------------------------------------
    def _batch_complete(self) -> bool:
        if not self.processes:
            return False
        for managed in self.processes.values():
            if managed.is_source:
                if managed.state != ProcessState.STOPPED:
                    return False
            elif not managed.drained:
                return False
        return True

    def _install_signals(self) -> dict[int, Any]:
        def on_signal(signum: int, frame: Any) -> None:
            self._signals += 1
            if self._signals == 1:
                log.info("%s received; stopping (again to kill)", signal.Signals(signum).name)
                self.stop_reason = self.stop_reason or "signal"
            else:  # kill at once, but let the sink finalise what it writes (an mp4 without its index is lost)
                last = self.config.graph[-1]
                for managed in self.processes.values():
                    if managed.process is not None and managed.process.is_alive():
                        if managed.name == last:
                            managed.process.terminate()
                        else:
                            managed.process.kill()

        return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _update_progress(self) -> None:
        if self._progress is None:
            return
        last = self.config.graph[-1]
        done = int(self.board.counters(last).get("frames_in_total", 0))
        if done > self._progress.n:
            self._progress.update(done - self._progress.n)

    def _log_metrics(self) -> None:
        """Every `metrics_log_interval_s`: one INFO line for the run (what comes out of the last stage, drops and
        restarts anywhere) and one DEBUG line per process; fps is over the time since the previous line."""
        now = time.monotonic()
        if now < self._next_metrics_log_s:
            return
        self._next_metrics_log_s = now + self.runtime.metrics_log_interval_s
        elapsed_s = max(now - self._metrics_logged_s, 1e-9)
        self._metrics_logged_s = now
        summary = self.board.summary()
        rates: dict[str, float] = {}
        for name, data in summary.items():
            frames = frames_passed(data["counters"])
            rates[name] = (frames - self._frames_logged.get(name, 0.0)) / elapsed_s
            self._frames_logged[name] = frames
            drops = sum(v for k, v in data["counters"].items() if k.startswith("dropped_total"))
            latency = data["latency_ms"].get("latency_since_capture", {})
            log.debug("metrics process=%s fps=%.1f latency_p50_ms=%.0f latency_p95_ms=%.0f backlog=%d drops=%d "
                      "restarts=%d cpu=%.0f%% rss_mb=%.0f", name, rates[name], latency.get("p50", 0),
                      latency.get("p95", 0), data["gauges"].get("backlog", 0), drops, data["restarts"],
                      data["cpu_percent"], data["rss_mb"])
        last = self.config.graph[-1]
        if last not in summary:
            return
        latency = summary[last]["latency_ms"].get("latency_since_capture", {})
        drops = sum(v for data in summary.values() for k, v in data["counters"].items() if k.startswith("dropped"))
        log.info("metrics fps=%.1f latency_p50_ms=%.0f latency_p95_ms=%.0f drops=%d restarts=%d", rates[last],
                 latency.get("p50", 0), latency.get("p95", 0), drops,
                 sum(data["restarts"] for data in summary.values()))

    def _start_metrics_server(self) -> None:
        if self.runtime.metrics_port is None:
            return
        self._metrics_server = serve_metrics(self.metrics_registry, self.runtime.metrics_port)
        log.info("Prometheus metrics on http://127.0.0.1:%d/metrics", self._metrics_server.server_address[1])

    def run(self) -> RunResult:
        """Start the graph, supervise it to the end, stop it; whatever fails at start-up, nothing is left behind."""
        started = time.monotonic()
        context = zmq.Context()
        server: ControlServer | None = None
        previous_handlers: dict[Any, Any] = {}
        try:
            orphaned = remove_orphaned_rings()
            if orphaned:
                log.info("removed %d frame rings left in %s by runs that were killed", orphaned, shm_dir())
            self._build()
            server = ControlServer(context, self.control_endpoint)
            previous_handlers = self._install_signals()
            self._start_metrics_server()
            if (self.runtime.progress and any(not p.is_source for p in self.processes.values())
                    and sys.stderr.isatty()):
                from tqdm import tqdm

                self._progress = tqdm(total=0, unit="frame", desc="frames", dynamic_ncols=True, leave=True)
            self._supervise(server)
        finally:
            if server is not None:
                self._shutdown(server)
                server.close()
            context.term()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            if self._progress is not None:
                self._progress.close()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()  # frees the port for a later run in this process
            removed = remove_run_rings(self.run_id)
            if removed:
                log.debug("removed %d leftover frame rings", removed)
            if self._owns_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
        return self._result(time.monotonic() - started)

    def _supervise(self, server: ControlServer) -> None:
        stages = [m for m in self.processes.values() if not m.is_source]
        sources = [m for m in self.processes.values() if m.is_source]
        self._control = server
        for managed in stages:
            self._start(managed)
        sources_started = False
        while True:
            if server.socket.poll(50):
                self._handle_control(server)
            self._check_processes()
            if not sources_started and all(m.state == ProcessState.RUNNING for m in stages) and not self.stop_reason:
                for managed in sources:
                    if managed.wanted:
                        (self._open_source if self.sources_on_demand else self._start)(managed)
                sources_started = True
                if self.on_ready is not None:
                    self.on_ready()
            self._serve_source_requests(sources_started)
            self._update_progress()
            self._log_metrics()
            if self.stop_reason:
                return
            if sources_started and not self.sources_on_demand and self._batch_complete():
                self.stop_reason = "complete"
                return

    def _shutdown(self, server: ControlServer) -> None:
        live = [m for m in self.processes.values() if m.process is not None and m.process.exitcode is None]
        for managed in live:
            if managed.identity is not None:
                server.send(managed.identity, encode(Stop(self.stop_reason or "shutdown")))
            elif managed.process.is_alive():
                managed.process.terminate()
        deadline = time.monotonic() + self.runtime.stop_timeout_s
        while any(m.process.exitcode is None for m in live) and time.monotonic() < deadline:
            if server.socket.poll(50):
                self._handle_control(server)  # final heartbeats carry the last counters
        for managed in live:
            if managed.process.exitcode is None:
                log.warning("%s did not stop in %.0fs; terminating", managed.name, self.runtime.stop_timeout_s)
                managed.process.terminate()
                managed.process.join(2)
            if managed.process.exitcode is None:
                managed.process.kill()
            managed.process.join(5)
            if managed.state not in (ProcessState.FAILED,):
                managed.state = ProcessState.STOPPED
        while server.socket.poll(0):
            self._handle_control(server)

    def _result(self, elapsed_s: float) -> RunResult:
        done = self.board.counters(self.config.graph[-1])
        for stream, entry in self.streams.items():  # stopped mid-stream: what the last stage got through
            if not entry.get("finished"):
                entry["frames"] = int(done.get(f'frames_done_total{{stream="{stream}"}}', 0))
        finished = [s for s, e in self.streams.items() if e.get("finished") and e.get("end_reason") == "end"]
        if self.failed:
            code = 2 if not finished else 1
        elif self.stop_reason in ("signal", "user"):
            code = 0
        elif self.skipped or any(e.get("end_reason") == "error" for e in self.streams.values()):
            code = 1 if finished else 2
        else:
            code = 0
        return RunResult(code, self.stop_reason or "", self.streams, self.skipped, self.errors,
                         self.board.summary(), elapsed_s)
