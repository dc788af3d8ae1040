"""``ddos-shield``: the one console command (see ``ddos-shield --help``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ddos_shield.errors import ShieldError

DESCRIPTION = """\
DDoS Shield watches the traffic of the protected prefixes on the interfaces it is
given, detects floods within a fraction of a second and blocks them in the kernel
(XDP, or nftables where XDP cannot attach), keeping legitimate users served.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddos-shield", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("build", help="compile the XDP program (done by set-up; again after an upgrade)")
    b.add_argument("--force", action="store_true", help="rebuild even if the object is up to date")
    b.set_defaults(func=_cmd_build)
    return p


def _cmd_build(args: argparse.Namespace) -> int:
    from ddos_shield.dataplane.build import build

    print(build(force=args.force))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except ShieldError as e:
        print(f"ddos-shield: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
