"""`plangate`: one console script, one subcommand per job. Each subcommand imports only the
layers it needs, so `plangate lint` never loads aiohttp, stripe or a database driver, and the plan tools
run on the core install (`pip install plangate`); the gate's commands need the `server` extra."""
from __future__ import annotations

import argparse
import os
import sys

from plangate import __version__

# Commands that run the gate or talk Stripe: they need `pip install 'plangate[server]'`.
SERVER_COMMANDS = ("serve", "migrate", "erase", "stripe-simulate")


def _parser() -> argparse.ArgumentParser:
    from plangate.policy.cli import DIFF_FORMATS, FORMATS, GRAPH_FORMATS

    parser = argparse.ArgumentParser(prog="plangate", description="A subscription gate driven by plans.yaml.")
    parser.add_argument("--version", action="version", version=f"plangate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("lint", help="check plan files; exit 0 clean, 1 on errors, 2 on usage or I/O problems")
    p.add_argument("files", nargs="*", default=["plans.yaml"], metavar="FILE")
    p.add_argument("--format", choices=FORMATS, default="text")
    p.add_argument("--strict", action="store_true", help="warnings fail too")

    p = sub.add_parser("graph", help="print the plan's state diagram (Mermaid or Graphviz DOT)")
    p.add_argument("file", nargs="?", default="plans.yaml", metavar="FILE")
    p.add_argument("--format", choices=GRAPH_FORMATS, default="mermaid")

    p = sub.add_parser("explain", help="print each status of the plan in plain words")
    p.add_argument("file", nargs="?", default="plans.yaml", metavar="FILE")

    p = sub.add_parser("diff", help="what changed between two plans, in plain words; exit 0 when nothing would be "
                                    "stranded, 1 when stored subjects would be, 2 when no diff was made (usage, a "
                                    "plan unreadable or with errors, the store)")
    p.add_argument("old", metavar="OLD", help="the plan deployed now")
    p.add_argument("new", metavar="NEW", help="the plan to deploy")
    p.add_argument("--format", choices=DIFF_FORMATS, default="text")
    p.add_argument("--database", metavar="URL",
                   help="also show the impact on the subjects stored there (a SQLite file or postgresql://...; "
                        "needs pip install 'plangate[server]')")

    p = sub.add_parser("test", help="run scenario files against the plan; exit 0 all passed, 1 any failed, "
                                    "2 on usage or file problems",
                       usage="plangate test [-h] [PLAN] [SCENARIO ...]",
                       description="PLAN defaults to plans.yaml, SCENARIO (files or directories) to the "
                                   "scenarios/ directory next to the plan.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="[PLAN] [SCENARIO ...]")

    for name, text in (("serve", "start the gate (settings from the environment and config.env)"),
                       ("migrate", "create the store, or bring its schema up to date")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--env-file", action="append", metavar="FILE",
                       help="settings file, which must exist (default: config.env, where it exists; \"\": none); "
                            "several: an earlier one wins over a later one, the environment over all")
        if name == "serve":
            p.add_argument("--create-store", action="store_true",
                           help="start on a new, empty SQLite store when there is none (default: refuse; "
                                "`plangate migrate` creates it)")

    p = sub.add_parser("erase", help="erase a subject's personal data (kept under a pseudonym: usage, audit); "
                                      "idempotent; needs PLANGATE_PSEUDONYM_SECRET")
    p.add_argument("subject", metavar="SUBJECT")
    p.add_argument("--actor", default="plangate-erase", help="who asks, for the audit (default %(default)s)")
    p.add_argument("--env-file", metavar="FILE", help="settings file, which must exist (default: config.env, where "
                                                      "it exists; \"\": none)")

    p = sub.add_parser("stripe-simulate", help="send the lifecycle corpus, signed, to a running gate and print its "
                                               "decisions; exit 0 all passed, 1 any failed, 2 on usage or no gate")
    p.add_argument("scenarios", nargs="*", metavar="LIFECYCLE", help="lifecycles to play (default: all; see --list)")
    p.add_argument("--corpus", default="scenarios/lifecycles", help="the lifecycle corpus (default %(default)s)")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the gate (default %(default)s)")
    p.add_argument("--secret", help="webhook signing secret (default: $STRIPE_WEBHOOK_SECRET, else var/webhook-secret)")
    p.add_argument("--token", help="API token (default: $PLANGATE_API_TOKEN, else var/api-token)")
    p.add_argument("--admin-token", help="admin token, for POST /v1/jobs/sweep (default: $PLANGATE_ADMIN_TOKEN, "
                                         "else var/admin-token)")
    p.add_argument("--subject", help="the subject (default: a fresh random one); with several lifecycles, a prefix")
    p.add_argument("--list", action="store_true", help="list the lifecycles and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        code = _run(_parser().parse_args(argv))
        sys.stdout.flush()      # here, not at exit, where a closed pipe could no longer be caught
        return code
    except BrokenPipeError:
        # The reader went away (`plangate graph ... | head`): nothing more to say to it, and no traceback.
        # stdout points at /dev/null so that Python's own flush at exit does not fail again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command in SERVER_COMMANDS:
        try:
            return _server_command(args)
        except ModuleNotFoundError as exc:
            print(f"plangate {args.command}: needs the gate's dependencies ({exc.name} is not installed): "
                  "pip install 'plangate[server]'", file=sys.stderr)
            return 2
    if args.command == "lint":
        from plangate.policy.cli import lint
        return lint(args.files, args.format, args.strict)
    if args.command == "graph":
        from plangate.policy.cli import graph
        return graph(args.file, args.format)
    if args.command == "explain":
        from plangate.policy.cli import explain
        return explain(args.file)
    if args.command == "diff":
        from plangate.policy.cli import diff
        return diff(args.old, args.new, args.format, impact=_impact_on(args.database) if args.database else None)
    if args.command == "test":
        from plangate.engine.cli import run_scenarios
        return run_scenarios(args.paths)
    raise AssertionError(args.command)


def _impact_on(database: str):
    """plangate diff --database: the impact on stored subjects, from the store (loaded only when asked for)."""
    def impact(result):
        from plangate.policy.cli import ImpactError
        try:
            from plangate.server.plan_impact import impact_on_store
        except ModuleNotFoundError as exc:
            raise ImpactError(f"--database needs the gate's dependencies ({exc.name} is not installed): "
                              "pip install 'plangate[server]'") from None
        return impact_on_store(result, database)
    return impact


def _unreadable_env_file(names: list[str]) -> str | None:
    """Why a settings file named with --env-file cannot be read, or None. Only the default, config.env, may be
    missing: a named one that is not there (a typo, a path from another machine) would start the gate on the
    environment alone, as if the file's settings did not matter. "" names no file."""
    for name in names:
        if name:
            try:
                with open(name, "rb"):
                    pass
            except OSError as exc:
                return f"--env-file {name}: {exc.strerror or exc}"
    return None


def _server_command(args: argparse.Namespace) -> int:
    named = getattr(args, "env_file", None)
    problem = _unreadable_env_file([named] if isinstance(named, str) else named or [])
    if problem:
        print(f"plangate {args.command}: {problem} (without --env-file, config.env is read where it exists)",
              file=sys.stderr)
        return 2
    if args.command == "serve":
        from plangate.server.serve import serve
        return serve(args.env_file or "config.env", args.create_store)
    if args.command == "migrate":
        from plangate.server.serve import migrate
        return migrate(args.env_file or "config.env")
    if args.command == "erase":
        from plangate.server.serve import erase
        return erase(args.env_file if args.env_file is not None else "config.env", args.subject, args.actor)
    from plangate.simulate import run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
