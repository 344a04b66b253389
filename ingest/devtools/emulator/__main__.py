"""``python -m ingest.devtools.emulator --port N ...``: serve the emulator until Ctrl-C."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from ingest.devtools.emulator.faults import Faults
from ingest.devtools.emulator.profiles import PROFILES
from ingest.devtools.emulator.server import DEFAULT_TOKENS, serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ingest.devtools.emulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--token",
        dest="tokens",
        action="append",
        help=f"accepted bearer token, repeatable (default: {', '.join(sorted(DEFAULT_TOKENS))})",
    )
    p.add_argument("--processing-delay", type=float, default=0.2, help="seconds a file stays in state 0")
    p.add_argument("--rate-limit", type=float, help="requests per second per token (default unlimited)")
    p.add_argument(
        "--bucket",
        dest="buckets",
        type=int,
        action="append",
        help="existing bucket id, repeatable (default: every positive id exists)",
    )
    p.add_argument("--seed", type=int, help="seed of the fault dice")
    p.add_argument(
        "--profile", default="lenient", choices=list(PROFILES), help="how to answer where the vendor page is silent"
    )
    p.add_argument("--access-log", action="store_true", help="log each request line (never headers)")
    faults = p.add_argument_group("faults (all off by default)")
    # One flag per Faults field, so a new knob needs no change here.
    for f in fields(Faults):
        kind = int if f.type in (int, "int") else float
        default = None if f.default is MISSING else f.default
        faults.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=default, metavar=kind.__name__)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    knobs = {f.name: getattr(args, f.name) for f in fields(Faults)}
    serve(
        host=args.host,
        port=args.port,
        tokens=set(args.tokens) if args.tokens else DEFAULT_TOKENS,
        processing_delay=args.processing_delay,
        rate_limit=args.rate_limit,
        buckets=set(args.buckets) if args.buckets else None,
        seed=args.seed,
        faults=knobs,
        access_log=args.access_log,
        announce=True,
        profile=args.profile,
    )


if __name__ == "__main__":
    main()
