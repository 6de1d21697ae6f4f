"""Look after the gallery of enrolled identities.

    python tools/gallery.py list                       # name, embeddings, enrolled when, from where
    python tools/gallery.py rename anon-0003 dave      # name an auto-enrolled stranger
    python tools/gallery.py delete dave
    python tools/gallery.py export backup.npz          # portable: names + embeddings + encoder, no pickle
    python tools/gallery.py import backup.npz          # refused when its encoder differs from the gallery's

The gallery is `--gallery PATH`, else $GAITSTREAM_GALLERY, else ./gallery.sqlite (as for run_pipeline.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engines.errors import EngineError
from engines.gallery import GalleryStore, resolve_gallery_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=Path, help="gallery file (default: $GAITSTREAM_GALLERY, ./gallery.sqlite)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every identity with its embedding count and sources")
    rename = commands.add_parser("rename", help="give an identity another name")
    rename.add_argument("old")
    rename.add_argument("new")
    delete = commands.add_parser("delete", help="remove an identity and its embeddings")
    delete.add_argument("name")
    export = commands.add_parser("export", help="write every identity to an .npz")
    export.add_argument("path", type=Path)
    import_ = commands.add_parser("import", help="add every identity of an exported .npz")
    import_.add_argument("path", type=Path)
    args = parser.parse_args(argv)

    path = resolve_gallery_path(args.gallery)
    try:
        gallery = GalleryStore(path, create=args.command == "import")
        try:
            return run(args, gallery)
        finally:
            gallery.close()
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, gallery: GalleryStore) -> int:
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
        count = gallery.export(args.path)
        print(f"exported {count} embeddings to {args.path}")
    elif args.command == "import":
        count = gallery.import_(args.path)
        print(f"imported {count} embeddings from {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
