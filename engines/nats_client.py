"""What every NATS client of the project needs before it connects: nats-py itself (the optional `cluster` extra,
imported only when a NATS URL is configured) and the connection options for a credentials file and a site's CA.

Must not import `pipeline` or `stages`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from types import ModuleType
from typing import Any


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


def connect_options(error: type[Exception], *, credentials: Path | None = None,
                    ca: Path | None = None) -> dict[str, Any]:
    """nats-py's options for a credentials file (a `.creds` file: user JWT + nkey seed, or a bare nkey seed) and
    for a site's own CA that the broker's certificate must chain to (a tls:// URL; without it the system's CAs,
    or $SSL_CERT_FILE, decide)."""
    options: dict[str, Any] = {}
    if credentials is not None:
        try:
            text = credentials.read_text()
        except OSError as exc:
            raise error(f"cannot read the NATS credentials {credentials}: {exc.strerror or exc}") from exc
        options["user_credentials" if "BEGIN NATS USER JWT" in text else "nkeys_seed"] = str(credentials)
    if ca is not None:
        try:
            options["tls"] = ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise error(f"cannot read the NATS CA {ca}: {getattr(exc, 'strerror', None) or exc}") from exc
    return options
