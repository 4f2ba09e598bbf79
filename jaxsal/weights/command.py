"""The `jaxsal-convert` command: turn a torchvision checkpoint into jaxsal weights, or download one.

    jaxsal-convert --download                      # fetch the official AlexNet file, convert, cache
    jaxsal-convert --download Resnet50             # the same for another network
    jaxsal-convert --src alexnet-owt-7be5be79.pth  # convert a file you have into the cache
    jaxsal-convert --net Vgg11 --src vgg11-bbd30ac9.pth
    jaxsal-convert --src FILE.pth --dst OUT.safetensors
    jaxsal-convert --which                         # which weights jaxsal would use now

Without --dst the result goes to jaxsal's cache (`<cache>/<net>.safetensors`), where
`dnn_saliency` finds it with no further option. Exit status: 0 done, 2 user error (one-line
message), 1 unexpected failure. argparse rather than absl flags: this separate tool must not
register flags in the process-wide absl FLAGS that the main CLI owns.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import traceback

from jaxsal.errors import UsageError

PROG = "jaxsal-convert"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Convert a torchvision checkpoint (.pth) to jaxsal's safetensors weights, or download "
            "and convert the official one. The .pth is read without torch and without executing "
            "its pickle. Without --dst the result is stored in jaxsal's cache "
            "($JAXSAL_HOME or ~/.cache/jaxsal), where dnn_saliency finds it automatically."
        ),
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--src", metavar="FILE", help="torchvision checkpoint to convert, e.g. alexnet-owt-7be5be79.pth")
    what.add_argument("--download", nargs="?", const="", metavar="NET",
                      help="download the network's official checkpoint (sha256-checked against "
                           "its file name) and convert it; NET defaults to --net")
    what.add_argument("--which", action="store_true", help="print which weights jaxsal would load, and exit")
    parser.add_argument("--dst", metavar="FILE",
                        help="output .safetensors file (default: <cache>/<net>.safetensors)")
    parser.add_argument("--url", metavar="URL",
                        help="download from URL instead (default: $JAXSAL_ALEXNET_URL or the torchvision URL)")
    parser.add_argument("--net", default=None, metavar="Net", help="network (default: AlexNet)")
    parser.add_argument("--quiet", action="store_true", help="no progress line while downloading")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors, like the main CLI
    downloading = args.download is not None
    if args.url and not downloading:
        parser.error("--url only applies with --download")
    if args.download and args.net and args.download != args.net:
        parser.error(f"--download {args.download} and --net {args.net} name different networks")
    if args.dst and args.which:
        parser.error("--dst does not apply with --which")

    from jaxsal.models import get_net_spec
    from jaxsal.weights import conversion, fetch, load_weights, resolve

    spec = get_net_spec(args.download or args.net or "AlexNet")
    if args.which:
        print(load_weights(spec).describe())
        return 0
    dst = pathlib.Path(args.dst) if args.dst else resolve.cached_weights_path(spec)
    if downloading:
        with fetch.fetched_checkpoint(spec, args.url, dst.parent, progress=not args.quiet) as pth:
            weights = conversion.convert_checkpoint(spec, pth, dst)
    else:
        weights = conversion.convert_checkpoint(spec, args.src, dst)
    prov = weights.provenance
    print(f"wrote {weights.source} (sha256 {weights.sha256}) from {prov['source_file']} "
          f"(sha256 {prov['source_sha256']})")
    if args.dst is None:
        print(f"jaxsal will use it automatically (unless {resolve.WEIGHTS_ENV} or an explicit weights file is given)")
    else:
        print(f"use it with {resolve.WEIGHTS_ENV}={weights.source}")
    return 0


def run(argv: list[str] | None = None) -> int:
    """Console-script entry point: `main` with errors turned into exit codes."""
    try:
        return main(argv)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not a user error: show where
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(run())
