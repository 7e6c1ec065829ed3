"""`finegrain annotate serve|token|assign|import|export|agreement|users`."""

from __future__ import annotations

import argparse

DEFAULT_DB = "sqlite:///annotations.db"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="annotate_command", metavar="SUBCOMMAND")

    p = sub.add_parser("serve", help="run the annotation web app")
    _db(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--trusted-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="an origin POSTs may also come from, e.g. https://annotate.example.org when a proxy serves the app "
        "under another host name (repeatable)",
    )
    p.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (the app is reached over HTTPS)")
    p.set_defaults(func=_serve)

    token = sub.add_parser("token", help="create or revoke an annotator's token").add_subparsers(
        dest="token_command", metavar="ACTION"
    )
    p = token.add_parser("create", help="create a user and print their token (shown once, stored hashed)")
    p.add_argument("name")
    p.add_argument("--role", choices=["annotator", "reviewer", "admin"], default="annotator")
    _db(p)
    p.set_defaults(func=_token_create)
    p = token.add_parser("revoke", help="revoke a user's token and end their sessions (their work stays)")
    p.add_argument("name")
    _db(p)
    p.set_defaults(func=_token_revoke)

    p = sub.add_parser("users", help="list users, their roles and progress")
    _db(p)
    p.set_defaults(func=_users)

    p = sub.add_parser("import", help="import a feedback file as tasks (finegrain JSONL or QA-Feedback JSON)")
    p.add_argument("file")
    _db(p)
    p.add_argument(
        "--annotate",
        choices=["first", "all", "none"],
        default="first",
        help="which responses get a span-annotation task (default: the first, as in QA-Feedback)",
    )
    p.add_argument("--no-compare", action="store_true", help="do not make a pairwise-comparison task per example")
    p.add_argument("--no-assign", action="store_true", help="do not assign the new tasks to every annotator")
    p.add_argument(
        "--no-feedback",
        action="store_true",
        help="do not keep the file's own annotations and preferences (by default they are stored as the submissions "
        "of a read-only source account per annotator name, e.g. 'source', and count in export and agreement)",
    )
    p.set_defaults(func=_import)

    p = sub.add_parser("assign", help="assign tasks to annotators (default: every task to every annotator)")
    _db(p)
    p.add_argument("--annotators", help="comma-separated names (default: every active annotator)")
    p.add_argument("--per-task", type=int, help="give each example's tasks to this many annotators, least loaded first")
    p.set_defaults(func=_assign)

    p = sub.add_parser("export", help="export annotations as finegrain JSONL")
    _db(p)
    p.add_argument("--out", required=True, help="output .jsonl (a new file; see --force)")
    p.add_argument("--force", action="store_true", help="replace an existing regular file (never a link, device or folder)")
    p.add_argument("--all-versions", action="store_true", help="every submitted version, not only the latest")
    p.add_argument(
        "--adjudicated",
        choices=["with", "only", "without"],
        default="with",
        help="reviewers' adjudicated versions (records '<id>#adjudicated', meta.adjudicated true): with the "
        "annotators' records (default), only them, or without them",
    )
    p.set_defaults(func=_export)

    p = sub.add_parser("backup", help="copy a SQLite database safely while the server runs (WAL included)")
    _db(p)
    p.add_argument("--out", required=True, help="the copy, a new SQLite file")
    p.set_defaults(func=_backup)

    p = sub.add_parser("suggest", help="order the queues by the trained reward models' uncertainty (uncertainty sampling)")
    _db(p)
    p.add_argument("--rm", nargs="+", required=True, metavar="DIR", help="trained RM folders (span and/or pairwise; several seeds of one category add their disagreement)")
    p.add_argument("--apply", action="store_true", help="store the priorities: every queue lists the most uncertain examples first")
    p.add_argument("--top", type=int, default=20, help="how many examples to print (default 20)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the best available)")
    p.add_argument("--json", action="store_true", help="print every example's priority as JSON")
    p.set_defaults(func=_suggest)

    p = sub.add_parser("unsuggest", help="forget the priorities of `suggest --apply`: queues go back to import order")
    _db(p)
    p.set_defaults(func=_unsuggest)

    p = sub.add_parser("agreement", help="inter-annotator agreement per category (kappa, span F1, pairwise kappa)")
    _db(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--by", choices=["item", "annotator"], help="one row per item (task) or per annotator instead of per category")
    p.set_defaults(func=_agreement)


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help=f"SQLAlchemy database URL (default: {DEFAULT_DB}, in the current folder)")
    p.add_argument("--create", action="store_true", help="create the database if it does not exist (otherwise a missing one is an error)")


