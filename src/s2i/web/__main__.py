"""``python -m s2i.web [flags]``: ``s2i web`` without building the whole CLI (the slim web image's entry point).

The full ``s2i`` parser registers every command, some of which import the conversion
and training stacks; the web image has neither, so it parses only the web flags.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the ``s2i web`` flags and serve."""
    from s2i import cli

    parser = argparse.ArgumentParser(prog="python -m s2i.web")
    cli._add_web(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["web", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
