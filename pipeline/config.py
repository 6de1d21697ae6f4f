"""Pipeline configuration: YAML files validated into frozen pydantic models, with errors that name file and key.

The tree is `streams` (what to read), `runtime` (supervision, metrics), `graph` (the chain of stages after the
sources), `stages` (one section per stage, each validated by that stage's own `Config`) and, for a host of a
site, `node`. This module knows
the runtime's parts; the stage sections come from the registry the caller passes in, so `pipeline/` stays free of
gait. Relative paths in a file resolve against that file's folder, never the working directory; `--set KEY=VALUE`
overrides are YAML scalars applied before validation. Must not import `stages` or `engines`.
"""

from __future__ import annotations

import difflib
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)

from pipeline.errors import ConfigError


def resolve_config_path(value: str | Path, info: ValidationInfo) -> Path:
    """A path as written in a config file, resolved against that file's folder (validation context)."""
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path.absolute() if base is not None or path.is_absolute() else path


ConfigPath = Annotated[Path, AfterValidator(resolve_config_path)]
"""A path field; relative values resolve against the folder of the config file that set them."""


class StrictModel(BaseModel):
    """Frozen; unknown keys are errors. `replaced_keys` names the replacement of keys that were removed (dotted
    paths below this model -> what to write instead), so an old config fails with the way forward."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    replaced_keys: ClassVar[Mapping[str, str]] = {}


class CurveSettings(StrictModel):
    """CURVE key files for a tcp edge; see `pipeline.transport.CurveKeys`."""

    server_public_file: ConfigPath
    server_secret_file: ConfigPath | None = None
    client_secret_file: ConfigPath | None = None
    authorized_clients_dir: ConfigPath | None = None

    @model_validator(mode="after")
    def _server_names_its_clients(self) -> CurveSettings:
        """Refused at load time, before any process starts; the transport refuses it too (see `CurveKeys`)."""
        if self.server_secret_file is not None and self.authorized_clients_dir is None:
            raise ValueError("CURVE server without authorized_clients_dir would accept any client that knows the "
                             "server's public key; set authorized_clients_dir")
        return self


class StageConfig(StrictModel):
    """Settings every stage has: its CPU budget and how its input edge is reached."""

    threads: int = Field(1, ge=1, description="CPU threads for this stage's libraries (OpenCV, ONNX Runtime, torch)")
    input_endpoint: str | None = Field(
        None, description="ZeroMQ address of this stage's input; default ipc:// in the run folder (same host)"
    )
    input_bind: str | None = Field(None, description="address to bind when it differs from input_endpoint (tcp)")
    window: int = Field(8, ge=1, description="messages the upstream may have unacknowledged on this stage's input")
    frame_encoding: Literal["shm", "raw", "jpeg"] = Field(
        "shm", description="how frames reach this stage: shared memory (same host), raw or JPEG inline (tcp)"
    )
    curve: CurveSettings | None = None


class StreamSpec(StrictModel):
    """One input: a video file, an RTSP/HTTP URL, or `webcam:N`."""

    uri: str = Field(description="file path, rtsp:// or http(s):// URL, or webcam:N")
    id: str | None = Field(None, description="stream id in events and outputs; default: file stem or host")
    rotate: Literal["none", "cw90", "ccw90", "180"] = Field("none", description="for cameras mounted sideways")


class RuntimeConfig(StrictModel):
    """Supervision and observability of the process graph."""

    heartbeat_interval_s: float = Field(0.5, gt=0)
    heartbeat_timeout_s: float = Field(15.0, gt=0, description="a silent process is killed and restarted")
    ready_timeout_s: float = Field(180.0, gt=0, description="time a stage may take to open (load weights)")
    restart_backoff_initial_s: float = Field(0.5, ge=0)
    restart_backoff_max_s: float = Field(10.0, ge=0)
    max_restarts: int = Field(5, ge=0, description="restarts of one process within restart_window_s before giving up")
    restart_window_s: float = Field(120.0, gt=0)
    stop_timeout_s: float = Field(10.0, gt=0, description="grace period on shutdown before processes are killed")
    max_consecutive_failures: int = Field(
        50, ge=1, description="per-message failures in a row after which a stage exits to be restarted"
    )
    tick_ms: float = Field(50.0, gt=0, description="longest a stage waits for input before its time-driven work")
    max_batch: int = Field(16, ge=1, description="messages a stage may take from its input at once")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics on 127.0.0.1:PORT")
    metrics_log_interval_s: float = Field(10.0, gt=0)
    run_dir: ConfigPath | None = Field(None, description="folder for ipc sockets; default a fresh temp folder")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    progress: bool = Field(True, description="progress bar for batch runs (on terminals)")
    heap_trim_interval_s: float = Field(
        5.0, ge=0, description="return freed memory to the OS this often (glibc malloc_trim), RSS stays flat; 0: never"
    )


class LeaseSettings(StrictModel):
    """How a node holds its cameras on the broker (see `engines.leases`): a camera whose holder stops renewing is
    free `ttl_s` later; a holder cut off from the broker stops reading it `ttl_s / 2` after its last renewal."""

    ttl_s: float = Field(10.0, gt=0, description="a lease lives this long after its last renewal; same for the site")
    renew_interval_s: float | None = Field(None, gt=0, description="default ttl_s / 5; below ttl_s / 2")
    max_cameras: int | None = Field(None, ge=1, description="hold at most this many cameras (spread them over hosts)")
    rest_after_failure_s: float = Field(
        60.0, gt=0, description="a camera this host could not read (it never opened, or stages.source.max_outage_s "
        "passed) is handed to the other hosts and not taken back here for this long")


class NodeSettings(StrictModel):
    """One host of a site (`run_pipeline.py --node`, `gaitstream node`): its names, its broker, and whether its
    cameras (`streams:`) are its own (`leases: null`) or candidates it reads while it holds their lease."""

    site: str = Field(min_length=1, description="the site's name: lease bucket, event subjects")
    host: str = Field(default_factory=socket.gethostname, min_length=1, description="default: the hostname")
    nats_url: str | None = Field(None, description="the site's NATS broker (leases, and events unless the sink "
                                                   "names another)")
    nats_credentials: ConfigPath | None = Field(None, description="a .creds or nkey seed file for the broker")
    nats_ca: ConfigPath | None = Field(None, description="the CA (PEM) a tls:// broker's certificate must chain to")
    leases: LeaseSettings | None = Field(None, description="null: read every camera of streams:")

    @model_validator(mode="after")
    def _leases_need_a_broker(self) -> NodeSettings:
        if self.leases is not None and not self.nats_url:
            raise ValueError("leases: need nats_url (the broker that holds them)")
        if self.leases is not None and self.leases.renew_interval_s is not None \
                and self.leases.renew_interval_s >= self.leases.ttl_s / 2:
            raise ValueError(f"leases.renew_interval_s must be below ttl_s / 2 ({self.leases.ttl_s / 2:g} s): "
                             "a lease is given up half a TTL after its last renewal")
        return self


def _format_location(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model reached by following `loc` through nested model fields; None when `loc` leaves the models."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return current


def _fields_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Valid field names of the model reached by following `loc` (for 'did you mean' hints)."""
    return list(getattr(_model_at(model, loc), "model_fields", {}))


