"""``python -m bench``: the benchmark harness (``scripts/bench`` starts Kafka and calls this).

scripts/bench --quick                   # < 3 minutes: bench/results/latest.json
scripts/bench                           # full: also a dated JSON, the chart and flame graphs
scripts/bench --only receiver --workers 1 --duration 5
"""

from __future__ import annotations

import argparse
import os
import sys

from bench import harness, report

QUICK_DURATION_S = 6.0
FULL_DURATION_S = 15.0


def parse_arguments(argv: list[str]) -> tuple[harness.Options, bool]:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short phases, one fixed rate, no profile (< 3 min)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of each server (default 2)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per load phase (quick 6, full 15)")
    parser.add_argument("--only", choices=report.TARGETS, default=None, help="run one target only")
    parser.add_argument("--rates", default=None, help="fixed rates, requests/s, comma-separated")
    parser.add_argument("--linger-ms", type=int, default=None, help="RECEIVER_KAFKA_LINGER_MS for the receiver")
    parser.add_argument(
        "--receiver-env",
        action="append",
        default=[],
        metavar="RECEIVER_NAME=VALUE",
        help="extra receiver setting for an experiment (repeatable), e.g. RECEIVER_RECORDING_ENABLED=false",
    )
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None, help="py-spy flame graphs")
    parser.add_argument("--keep", action="store_true", help="keep the run's topics and bench/results/tmp/<run>")
    parser.add_argument("--no-write", action="store_true", help="print the table only, write no result file")
    arguments = parser.parse_args(argv)
    if arguments.rates:
        rates = tuple(int(rate) for rate in arguments.rates.split(","))
    else:
        rates = (harness.HEADLINE_RATE,) if arguments.quick else harness.FULL_RATES
    options = harness.Options(
        quick=arguments.quick,
        workers=arguments.workers,
        duration_s=arguments.duration or (QUICK_DURATION_S if arguments.quick else FULL_DURATION_S),
        targets=(arguments.only,) if arguments.only else report.QUICK_TARGETS if arguments.quick else report.TARGETS,
        rates=rates,
        kafka_bootstrap=os.environ.get("RECEIVER_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        linger_ms=arguments.linger_ms,
        receiver_env=tuple(_setting(text) for text in arguments.receiver_env),
        profile=arguments.profile if arguments.profile is not None else not arguments.quick,
        keep=arguments.keep,
    )
    return options, arguments.no_write


def _setting(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name.startswith("RECEIVER_"):
        raise SystemExit(f"scripts/bench: --receiver-env wants RECEIVER_NAME=VALUE, got {text!r}")
    return name, value


def main(argv: list[str]) -> int:
    options, no_write = parse_arguments(argv)
    document = harness.run(options)
    print()
    print(report.table(document))
    if no_write:
        return 0
    report.write_json(document, harness.RESULTS / "latest.json")
    written = ["bench/results/latest.json"]
    if not options.quick:
        dated = f"{document['run_id']}.json"
        report.write_json(document, harness.RESULTS / dated)
        written.append(f"bench/results/{dated}")
        if report.latency_chart(document, harness.RESULTS / "latency.png"):
            written.append("bench/results/latency.png")
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
