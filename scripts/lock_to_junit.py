"""JUnit XML from a published soundtrack.lock.json, for CI jobs whose build ran on a Prefect
deployment (infra/ci/github-actions.yml). Usage:

    python scripts/lock_to_junit.py LOCK JUNIT --not-before 2026-11-22T03:00:00Z \
        [--build-name ci-1234-1]

A build that stops before writing its index leaves the previous build's lock in place; a lock
written before --not-before (the CI job's start), or by a run of another name than the job gave
its own (`prefect deployment run --flow-run-name`; another build that ran meanwhile, a nightly),
is refused rather than reported as this build's.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from soundtrack.report import LockUnreadable, latest_verdicts, parse_lock, to_junit


def aware(text: str) -> datetime:
    """An ISO 8601 time with its UTC offset (`Z` or `+00:00`)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset; add Z or +00:00")
    return moment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", type=Path, help="soundtrack.lock.json fetched from the storage")
    parser.add_argument("junit", type=Path, help="JUnit XML file to write")
    parser.add_argument(
        "--not-before", type=aware, required=True, help="when the CI job started (ISO 8601)"
    )
    parser.add_argument(
        "--build-name", help="the flow run name the job gave its build: the lock must be its"
    )
    args = parser.parse_args()

    try:
        report = parse_lock(args.lock.read_bytes())
    except OSError as exc:  # no lock there: the build published none, or a wrong path
        sys.exit(f"cannot read {args.lock}: {exc.strerror or exc}")
    except LockUnreadable as exc:
        sys.exit(f"{args.lock} is not a readable soundtrack lock file: {exc}")
    if report is None:
        sys.exit(f"{args.lock} is not a soundtrack lock file")
    written = datetime.fromisoformat(report.created_at)
    if written < args.not_before:
        sys.exit(
            f"{args.lock} was written at {report.created_at}, before this job started "
            f"({args.not_before.isoformat()}): the build did not publish its index, so these "
            "verdicts are an earlier build's"
        )
    if args.build_name is not None and report.build_name != args.build_name:
        writer = (
            f"the run {report.build_name!r}"
            if report.build_name
            else "a run with no name (a CLI build, or one from before runs were named)"
        )
        sys.exit(
            f"{args.lock} was written by {writer}, not by this job's {args.build_name!r}: "
            "these verdicts are another build's (this one did not publish its index)"
        )
    # A rebuild rejected or failed leaves the earlier files served: its verdict is what counts.
    report = latest_verdicts(report)
    args.junit.write_text(to_junit(report))
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items() if n)
    print(f"{args.junit}: {report.soundtrack}: {counts}")


if __name__ == "__main__":
    main()
