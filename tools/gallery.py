"""Look after the gallery of enrolled identities.

    python tools/gallery.py list                       # name, embeddings, enrolled when, from where
    python tools/gallery.py rename anon-0003 dave      # name an auto-enrolled stranger
    python tools/gallery.py delete dave
    python tools/gallery.py export backup.npz          # portable: names + embeddings + encoder, no pickle
    python tools/gallery.py import backup.npz          # refused when its encoder differs from the gallery's
    python tools/gallery.py roles --gallery postgresql://owner@db/gallery    # login roles for matchers, enrolment

The gallery is `--gallery PATH` (or a postgresql:// URL; before or after the command), else the config's
`stages.match.gallery`, else $GAITSTREAM_GALLERY, else ./gallery.sqlite: the lookup every tool and run_pipeline.py
make. Exit codes: 0 done, 2 nothing done (the error says why).

`roles` (PostgreSQL only, as the gallery's owner with CREATEROLE) creates the schema if missing and the login roles
`gaitstream_reader` (matchers: read and follow) and `gaitstream_writer` (enrolment, this tool: also add, rename,
delete), with the passwords in $GAITSTREAM_READER_PASSWORD and $GAITSTREAM_WRITER_PASSWORD when set.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from engines.errors import EngineError
from engines.gallery import Gallery, open_gallery, resolve_gallery_path
from pipeline.errors import GaitstreamError

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "default.yaml"


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--gallery", default=argparse.SUPPRESS,
                        help="gallery file or postgresql:// URL (default: the config's, $GAITSTREAM_GALLERY, "
                             "./gallery.sqlite)")
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help=f"pipeline YAML whose stages.match.gallery to use (default: {DEFAULT_CONFIG.name})")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", parents=[common], help="every identity with its embedding count and sources")
    rename = commands.add_parser("rename", parents=[common], help="give an identity another name")
    rename.add_argument("old")
    rename.add_argument("new")
    delete = commands.add_parser("delete", parents=[common], help="remove an identity and its embeddings")
    delete.add_argument("name")
    export = commands.add_parser("export", parents=[common], help="write every identity to an .npz")
    export.add_argument("path", type=Path)
    import_ = commands.add_parser("import", parents=[common], help="add every identity of an exported .npz")
    import_.add_argument("path", type=Path)
    roles = commands.add_parser("roles", parents=[common], help="create the reader and writer roles (PostgreSQL)")
    roles.add_argument("--reader", default="gaitstream_reader", help="the matchers' role")
    roles.add_argument("--writer", default="gaitstream_writer", help="enrolment's role")
    args = parser.parse_args(argv)

    try:
        path = gallery_path(getattr(args, "gallery", None), getattr(args, "config", DEFAULT_CONFIG))
        gallery = open_gallery(path, create=args.command in ("import", "roles"))
        try:
            return run(args, gallery)
        finally:
            gallery.close()
    except (EngineError, GaitstreamError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def gallery_path(explicit: str | None, config_path: Path) -> Path | str:
    """--gallery, else the config's stages.match.gallery, else $GAITSTREAM_GALLERY, else ./gallery.sqlite."""
    if explicit is not None:
        return resolve_gallery_path(explicit)
    from stages import load_pipeline_config

    return resolve_gallery_path(load_pipeline_config(config_path).stages.match.gallery)


def run(args: argparse.Namespace, gallery: Gallery) -> int:
    if args.command == "list":
        identities = gallery.identities()
        print(f"# {gallery.path}: {len(identities)} identities, encoder {gallery.encoder or '-'}")
        for identity in identities:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(identity.last_enrolled_s))
            kind = " (anonymous)" if identity.anonymous else ""
            print(f"{identity.name}{kind}\t{identity.embeddings} embeddings\tlast enrolled {when}\t"
                  f"{', '.join(identity.sources) or '-'}")
    elif args.command == "rename":
        gallery.rename(args.old, args.new)
        print(f"renamed {args.old} to {args.new}")
    elif args.command == "delete":
        removed = gallery.delete(args.name)
        print(f"deleted {args.name} ({removed} embeddings)")
    elif args.command == "export":
        written, count = gallery.export(args.path)
        print(f"exported {count} embeddings to {written}")
    elif args.command == "import":
        count = gallery.import_(args.path)
        print(f"imported {count} embeddings from {args.path}")
    elif args.command == "roles":
        if not hasattr(gallery, "grant_roles"):
            print(f"error: {gallery.path} is a file: roles are for a PostgreSQL gallery", file=sys.stderr)
            return 2
        gallery.grant_roles(reader=args.reader, writer=args.writer,
                            passwords={args.reader: os.environ.get("GAITSTREAM_READER_PASSWORD"),
                                       args.writer: os.environ.get("GAITSTREAM_WRITER_PASSWORD")})
        print(f"{gallery.path}: {args.reader} may read and follow the gallery, {args.writer} may also change it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
