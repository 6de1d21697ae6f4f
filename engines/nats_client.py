"""What every NATS client of the project needs before it connects: nats-py itself (the optional `cluster` extra,
imported only when a NATS URL is configured) and the connection options for a credentials file.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


def import_nats(needed_for: str, error: type[Exception], *, with_nkeys: bool = False) -> ModuleType:
    """nats-py (and nkeys, which signs with credentials), or `error` saying how to install them; `needed_for` names
    the feature and its setting, e.g. "events on NATS (stages.sink.nats_url)"."""
    try:
        import nats

        if with_nkeys:
            import nkeys  # noqa: F401 - nats-py imports it only when connecting, in the client's thread
    except ImportError as exc:
        raise error(f"{needed_for} need the cluster extra: pip install .[cluster] (missing {exc.name or exc})") \
            from exc
    return nats


def credential_options(path: Path | None, error: type[Exception]) -> dict[str, str]:
    """nats-py's option for a credentials file: a `.creds` file (user JWT + nkey seed) or a bare nkey seed."""
    if path is None:
        return {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"cannot read the NATS credentials {path}: {exc.strerror or exc}") from exc
    return {"user_credentials": str(path)} if "BEGIN NATS USER JWT" in text else {"nkeys_seed": str(path)}
