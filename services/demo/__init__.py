"""`yizhan demo`: realistic casework driven through the real HTTP and Kafka interfaces of a
running `yizhan up` (SYNTHETIC residents; the volume and service mix of docs/domain.md).

    report = await run_demo(settings, endpoints, days=1, scale=0.25, seed=2010, progress=bar)
    print_report(report)

``services.demo.cli.demo(settings, days=…, scale=…, seed=…)`` is the whole command: it finds a
running `yizhan up` on the configured ports or starts one as a subprocess for the run.
"""

from services.demo.report import DemoReport, format_report, print_report
from services.demo.runner import DEFAULT_SCALE, run_demo

__all__ = ["DEFAULT_SCALE", "DemoReport", "format_report", "print_report", "run_demo"]
