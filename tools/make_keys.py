"""Create CURVE keys for tcp:// edges between hosts: one server key pair, and one key pair per client host.

    python tools/make_keys.py --out keys/ --server edge --client cam-host-1 --client cam-host-2
    python tools/make_keys.py --out keys/ --server edge --client cam-host-1 --force   # replace existing keys

The server is the host whose stage binds the tcp edge (its `input_bind`); the clients are the hosts whose stages
connect to it. Writes, with pyzmq's `zmq.auth.create_certificates`:

    keys/edge.key                            server public key: every host of the edge gets a copy
    keys/edge.key_secret                     server key pair: the server host only
    keys/cam-host-1.key_secret               a client's key pair: that client host only
    keys/authorized_clients/cam-host-1.key   a client's public key: the server admits only the keys in this folder

Secret files are written with mode 0600. Existing keys are never overwritten without --force. The command prints
which file goes to which host and the `curve:` section of the stage config on each side. Exit codes: 0 written,
2 bad input.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import zmq.auth

AUTHORIZED_CLIENTS = "authorized_clients"
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def planned_files(out: Path, server: str, clients: list[str]) -> list[Path]:
    """Every file this run writes: the server's pair, then each client's secret and authorised public key."""
    files = [out / f"{server}.key", out / f"{server}.key_secret"]
    for client in clients:
        files += [out / f"{client}.key_secret", out / AUTHORIZED_CLIENTS / f"{client}.key"]
    return files


def create_pair(out: Path, name: str, public_to: Path) -> None:
    """A key pair `name`: the public key to `public_to`, the secret to `out`, mode 0600 from the start.

    pyzmq writes with the process umask, so the pair is created in a private (0700) folder, the secret made 0600
    there, and both moved into place: the secret is never readable by others, not even for a moment.
    """
    with tempfile.TemporaryDirectory(dir=out, prefix=".make_keys-") as private:
        public_file, secret_file = zmq.auth.create_certificates(private, name)
        os.chmod(secret_file, 0o600)
        os.replace(secret_file, out / f"{name}.key_secret")
        os.replace(public_file, public_to / f"{name}.key")


def instructions(out: Path, server: str, clients: list[str]) -> str:
    """Which file goes to which host, and the `curve:` section of the stage config on each side."""
    server_public, authorized = out / f"{server}.key", out / AUTHORIZED_CLIENTS
    lines = [
        f"server host ({server}, binds the tcp edge): {server_public}, {out / f'{server}.key_secret'}, {authorized}/",
        *(f"client host ({client}, connects): {server_public}, {out / f'{client}.key_secret'}" for client in clients),
        "never copy a .key_secret file to any host but its own",
        "",
        "stages.<receiving stage>.curve in the config on the server host:",
        "  curve:",
        f"    server_public_file: {server_public}",
        f"    server_secret_file: {out / f'{server}.key_secret'}",
        f"    authorized_clients_dir: {authorized}",
    ]
    for client in clients:
        lines += [
            f"stages.<receiving stage>.curve in the config on client host {client}:",
            "  curve:",
            f"    server_public_file: {server_public}",
            f"    client_secret_file: {out / f'{client}.key_secret'}",
        ]
    lines.append("(paths as written here; relative paths in a config resolve against that config file's folder)")
    return "\n".join(lines)


def check_names(server: str, clients: list[str]) -> str | None:
    """Why these names cannot be key file names, or None when they can."""
    names = [server, *clients]
    unsafe = [name for name in names if not SAFE_NAME.fullmatch(name)]
    if unsafe:
        return f"a name holds letters, digits, '.', '_' and '-', and starts with a letter or digit: {', '.join(unsafe)}"
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        return f"each host needs its own name; given more than once: {', '.join(repeated)}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the keys (created if missing)")
    parser.add_argument("--server", required=True, help="name of the host that binds the tcp edge")
    parser.add_argument("--client", action="append", required=True, help="name of a connecting host (repeatable)")
    parser.add_argument("--force", action="store_true", help="replace keys that already exist")
    args = parser.parse_args(argv)
    problem = check_names(args.server, args.client)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    files = planned_files(args.out, args.server, args.client)
    existing = [str(path) for path in files if path.exists()]
    if existing and not args.force:
        print(f"error: keys exist, not overwritten (use --force to replace them): {', '.join(existing)}",
              file=sys.stderr)
        return 2
    authorized = args.out / AUTHORIZED_CLIENTS
    try:
        authorized.mkdir(parents=True, exist_ok=True)
        create_pair(args.out, args.server, public_to=args.out)
        for client in args.client:
            create_pair(args.out, client, public_to=authorized)
    except OSError as exc:
        print(f"error: cannot write keys to {args.out}: {exc}", file=sys.stderr)
        return 2
    print(instructions(args.out, args.server, args.client))
    others = sorted(path.name for path in authorized.glob("*.key") if path not in files)
    if others:
        print(f"note: {authorized} also admits {', '.join(others)}; delete a key there to revoke that client")
    return 0


if __name__ == "__main__":
    sys.exit(main())