def _replacement(model: type[BaseModel], loc: Sequence[Any]) -> str | None:
    """What replaced the removed key at `loc`, from the `replaced_keys` of the nearest model above it that knows."""
    for depth in range(len(loc) - 1, -1, -1):
        replaced = getattr(_model_at(model, loc[:depth]), "replaced_keys", {})
        key = ".".join(str(part) for part in loc[depth:])
        if key in replaced:
            return replaced[key]
    return None


def format_validation_error(source: str, model: type[BaseModel], error: ValidationError,
                            overridden: Sequence[Sequence[str]] = ()) -> str:
    """One line per problem: `file: key.path: what is wrong (got value)`, with a hint for misspelt keys. A problem
    under a key given on the command line (`overridden`) names `--set KEY` instead of the file."""
    lines = []
    for item in error.errors():
        loc = item["loc"]
        given = [key for key in overridden if tuple(str(p) for p in loc[:len(key)]) == tuple(key)]
        if given:
            key = max(given, key=len)
            deeper = _format_location(loc[len(key):])
            where = f"--set {'.'.join(key)}" + (f": {deeper}" if deeper else "")
        else:
            where = f"{source}: {_format_location(loc) or '(top level)'}"
        if item["type"] == "extra_forbidden" and (replacement := _replacement(model, loc)) is not None:
            lines.append(f"{where}: no longer a setting: {replacement}")
        elif item["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else (f"; valid keys: {', '.join(valid)}" if valid else "")
            lines.append(f"{where}: unknown key{hint}")
        else:
            got = item.get("input")
            shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            lines.append(f"{where}: {item['msg']}{shown}")
    return "\n".join(lines)


def build_config_model(stage_configs: Mapping[str, type[StageConfig]], default_graph: Sequence[str]) -> type[BaseModel]:
    """The pipeline's config model: runtime parts here, one `stages.<name>` section per registered stage."""
    stages_model = create_model(
        "StagesConfig",
        __base__=StrictModel,
        **{name: (config_cls, Field(default_factory=config_cls)) for name, config_cls in stage_configs.items()},
    )
    stage_names = tuple(stage_configs)

    def _check_graph(graph: list[str]) -> list[str]:
        unknown = [name for name in graph if name not in stage_names]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known: {list(stage_names)}")
        if len(set(graph)) != len(graph):
            raise ValueError("a stage appears twice")
        return graph

    return create_model(
        "PipelineConfig",
        __base__=StrictModel,
        streams=(list[StreamSpec], Field(default_factory=list)),
        runtime=(RuntimeConfig, Field(default_factory=RuntimeConfig)),
        graph=(Annotated[list[str], AfterValidator(_check_graph)], Field(default_factory=lambda: list(default_graph))),
        stages=(stages_model, Field(default_factory=stages_model)),
        node=(NodeSettings | None, Field(None, description="this host as a node of a site (--node)")),
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """`stages.gait.window_frames=40` -> (['stages', 'gait', 'window_frames'], 40); the value is YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. stages.gait.window_frames=40")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML: {exc}") from exc
    return key.strip().split("."), parsed


def apply_override(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: Path) -> dict[str, Any]:
    """A config file as a dict; missing file, bad YAML or a non-mapping top level are ConfigErrors."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def merge_trees(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section; lists and values in `top` replace those in `base`."""
    merged = dict(base)
    for key, value in top.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge_trees(merged[key], value) if both_sections else value
    return merged


def path_keys(model: type[BaseModel]) -> list[tuple[tuple[str, ...], bool]]:
    """Where a config tree holds paths: (key path, is a list of paths or names) for every `Path`-typed field."""
    found: list[tuple[tuple[str, ...], bool]] = []

    def walk(cls: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for name, field in cls.model_fields.items():
            kinds = _leaf_types(field.annotation)
            nested = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
            if any(k is Path for k in kinds):
                found.append(((*prefix, name), get_origin(field.annotation) is list))
            for sub in nested:
                walk(sub, (*prefix, name))

    walk(model, ())
    return found


def _leaf_types(annotation: Any) -> list[Any]:
    """The concrete types inside Annotated / Optional / Union / list annotations."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _leaf_types(get_args(annotation)[0])
    if origin in (Union, UnionType, list, tuple):
        return [leaf for arg in get_args(annotation) for leaf in _leaf_types(arg)]
    return [annotation]


def _absolute_paths(tree: dict[str, Any], folder: Path, keys: Sequence[tuple[tuple[str, ...], bool]]) -> None:
    """Make the relative paths of a tree read from `folder` absolute, so they keep their meaning in another file's
    tree (names without a folder part in lists stay names: official weights are looked up by name)."""
    for key_path, is_list in keys:
        node: Any = tree
        for part in key_path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or node.get(key_path[-1]) is None:
            continue
        value = node[key_path[-1]]

        def absolute(item: Any, names_stay: bool) -> Any:
            if not isinstance(item, str) or Path(item).expanduser().is_absolute():
                return item
            if names_stay and len(Path(item).parts) < 2:
                return item
            return str((folder / item).resolve())

        node[key_path[-1]] = [absolute(v, True) for v in value] if is_list and isinstance(value, list) \
            else absolute(value, False)


def read_config_tree(path: Path, keys: Sequence[tuple[tuple[str, ...], bool]] = ()) -> dict[str, Any]:
    """A config file with its `extends: OTHER.yaml` chain merged in. `extends` is relative to the extending file
    (or absolute), so a site's config anywhere can extend the shipped ones; relative paths at `keys` in a file from
    another folder are made absolute against that file's folder first, so every path means what its file meant."""
    tree = read_yaml(path)
    seen = {path.resolve()}
    current = path
    while "extends" in tree:
        parent = (current.parent / str(tree.pop("extends"))).resolve()
        if parent in seen:
            raise ConfigError(f"{path}: extends: {parent} makes a loop")
        seen.add(parent)
        parent_tree = read_yaml(parent)
        if parent.parent != path.resolve().parent:
            _absolute_paths(parent_tree, parent.parent, keys)
        tree = merge_trees(parent_tree, tree)
        current = parent
    return tree


def load_config(
    model: type[BaseModel],
    path: Path | None,
    overrides: Sequence[tuple[list[str], Any]] = (),
) -> Any:
    """Read, override, validate. Relative paths, overrides' too, resolve against the file's folder."""
    tree = read_config_tree(path, path_keys(model)) if path is not None else {}
    for key_path, value in overrides:
        apply_override(tree, key_path, value)
    source = str(path) if path is not None else "(defaults)"
    base_dir = path.parent.absolute() if path is not None else Path.cwd()
    try:
        return model.model_validate(tree, context={"base_dir": base_dir})
    except ValidationError as exc:
        overridden = [key_path for key_path, _ in overrides]
        raise ConfigError(format_validation_error(source, model, exc, overridden)) from None


def dump_config(config: BaseModel) -> str:
    """The validated tree as YAML that loads back to the same config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
