"""`yizhan demo [--days N] [--scale S] [--seed K]`, to be wired in services/cli.py:

    demo = sub.add_parser("demo", help="drive realistic casework through the running stack")
    add_arguments(demo)
    demo.set_defaults(fn=lambda settings, args: demo_command(settings, args))
"""

from __future__ import annotations

import argparse
import asyncio

from services.demo.progress import ProgressBar
from services.demo.report import print_report
from services.demo.runner import DEFAULT_SCALE, run_demo, urls_of
from services.demo.stack import running_stack
from services.intake.settings import IntakeSettings
from shared.settings import Settings
from shared.stack import endpoints


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, default=1, help="days of casework (default 1)")
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE,
                        help="share of docs/domain.md's 1,560 contacts a day "
                             f"(default {DEFAULT_SCALE})")
    parser.add_argument("--seed", type=int, default=2010, help="random seed of the workload")


def demo(settings: Settings, *, days: int, scale: float, seed: int) -> int:
    """Run the demo against the running stack (starting `yizhan up` if none answers), print
    the report; exit code 0 when every check passed."""
    if days < 1 or not 0 < scale <= 10:
        raise SystemExit("--days must be ≥ 1 and --scale in (0, 10]")
    urls = urls_of(settings, IntakeSettings())
    with running_stack(urls, settings.data_dir), endpoints(settings, kafka=True) as ep:
        bar = ProgressBar()
        try:
            report = asyncio.run(run_demo(settings, ep, days=days, scale=scale, seed=seed,
                                          progress=bar))
        finally:
            bar.finish()
    print_report(report)
    return 0 if report.ok else 1


def demo_command(settings: Settings, args: argparse.Namespace) -> int:
    return demo(settings, days=args.days, scale=args.scale, seed=args.seed)


def main(argv: list[str] | None = None) -> None:
    """Stand-alone entry until services/cli.py wires `yizhan demo`:
    ``python -m services.demo.cli --days 1``."""
    from shared.logging import configure_logging
    from shared.settings import get_settings

    parser = argparse.ArgumentParser(prog="yizhan demo", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    raise SystemExit(demo_command(settings, args))


if __name__ == "__main__":
    main()