def _engine(args: argparse.Namespace):
    """The database of --db, refused when it does not exist unless --create; says which it used."""
    import sys

    from finegrain.annotate.db import describe, make_engine
    from finegrain.config import ConfigError

    try:
        engine = make_engine(args.db, create=args.create)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    print(f"finegrain annotate: database {describe(args.db)}", file=sys.stderr)
    return engine


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from finegrain.annotate.server import ServerConfig, create_app

    from finegrain.annotate.db import describe

    config = ServerConfig(db_url=args.db, trusted_origins=tuple(args.trusted_origin), secure_cookies=args.secure_cookies)
    app = create_app(config, _engine(args))
    print(f"finegrain annotate: serving {describe(args.db)} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def _token_create(args: argparse.Namespace) -> int:
    from finegrain.annotate.auth import create_token

    token = create_token(_engine(args), args.name, args.role)
    print(token)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from finegrain.annotate.auth import revoke_token

    revoke_token(_engine(args), args.name)
    print(f"revoked {args.name}")
    return 0


def _users(args: argparse.Namespace) -> int:
    from finegrain.annotate.store import progress

    found = progress(_engine(args))
    for u in found["annotators"]:
        state = " (revoked)" if u["revoked"] else ""
        print(f"{u['name']}\t{u['role']}{state}\t{u['done']}/{u['total']} tasks done")
    for u in found["staff"]:
        state = " (revoked)" if u["revoked"] else ""
        print(f"{u['name']}\t{u['role']}{state}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from finegrain.annotate.importer import import_file

    report = import_file(
        _engine(args), args.file, annotate=args.annotate, compare=not args.no_compare, assign_all=not args.no_assign,
        keep_feedback=not args.no_feedback,
    )
    for line in report.lines():
        print(line)
    return 0


def _assign(args: argparse.Namespace) -> int:
    from finegrain.annotate.store import assign

    names = [n.strip() for n in args.annotators.split(",") if n.strip()] if args.annotators else None
    print(f"{assign(_engine(args), names, args.per_task)} new assignments")
    return 0


def _export(args: argparse.Namespace) -> int:
    from finegrain.annotate.export import export

    import sys

    result = export(_engine(args), args.out, all_versions=args.all_versions, force=args.force, adjudicated=args.adjudicated)
    print(f"wrote {result.records} records to {args.out}")
    for line in result.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    return 0


def _agreement(args: argparse.Namespace) -> int:
    import json

    from finegrain.annotate.agreement import agreement, agreement_by, format_by, format_report

    if args.by:
        rows = agreement_by(_engine(args), args.by)
        print(json.dumps(rows, indent=2) if args.json else format_by(rows, args.by))
        return 0
    report = agreement(_engine(args))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _suggest(args: argparse.Namespace) -> int:
    import json
    import sys
    from dataclasses import asdict

    from finegrain.annotate.suggest import apply_priorities, suggest

    engine = _engine(args)
    found = suggest(engine, args.rm, device=args.device, log=lambda s: print(s, file=sys.stderr))
    if args.json:
        print(json.dumps([asdict(s) for s in found], indent=2))
    else:
        for s in found[: args.top]:
            print(f"{s.priority:.3f}\t{s.example_id}\t{s.where}")
    if args.apply:
        print(f"set the priority of {apply_priorities(engine, found)} tasks of {len(found)} examples; queues list the most uncertain first",
              file=sys.stderr)
    return 0


def _unsuggest(args: argparse.Namespace) -> int:
    from finegrain.annotate.suggest import clear_priorities

    print(f"cleared the priority of {clear_priorities(_engine(args))} tasks")
    return 0


def _backup(args: argparse.Namespace) -> int:
    from finegrain.annotate.db import backup_sqlite

    backup_sqlite(args.db, args.out)
    print(f"backed up {args.db} to {args.out}")
    return 0
