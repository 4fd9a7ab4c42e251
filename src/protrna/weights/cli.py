"""``protrna download`` and ``protrna convert``: official weights into the cache, and original h5
files into ``save_pretrained`` directories."""

from __future__ import annotations

import argparse

from .registry import OFFICIAL_WEIGHTS, cache_root, get_official


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    names = ", ".join(OFFICIAL_WEIGHTS)
    download = subparsers.add_parser(
        "download",
        help="download and convert the official weights into the cache",
        description=(
            "Download official weights from Zenodo (md5 checked, resumable) and convert them into "
            f"the cache, so that later runs need no network. Names: {names} (default: all). The "
            "cache is $PROTRNA_HOME, else $XDG_CACHE_HOME/protrna, else ~/.cache/protrna."
        ),
    )
    download.add_argument("names", nargs="*", metavar="NAME", help=f"one of {names}")
    download.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    download.add_argument(
        "--remove-h5",
        action="store_true",
        help="delete each original h5 once converted (saves its size on disk)",
    )
    download.set_defaults(func=run_download)

    convert = subparsers.add_parser(
        "convert",
        help="convert an original Keras .h5 into a save_pretrained directory",
        description=(
            "Convert a weight file of the original TensorFlow ProtRNA (language model or "
            "RotaFormer head, told apart by its contents) into a directory that "
            "protrna.load_pretrained_model loads."
        ),
    )
    convert.add_argument("h5", metavar="FILE.h5", help="original-layout Keras weight file")
    convert.add_argument("out_dir", metavar="OUTDIR", help="new (or empty) directory to write")
    convert.add_argument(
        "--attention-heads",
        type=int,
        default=None,
        help="heads per block of a language model (not stored in the file; default width / 64)",
    )
    convert.set_defaults(func=run_convert)


def run_download(args: argparse.Namespace) -> int:
    from ..pretrained import official_model_dir

    names = args.names or list(OFFICIAL_WEIGHTS)
    for name in names:
        get_official(name)  # reject a wrong name before downloading anything
    print(f"weights cache: {cache_root()}")
    for name in names:
        converted = official_model_dir(name, progress=not args.quiet)
        original = get_official(name).download_path
        print(f"{name}: {converted}")
        if args.remove_h5 and original.exists():
            original.unlink()
            print(f"  removed {original}")
        elif original.exists():
            print(f"  original: {original}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..pretrained import convert_h5, h5_kind

    out_dir = convert_h5(args.h5, args.out_dir, attention_heads=args.attention_heads)
    kind = "language model" if h5_kind(args.h5) == "lm" else "structure head"
    print(f"converted {args.h5} ({kind}) into {out_dir}")
    return 0
