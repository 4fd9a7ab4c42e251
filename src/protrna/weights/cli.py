"""``protrna download`` and ``protrna convert``: official weights into the cache, and original h5
files into ``save_pretrained`` directories."""

from __future__ import annotations

import argparse
import sys

from .cache import official_model_dir
from .convert import KIND_NAMES, convert_h5, h5_kind
from .registry import OFFICIAL_WEIGHTS, cache_root, get_official



def add_parser(subparsers: argparse._SubParsersAction) -> None:
    names = ", ".join(OFFICIAL_WEIGHTS)
    download = subparsers.add_parser(
        "download",
        help="download and convert the official weights into the cache",
        description=(
            "Download official weights from Zenodo (md5 checked, resumable) and convert them into "
            f"the cache, so that later runs need no network. Names: {names} (default: all; "
            "--list shows what each is, its record and threshold, and which facts about it are "
            "unverified). The cache is $PROTRNA_HOME, else $XDG_CACHE_HOME/protrna, else "
            "~/.cache/protrna."
        ),
    )
    download.add_argument("names", nargs="*", metavar="NAME", help=f"one of {names}")
    download.add_argument("--list", action="store_true", help="list the official weights and exit")
    # Spelled as protrna.options' --quiet (tests/test_cli.py checks), without importing the runtime.
    download.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
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
            "protrna.load_pretrained_model loads. Every tensor of the file must be used, and the "
            "directory appears only after it has been reloaded and found bit-identical to the "
            "converted model (tensors and outputs on a fixed probe)."
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
    convert.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold to store with a structure head (not in the file; default 0.25, "
        "the released head's; the RnaBench heads' are listed by `protrna download --list`)",
    )
    convert.set_defaults(func=run_convert)


def list_official() -> str:
    """One block of lines per official entry: name, kind, file, records, threshold, what is unverified."""
    lines = [f"weights cache: {cache_root()}"]
    for weights in OFFICIAL_WEIGHTS.values():
        cached = "converted in the cache" if (weights.converted_dir / "config.json").is_file() else "not cached"
        lines.append(f"{weights.name}  ({KIND_NAMES[weights.kind]}, about {weights.approx_size}, {cached})")
        lines.append(f"    {weights.description}")
        lines.append(f"    file {weights.filename} in Zenodo record {' or '.join(weights.records)}")
        if weights.threshold is not None:
            lines.append(f"    threshold {weights.threshold}")
        if weights.unverified:
            lines.append(f"    unverified: {', '.join(weights.unverified)}")
    return "\n".join(lines)


def run_download(args: argparse.Namespace) -> int:
    if args.list:
        print(list_official())
        return 0
    names = args.names or list(OFFICIAL_WEIGHTS)
    for name in names:
        get_official(name)  # reject a wrong name before downloading anything
    print(f"weights cache: {cache_root()}")
    failed = []
    for name in names:
        try:
            converted = official_model_dir(name, progress=not args.quiet)
        except (OSError, ValueError) as error:
            if len(names) == 1:
                raise
            # One entry that cannot be fetched (e.g. an unverified record) does not stop the rest.
            print(f"{name}: failed: {error}", file=sys.stderr)
            failed.append(name)
            continue
        original = get_official(name).download_path
        print(f"{name}: {converted}")
        if args.remove_h5 and original.exists():
            original.unlink()
            print(f"  removed {original}")
        elif original.exists():
            print(f"  original: {original}")
    if failed:
        print(f"protrna download: {len(failed)} of {len(names)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def run_convert(args: argparse.Namespace) -> int:
    kind = h5_kind(args.h5)
    out_dir = convert_h5(
        args.h5, args.out_dir, kind=kind, attention_heads=args.attention_heads, threshold=args.threshold
    )
    print(f"converted {args.h5} ({KIND_NAMES[kind]}) into {out_dir}, checked by reloading it")
    return 0
