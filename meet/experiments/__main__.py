"""``python -m meet.experiments {ablation,reproduce} ...``: one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "ablation": ("meet.experiments.ablation",
                 "train small Shapes models without one part of MEET at a time; sweep n_bits, R and q; "
                 "write a table and figures (generates the Shapes data when --data is empty or missing)"),
    "reproduce": ("meet.experiments.reproduce",
                  "train on precomputed Flickr30K / COCO features and evaluate under the paper's "
                  "protocols, beside the paper's numbers"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI; only ``command``'s module is imported (and its flags added), so a
    subcommand never pays for another's imports."""
    parser = argparse.ArgumentParser(prog="python -m meet.experiments",
                                     description="Experiments on top of meet.train and meet.evaluate.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{ablation,reproduce}")
    for name, (module, summary) in SUBCOMMANDS.items():
        if name != command:
            sub.add_parser(name, help=summary)
            continue
        mod = importlib.import_module(module)
        child = sub.add_parser(name, help=summary, description=mod.__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog=getattr(mod, "EPILOG", None))
        mod.add_arguments(child)
        child.set_defaults(module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, then hand the namespace to the subcommand's ``run``; returns its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv and argv[0] in SUBCOMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    accepts_extra = getattr(args.module, "ACCEPTS_EXTRA_FLAGS", False)
    if extra and not accepts_extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.module.run(args, extra) if accepts_extra else args.module.run(args)


if __name__ == "__main__":
    sys.exit(main())
