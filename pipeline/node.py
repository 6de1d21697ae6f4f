"""One host of a site: the pipeline of this machine, reading the cameras it holds.

A node is a normal run (one supervisor, the stages once, a source process per camera) whose sources run on demand.
With `node.leases` its cameras are candidates: a source starts when this host gains a camera's lease and stops when
it loses it, within a quarter of the TTL (a `Stop`, then a kill), so that with the fence at half the TTL it has
stopped before any other host can take the camera. The source process itself also stops reading at the fence
(`pipeline.fence`: the node writes each renewal's deadline where the source checks it before every frame), so a node
that is frozen rather than dead cannot leave a camera being read. The leases are taken only once every stage is
ready: a host that cannot run its stages holds nothing. Without leases every camera of `streams:` runs here, as one
host of a site configured by hand. On the way out the sources stop first and the leases are released after, so a
camera is free for others only once nothing here reads it.

A camera this host cannot read (its source reports it never opened, or lost for longer than
`stages.source.max_outage_s`) is handed over: its lease is left to expire for another host to take, and this host
rests from it for `node.leases.rest_after_failure_s`. So a host cut off from one camera does not keep it from the
hosts that can reach it.

The leaseholder is passed in (`engines.leases.CameraLeases`, or anything with the same members), so this
module stays free of the broker. Must not import `stages` or `engines`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pipeline.fence import deadline_path, extend_deadline
from pipeline.messages import Report, ReportEvent
from pipeline.stage import Stage
from pipeline.supervisor import RunResult, Supervisor

log = logging.getLogger(__name__)

#: What a source reports about a camera it cannot read: never opened, or lost for good.
UNREADABLE = (ReportEvent.INPUT_FAILED, ReportEvent.STREAM_LOST)


class Leaseholder(Protocol):
    """Holds camera leases; reports each gained (True) and lost (False) camera through `on_change`, and the
    monotonic time by which this host must stop reading a camera unless renewed again through `on_renew`."""

    on_change: Callable[[str, bool], None] | None
    on_renew: Callable[[str, float], None] | None

    def start(self) -> None: ...

    def hand_over(self, camera: str, rest_s: float) -> None: ...

    def close(self) -> None: ...


def run_node(config: Any, stages: Mapping[str, type[Stage]], leases: Leaseholder | None = None) -> RunResult:
    """Run this host's pipeline until stopped (signal or failure), its cameras following `leases` (None: all)."""
    node = config.node
    cameras = [stream.id for stream in config.streams]

    def hand_over_unreadable(report: Report) -> None:
        if leases is not None and report.stream_id in cameras and report.event in UNREADABLE:
            log.warning("camera %s cannot be read here (%s): handing it to the other hosts, not taking it back "
                        "for %g s", report.stream_id, report.detail or report.event.value,
                        node.leases.rest_after_failure_s)
            leases.hand_over(report.stream_id, node.leases.rest_after_failure_s)

    supervisor = Supervisor(config, stages, sources_on_demand=True, read_deadlines=leases is not None,
                            host=node.host, on_ready=leases.start if leases is not None else None,
                            on_report=hand_over_unreadable)
    if leases is None:
        for camera in cameras:
            supervisor.start_source(camera)
        log.info("node site=%s host=%s reads its cameras %s", node.site, node.host, ", ".join(cameras))
        return supervisor.run()
    stop_within_s = node.leases.ttl_s / 4

    def follow(camera: str, held: bool) -> None:
        if held:
            supervisor.start_source(camera)
        else:
            supervisor.stop_source(camera, stop_within_s)

    leases.on_change = follow
    leases.on_renew = lambda camera, fence_at_s: extend_deadline(deadline_path(supervisor.run_dir, camera),
                                                                fence_at_s)
    log.info("node site=%s host=%s reads whichever of %s it holds (lease TTL %g s)", node.site, node.host,
             ", ".join(cameras), node.leases.ttl_s)
    try:
        return supervisor.run()
    finally:
        leases.close()
