"""``labkit list | run | compare | tour | doctor | check`` (contracts in shared/DESIGN.md).

Bad input ends with one line on stderr and exit status 2, no traceback; an interrupted command
still kills its trial's process group on the way out (see :mod:`labkit.isolation.isolated`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from labkit.core.errors import BadInput

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as every other bad input
        raise BadInput(f"{message}; see '{self.prog} --help'")


def _knob_overrides(args: argparse.Namespace) -> dict[str, Any]:
    knobs: dict[str, Any] = {}
    for item in args.set or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise BadInput(f"--set takes KNOB=VALUE, got {item!r}")
        knobs[name] = value
    if getattr(args, "threads", None) is not None:
        knobs["threads"] = args.threads
    return knobs


TIMEOUT_HELP = "seconds from a trial's first line before it counts as hung (default: the scenario's)"
FRESH_HELP = "start each trial in a fresh interpreter instead of forking a warm one (also LABKIT_START=fresh)"


def _add_trial_options(p: argparse.ArgumentParser, repeats: int | None) -> None:
    p.add_argument("--repeats", type=int, default=repeats, help=f"isolated trials per variant (default {repeats})"
                   if repeats else "isolated trials per variant (default: until decisive or the budget is spent)")
    p.add_argument("--timeout", type=float, default=None, help=TIMEOUT_HELP)
    p.add_argument("--threads", type=int, default=None, help="the scenario's 'threads' knob")
    p.add_argument("--set", action="append", metavar="KNOB=VALUE", help="any other knob (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--fresh", action="store_true", help=FRESH_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="labkit", description="LLM inference failure modes under concurrency, next to their fixes.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    listing = sub.add_parser("list", help="every scenario with its variants and knobs")
    listing.add_argument("--markdown", action="store_true",
                         help="the README's scenario tables and the notebooks' cheat-sheet, from the scenarios' declarations")
    run = sub.add_parser("run", help="run isolated trials of one variant")
    run.add_argument("scenario")
    run.add_argument("--variant", required=True)
    _add_trial_options(run, repeats=1)
    cmp = sub.add_parser("compare", help="A/B two variants (A may equal B: the noise floor): how each side ended, "
                         "medians, ratio B/A, a 95%% interval that holds at that number of trials, verdict")
    cmp.add_argument("scenario")
    cmp.add_argument("a")
    cmp.add_argument("b")
    cmp.add_argument("--metric", default=None, help="metric for the verdict (default: the scenario's first)")
    _add_trial_options(cmp, repeats=None)
    cmp.add_argument("--budget", type=float, default=None,
                     help="without --repeats: seconds to spend before giving an answer (default 120), checked after "
                          "every pair: it starts no pair that would pass it at a typical pair's time so far")
    tour = sub.add_parser("tour", help="every scenario, broken against its main fix, with a report")
    tour.add_argument("--out", default="labkit-report", help="report folder (default labkit-report)")
    tour.add_argument("--repeats", type=int, default=5,
                      help="trials a side (default 5; 3 cannot reach a 95%% verdict, 4 is the fewest that can)")
    tour.add_argument("--quick", action="store_true", help="each scenario's fast settings (same failures, shorter runs)")
    tour.add_argument("--only", action="append", metavar="SCENARIO", help="run only this scenario (repeatable)")
    tour.add_argument("--timeout", type=float, default=None, help=TIMEOUT_HELP)
    tour.add_argument("--fresh", action="store_true", help=FRESH_HELP)
    doc = sub.add_parser("doctor", help="hazards, cores, thread pools, variables, devices, versions")
    doc.add_argument("--workers", type=int, default=1, help="worker processes you run, each with torch's pool (default 1)")
    doc.add_argument("--json", action="store_true", help="hazards, facts and versions as JSON")
    check = sub.add_parser("check", help="checks of your own setup: `check threads` (is a model safe to serve from threads?)")
    check.add_argument("what", choices=["threads"])
    check.add_argument("--model", default="tiny", help="tiny (the embedded model), a local folder, or a cached hub id")
    check.add_argument("--threads", type=int, default=8)
    check.add_argument("--requests", type=int, default=None, help="requests in all (default: one per thread)")
    check.add_argument("--tokens", type=int, default=16, help="new tokens per request (greedy)")
    check.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                       help="a prompt of your own (repeatable; used in turn; default: short and long ones from labkit's corpus)")
    check.add_argument("--qwen1-rotary", action="store_true", help="install Qwen-1's racy rotary first (to see a failure)")
    check.add_argument("--trust-remote-code", action="store_true", help="run the model's own code (only for a model you trust)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


class _ToStderr(logging.Handler):
    """Each line to the stderr of the moment (a test's capture, a notebook's), not the one at start-up."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def _say_what_trials_wait_for() -> None:
    """The command line shows what a trial waits for ("starting a warm process ..."), once per start."""
    warm_log = logging.getLogger("labkit.warm")
    if not any(isinstance(h, _ToStderr) for h in warm_log.handlers):
        warm_log.addHandler(_ToStderr())
        warm_log.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    _say_what_trials_wait_for()
    try:
        args = build_parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except BadInput as exc:
        print(f"labkit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("labkit: interrupted; the trial's processes were stopped", file=sys.stderr)
        return 130


def _start(args: argparse.Namespace) -> str | None:
    return "fresh" if args.fresh else None  # None: LABKIT_START, else warm


def _list(args: argparse.Namespace) -> int:
    from labkit.core.scenario import all_scenarios

    if args.markdown:
        from labkit.ui.tables import markdown

        print(markdown())
        return 0
    for s in all_scenarios():
        print(f"{s.name}: {s.summary}")
        print(f"  source: {s.source}")
        for v in s.variants.values():
            print(f"  --variant {v.name}{' (broken)' if v.broken else ''}: {v.summary}")
        knobs = ", ".join(f"{k.name}={k.default}" for k in s.knobs)
        print(f"  knobs: {knobs}")
        print(f"  metrics: {', '.join(m.name for m in s.metrics)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from labkit.core.runner import run

    result = run(args.scenario, args.variant, repeats=args.repeats, timeout=args.timeout,
                 knobs=_knob_overrides(args), progress=True, start=_start(args))
    if args.json:
        print(result.to_json())
        return 0
    for t in result.trials:
        metrics = "  ".join(f"{k}={v:.4g}" for k, v in t.metrics.items())
        print(f"trial {t.index}: {t.outcome:<7} {t.seconds:6.1f} s ({t.start} start {t.startup_seconds or 0:.2f} s)  {metrics}")
        if t.error:
            print(f"    {t.error}")
        for key, text in t.notes.items():
            if text != t.error:  # a hang's note is its error: said once
                print(f"    {key}: {text}")
        for pid, text in t.stacks.items():
            print(f"    stacks of process {pid}:")
            print("\n".join(f"      {line}" for line in text.splitlines()))
    print(f"{result.scenario} {result.variant}: {result.outcome_text()}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from labkit.core.compare import BUDGET, compare

    result = compare(args.scenario, args.a, args.b, repeats=args.repeats, metric=args.metric,
                     knobs=_knob_overrides(args), timeout=args.timeout, progress=True, start=_start(args),
                     budget=BUDGET if args.budget is None else args.budget)
    if args.json:
        print(result.to_json())
        return 0
    with _wide_pandas():
        print(result.table().drop(columns="verdict").to_string(float_format=lambda x: f"{x:.4g}"))
    print(result.verdict)  # how each side ended comes first
    print(f"method: {result.method}")
    print(result.stopped)
    return 0


def _wide_pandas():
    import pandas as pd

    return pd.option_context("display.width", 200, "display.max_columns", 20)


def _tour(args: argparse.Namespace) -> int:
    from labkit.ui.tour import tour

    report = tour(args.out, repeats=args.repeats, quick=args.quick, only=args.only, timeout=args.timeout, progress=True,
                  start=_start(args))
    with _wide_pandas():
        print(report.table.to_string(index=False))
    print(f"report written to {report.folder}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    import json

    from labkit.core._json import jsonable
    from labkit.ui.doctor import doctor

    report = doctor(workers=args.workers)
    print(json.dumps(jsonable(report.to_dict()), indent=2) if args.json else report)
    return 0


def _check(args: argparse.Namespace) -> int:
    """Exit 0 when no race was seen, 1 when one was (or the check could not finish)."""
    import json

    from labkit.core._json import jsonable
    from labkit.llm.thread_safety import check_thread_safety

    result = check_thread_safety(args.model, threads=args.threads, requests=args.requests, tokens=args.tokens,
                                 prompts=args.prompt, qwen1_rotary=args.qwen1_rotary,
                                 trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(jsonable(result.to_dict()), indent=2))
    else:
        if result.requests:
            print(result.to_frame().to_string(index=False))
        for pid, text in result.stacks.items():
            print(f"stacks of process {pid}:\n{text}")
        print(result.verdict)
    return 0 if result.outcome == "ok" and not result.failed else 1


_COMMANDS = {"list": _list, "run": _run, "compare": _compare, "tour": _tour, "doctor": _doctor, "check": _check}

if __name__ == "__main__":
    sys.exit(main())
