"""The ``bnclaims`` command line: run, build, check, list, new, schema.

Exit codes: 0 every claim ran and every declared ``expected`` verdict held; 1 a claim
errored or its verdict differs from ``expected``; 2 usage error or an invalid claim file
(the valid claims still run and are reported); 5 the selection (``-k``, ``--tag``) matched no
claim (2 wins over 5); 130/143 after SIGINT/SIGTERM (finished seeds are cached).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import stat
import sys
from pathlib import Path

import bnclaims
from bnclaims import app
from bnclaims.errors import BnclaimsError, Problem, UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_SELECTION = 0, 1, 2, 5
EXIT_SIGINT, EXIT_SIGTERM = 130, 143

MAX_KEYWORD_DEPTH = 100  # nesting of -k parentheses and 'not'
MAX_KEYWORD_LENGTH = 10_000

VERDICT_MARK = {"supported": "✓", "refuted": "✗", "mixed": "±", "inconclusive": "?", "error": "!"}


# --------------------------------------------------------------------------- arguments

def _selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="*", metavar="ID_OR_PATH",
                        help="claim ids or claim files/directories (default: every claim under --claims)")
    parser.add_argument("-k", dest="keyword", metavar="EXPR",
                        help="select claims whose id matches EXPR: substrings with and/or/not, e.g. 'gamma and not lr'")
    parser.add_argument("--tag", action="append", default=[], metavar="TAG",
                        help="select claims with this tag (repeat for any of several)")


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                        help="worker processes (default: [tool.bnclaims] jobs, else all cores; at most 4 x the "
                             "cores, or 256 with --executor dask)")
    parser.add_argument("--seeds", type=app.seed_count, metavar="N",
                        help=f"override every claim's number of seeds (1..{app.MAX_SEEDS})")
    parser.add_argument("--seed-base", type=app.seed_base, default=0, metavar="N",
                        help="first seed; seeds are N..N+count-1 (default 0). Compare --seed-base 0 with "
                             "--seed-base 10000 to check a verdict is stable on disjoint seeds")
    parser.add_argument("--no-cache", action="store_true", help="run every seed again, ignoring cached results")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR",
                        help="where results are cached (default: [tool.bnclaims] cache-dir, else "
                             "$XDG_CACHE_HOME/bnclaims or ./.bnclaims-cache)")
    parser.add_argument("--timeout", type=app.seconds, metavar="SECONDS",
                        help="time limit per seed, overriding each claim's 'timeout'")
    parser.add_argument("--memory-limit", type=app.memory_limit_mib, default=app.MEMORY_LIMIT_MIB, metavar="MIB",
                        help=f"address-space limit per worker process in MiB (default {app.MEMORY_LIMIT_MIB}); "
                             "an experiment that exceeds it is reported as an error")
    parser.add_argument("--executor", choices=("local", "dask"),
                        help="where seeds run: worker processes on this machine (local, the default) or a Dask "
                             "cluster (dask: needs bnclaims[dask]; a LocalCluster of --jobs workers unless "
                             "--scheduler)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786 (implies --executor dask)")
    parser.add_argument("--json", metavar="FILE",
                        help="also write results as JSON to FILE ('-': standard output, and the table goes to "
                             "standard error)")
    parser.add_argument("--explain", action="store_true", help="say why each claim is (or is not) re-run")
    parser.add_argument("--ladder", action="store_true",
                        help="also run each claim's ladder (the same rule at other scales: its 'ladder:' rungs); "
                             "a rung that errors makes the exit code 1. Without it, run skips the rungs and "
                             "build shows those already run")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--claims", type=Path, default=None, metavar="DIR",
                        help="directory of claim files (default: [tool.bnclaims] claims in the nearest "
                             "pyproject.toml, else claims/)")
    parser.add_argument("--experiments-module", action="append", default=[], metavar="MODULE",
                        help="also import experiments from this importable module (repeatable; else "
                             "$BNCLAIMS_EXPERIMENTS, comma-separated, else [tool.bnclaims] experiments)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only problems and the summary line")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for internal errors")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 2 with one line, as argparse does, but no usage dump noise
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bnclaims",
        description="Check claims about batch normalization against NumPy experiments.",
        epilog="Examples:\n  bnclaims check\n  bnclaims run --tag exact\n  bnclaims build --out site\n"
               "  bnclaims run bn-speeds-up-training --seed-base 10000\n\n"
               "Exit codes: 0 all claims ran and matched 'expected'; 1 an error or a verdict differs "
               "from 'expected'; 2 usage error or invalid claim file; 5 -k/--tag matched no claim; "
               "130/143 interrupted (SIGINT/SIGTERM).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bnclaims {bnclaims.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="run claims and print a verdict table")
    _selection(p), _run_options(p), _common(p)

    p = sub.add_parser("build", help="run what is stale, then render the static site")
    _selection(p), _run_options(p), _common(p)
    p.add_argument("--out", type=Path, default=Path("site"), metavar="DIR", help="site directory (default: site/)")

    p = sub.add_parser("check", help="validate claim files; runs no experiment")
    p.add_argument("targets", nargs="*", metavar="PATH", help="claim files or directories (default: --claims)")
    p.add_argument("--json", metavar="FILE",
                   help="also write the valid and invalid files as JSON to FILE ('-': standard output)")
    _common(p)

    p = sub.add_parser("coverage", help="per thread: sentences, testable, tested, percent (from the sentence maps)",
                       description="How much of what each thread asserts is tested, from the sentence maps "
                                   "claims/threads/<thread>.map.yaml: percent = tested / (tested + testable but "
                                   "untested); not-testable sentences are left out. Lists every untested testable "
                                   "sentence as thread:line: text.")
    p.add_argument("--fail-under", type=float, metavar="PCT",
                   help="exit 1 if the overall coverage is below PCT percent")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE ('-': standard output)")
    p.add_argument("--skeleton", metavar="THREAD",
                   help="print a sentence map to start from for THREAD (every sentence, claims filled in)")
    _common(p)

    p = sub.add_parser("list", help="ids, titles, tags, thread and last verdict of every claim")
    _selection(p), _common(p)
    p.add_argument("--cache-dir", type=Path, metavar="DIR", help="cache to read last verdicts from")
    p.add_argument("--experiments", action="store_true",
                   help="list the registered experiments with one-line descriptions; with NAME, one "
                        "experiment's parameters, metrics and series")

    p = sub.add_parser("new", help="scaffold a new claim file that passes 'check'")
    p.add_argument("id", help="the new claim's id (lowercase words joined by '-')")
    p.add_argument("--experiment", help="experiment to start from (default: a simple exact one)")
    p.add_argument("--thread", help="thread file under claims/threads/ (default: the first one)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    _common(p)

    p = sub.add_parser("schema", help="print the JSON Schema of claim files")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


# --------------------------------------------------------------------------- selection

_KEYWORD_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


def keyword_matcher(expr: str):
    """Compile a ``-k`` expression (words, and/or/not, parentheses) into a predicate on ids.

    Parsed into a tree of ("or"|"and", [children]), ("not", child) and ("word", text), evaluated without
    recursion on long and/or chains; nesting (parentheses, 'not') deeper than 100 is refused."""
    if len(expr) > MAX_KEYWORD_LENGTH:
        raise UserError(f"-k: expression longer than {MAX_KEYWORD_LENGTH} characters (found {len(expr)})")
    tokens = [t for t in _KEYWORD_TOKEN.findall(expr)]
    position = 0

    def peek():
        return tokens[position] if position < len(tokens) else None

    def take():
        nonlocal position
        position += 1
        return tokens[position - 1]

    def deeper(depth: int) -> int:
        if depth >= MAX_KEYWORD_DEPTH:
            raise UserError(f"-k: nested deeper than {MAX_KEYWORD_DEPTH} levels of parentheses or 'not'")
        return depth + 1

    def parse_or(depth: int):
        items = [parse_and(depth)]
        while peek() == "or":
            take()
            items.append(parse_and(depth))
        return items[0] if len(items) == 1 else ("or", items)

    def parse_and(depth: int):
        items = [parse_not(depth)]
        while peek() == "and":
            take()
            items.append(parse_not(depth))
        return items[0] if len(items) == 1 else ("and", items)

    def parse_not(depth: int):
        if peek() == "not":
            take()
            return ("not", parse_not(deeper(depth)))
        if peek() == "(":
            take()
            inner = parse_or(deeper(depth))
            if take() != ")" if peek() else True:
                raise UserError(f"-k: missing ')' in {expr!r}")
            return inner
        word = peek()
        if word is None or word in ("and", "or", ")"):
            raise UserError(f"-k: expected a word (found {word or 'end of expression'!r}) in {expr!r}")
        take()
        return ("word", word.lower())

    tree = parse_or(0)
    if position != len(tokens):
        raise UserError(f"-k: unexpected {tokens[position]!r} in {expr!r}")

    def evaluate(node, text: str) -> bool:  # depth <= 100 by construction
        kind, value = node
        if kind == "word":
            return value in text
        if kind == "not":
            return not evaluate(value, text)
        if kind == "and":
            return all(evaluate(child, text) for child in value)
        return any(evaluate(child, text) for child in value)

    return lambda s: evaluate(tree, s.lower())


def _apply_project(args) -> None:
    """Resolve the settings (``app.settings``: command line > environment > [tool.bnclaims] > the pytest ini
    key, as the plugin does) and fill in what the command line left unset."""
    args.settings = app.settings(app.load_project(), claims=getattr(args, "claims", None),
                                 cache_dir=getattr(args, "cache_dir", None), jobs=getattr(args, "jobs", None),
                                 experiments=getattr(args, "experiments_module", ()))
    args.claims, args.cache_dir = args.settings.claims, args.settings.cache_dir
    args.jobs, args.jobs_source = args.settings.jobs, args.settings.jobs_source


def _import_experiments(args) -> tuple[str, ...]:
    """Load the built-in experiments and the extra modules the settings name; return those modules."""
    modules = args.settings.modules
    app.import_experiments(modules)
    return modules


def _load(args, targets: list[str]):
    from bnclaims.claims import display_path, did_you_mean, load_claims

    _import_experiments(args)
    paths, ids = [], []
    for target in targets:
        path = Path(target)
        if path.exists():
            paths.append(path)
        elif target.endswith((".yaml", ".yml")) or os.sep in target:
            raise UserError(f"{target}: no such file or directory")
        else:
            ids.append(target)
    claims, problems = load_claims(paths) if paths else ([], [])
    if ids or not paths:
        if not args.claims.is_dir():
            raise UserError(f"{args.claims}: claims directory not found (use --claims DIR)")
        dir_claims, dir_problems = load_claims([args.claims])
        if ids:
            known = {c.id for c in dir_claims} | {Path(p.path).stem for p in dir_problems}
            for i in ids:
                if i not in known:
                    raise UserError(f"no claim with id {i!r} in {display_path(args.claims)}"
                                    f"{did_you_mean(i, known).replace(';', ' —')}")
            dir_claims = [c for c in dir_claims if c.id in ids]
            dir_problems = [p for p in dir_problems if Path(p.path).stem in ids]
        seen = {c.path.resolve() for c in claims}
        claims += [c for c in dir_claims if c.path.resolve() not in seen]
        problems += [p for p in dir_problems if p not in problems]
        if not ids:  # the whole directory: its sentence maps are checked against all of its claims
            from bnclaims.coverage import load_maps

            problems += load_maps(args.claims, dir_claims)[1]
            from bnclaims.answers import load_answers

            _, answer_problems, answer_warnings = load_answers(args.claims, dir_claims)
            problems += answer_problems
            args.warnings = answer_warnings  # printed by check (exit 0)
    if getattr(args, "keyword", None):
        match = keyword_matcher(args.keyword)
        claims = [c for c in claims if match(c.id)]
    if getattr(args, "tag", None):
        wanted = set(args.tag)
        claims = [c for c in claims if wanted & set(c.tags)]
    return claims, problems


def _print_problems(problems: list[Problem]) -> None:
    for problem in problems:
        print(problem, file=sys.stderr)


# --------------------------------------------------------------------------- commands

def _options(args):
    return app.run_options(args.settings, seeds=args.seeds, seed_base=args.seed_base, use_cache=not args.no_cache,
                           timeout=args.timeout, memory_limit_mib=args.memory_limit, debug=args.debug,
                           # build: seeds the site in --out was built from are reused (a fresh clone runs none)
                           seed_store=args.out / "results" if getattr(args, "out", None) else None)


def _check_jobs(args) -> None:
    """--jobs must be 1.. 4 x the cores (a local pool) or 1..256 (Dask); the default is every core."""
    dask = (args.executor or ("dask" if args.scheduler else "local")) == "dask"
    app.check_jobs(args.jobs, args.jobs_source, dask=dask)


def _executor(args, options):
    """The Dask executor when asked for; None for the local pool (the runner makes it)."""
    if args.scheduler and args.executor == "local":
        raise UserError(f"--scheduler {args.scheduler} needs --executor dask (found --executor local)")
    if (args.executor or ("dask" if args.scheduler else "local")) == "local":
        return None
    from bnclaims.dask_executor import DaskExecutor

    return DaskExecutor(args.scheduler, options.n_jobs(), options.modules, options.memory_limit)


def _table(results, quiet: bool, out, rungs: bool = False) -> None:
    if quiet or not results:
        return
    width = max(len(r.id) for r in results)
    print(f"  {'claim':<{width}}  {'verdict':<12}  {'expected':<12}  seeds  time", file=out)
    for r in results:
        expected = r.claim.expected or "-"
        flag = " " if r.matches_expected else "≠"
        when = "cached" if r.cached else f"{r.seconds:.1f}s"
        print(f"{VERDICT_MARK[r.status]} {r.id:<{width}}  {r.status:<12}  {expected:<12}{flag} {len(r.seeds):>5}  {when}",
              file=out)
        for rung, result in r.ladder if rungs else ():  # the same rule at other scales, under its claim
            status = result.status if result is not None else "not run"
            when = "-" if result is None else "cached" if result.cached else f"{result.seconds:.1f}s"
            seeds = len(result.seeds) if result is not None else 0
            print(f"    @{rung.name:<{width - 2}}  {status:<12}  {'':<12}  {seeds:>5}  {when}", file=out)


def _failures(results, quiet: bool, out, site: Path) -> None:
    """The report of each claim that errored or missed its ``expected``: the plugin's failure text."""
    if quiet:
        return
    for r in results:
        if not r.matches_expected:
            print("\n" + app.failure_report(r, app.site_page(site, r.id)), file=out)


def _summary(results, problems) -> str:
    from collections import Counter

    counts = Counter(r.status for r in results)
    parts = [f"{counts[v]} {v}" for v in ("supported", "refuted", "mixed", "inconclusive", "error") if counts[v]]
    mismatched = sum(1 for r in results if r.status != "error" and not r.matches_expected)
    line = f"{len(results)} claims: " + (", ".join(parts) or "none run")
    if mismatched:
        line += f"; {mismatched} differ from expected"
    if problems:
        line += f"; {len(problems)} problem(s) in claim files"
    drafts = sum(1 for r in results if "draft" in r.claim.tags)
    if drafts:
        line += f"; {drafts} draft{'s' if drafts != 1 else ''} (not published: remove the draft tag to publish)"
    return line


# --------------------------------------------------------------------------- --json and --out

def _json_mode(target: str | None) -> str | None:
    """How --json will be written, decided before anything runs: 'stdout' for '-', 'replace' (a new or
    regular file: a temporary renamed over it), 'through' (a symlink to a file, a FIFO, a character
    device: opened and written, never replaced); anything else is a usage error."""
    if target is None:
        return None
    if target == "-":
        return "stdout"
    path = Path(target)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "replace"
    except OSError as e:
        raise UserError(f"--json {target}: {e.strerror}") from None
    if stat.S_ISREG(info.st_mode):
        return "replace"
    if stat.S_ISLNK(info.st_mode):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return "through"  # a dangling link: the file it names is created
        except OSError as e:
            raise UserError(f"--json {target}: {e.strerror}") from None
        if stat.S_ISREG(info.st_mode) or stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode):
            return "stdout" if _is_stdout(info) else "through"
    elif stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode):
        return "stdout" if _is_stdout(info) else "through"
    kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a block device" if stat.S_ISBLK(info.st_mode)
            else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a file")
    raise UserError(f"--json {target}: is {kind}; give a file name (or '-' for standard output)")


def _is_stdout(info: os.stat_result) -> bool:
    """Whether a --json target is this process's standard output (``--json /dev/stdout``): then it is
    written as ``-`` is, after the table has gone to stderr, not truncated under the table."""
    try:
        out = os.fstat(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (out.st_dev, out.st_ino) == (info.st_dev, info.st_ino)


def _write_json(target: str, mode: str, data: dict) -> None:
    """Strict JSON (a non-finite number is null) to --json, as ``_json_mode`` decided."""
    from bnclaims.cache import atomic_write, dumps

    text = dumps(data, indent=2) + "\n"
    if mode == "stdout":
        sys.stdout.write(text)
        sys.stdout.flush()
    elif mode == "through":
        with open(target, "w", encoding="utf-8") as f:  # truncate and write: the link, FIFO or device stays
            f.write(text)
    else:
        atomic_write(Path(target), text.encode())


def _inside(path: Path, directory: Path) -> bool:
    path, directory = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    return path == directory or path.is_relative_to(directory)


def _check_paths(args, build: bool) -> None:
    """Everything about --out, --json and the cache that can be wrong, before any seed runs."""
    if not build:
        return
    from bnclaims.cache import default_cache_dir
    from bnclaims.render import check_out

    check_out(args.out)  # also completes or rolls back a swap a killed build left
    if args.json not in (None, "-") and _inside(Path(args.json), args.out):
        raise UserError(f"--json {args.json} is inside --out {args.out}, which a build replaces as a whole; "
                        "write it elsewhere")
    cache = args.cache_dir or default_cache_dir()
    if not args.no_cache and _inside(cache, args.out):
        raise UserError(f"the cache {cache} is inside --out {args.out}, which a build replaces as a whole; "
                        "use --cache-dir elsewhere")


# --------------------------------------------------------------------------- commands

def _exit_code(results, problems) -> int:
    if problems:
        return EXIT_USAGE
    return EXIT_OK if all(r.matches_expected for r in results) else EXIT_FAILED


def _no_selection(args, claims, problems) -> int | None:
    """Exit 5 (with a message) when -k / --tag matched nothing, as pytest does; an invalid file keeps 2."""
    if claims or not (getattr(args, "keyword", None) or getattr(args, "tag", None)):
        return None
    asked = " and ".join(x for x in (f"-k {args.keyword!r}" if args.keyword else "",
                                     " ".join(f"--tag {t}" for t in args.tag)) if x)
    print(f"bnclaims: no claim matches {asked}", file=sys.stderr)
    return EXIT_USAGE if problems else EXIT_NO_SELECTION


def cmd_run(args, build: bool = False) -> int:
    from bnclaims.cache import Cache, default_cache_dir
    from bnclaims.runner import plan, run_claims

    _check_jobs(args)
    json_mode = _json_mode(args.json)
    human = sys.stderr if json_mode == "stdout" else sys.stdout  # '--json -': stdout is the JSON alone
    _check_paths(args, build)
    claims, problems = _load(args, args.targets)
    _print_problems(problems)
    empty = _no_selection(args, claims, problems)
    if empty is not None:
        return empty
    options = _options(args)
    cache = Cache(options.cache_dir or default_cache_dir())
    executor = _executor(args, options)
    if args.explain:
        for p in plan(claims, options, cache):
            print(f"{p.claim.id}: " + "; ".join(p.reasons), file=human)
    ladder = "run" if args.ladder else "stored" if build else "off"
    results = run_claims(claims, options, executor=executor, progress=not args.quiet, cache=cache, ladder=ladder)
    code = _exit_code(results, problems)
    if args.ladder and any(rung is not None and rung.status == "error" for r in results for _, rung in r.ladder):
        code = max(code, EXIT_FAILED)
    _table(results, args.quiet, human, rungs=ladder != "off")
    failed = []  # the results are never lost: a failure to write one output does not stop the others
    if json_mode:
        data = {"bnclaims": bnclaims.__version__, "claims": [r.to_json() for r in results],
                "invalid": [p.to_json() for p in problems]}
        try:
            _write_json(args.json, json_mode, data)
        except OSError as e:
            failed.append(f"cannot write --json {args.json} ({e.strerror or e})")
    if build:
        from bnclaims.render import build_site

        try:
            written = build_site(results, args.out, claims_dir=args.claims)
            if not args.quiet:
                print(f"site written to {args.out}/ ({written} pages); open {args.out / 'index.html'}", file=human)
            from bnclaims.answers import broken, load_answers

            # an answer citing a claim that errored or did not run: the page marks it, the build fails
            failed += broken(load_answers(args.claims, [r.claim for r in results])[0], {r.id: r for r in results})
        except OSError as e:
            failed.append(f"cannot write the site to {args.out} ({e.strerror or e})")
    _failures(results, args.quiet, human, args.out if build else Path("site"))  # after the build: its pages exist
    print(_summary(results, problems), file=human)
    for message in failed:
        print(f"bnclaims: error: {message}", file=sys.stderr)
    return max(code, EXIT_FAILED) if failed else code


def cmd_check(args) -> int:
    json_mode = _json_mode(args.json)
    human = sys.stderr if json_mode == "stdout" else sys.stdout
    claims, problems = _load(args, args.targets)
    _print_problems(problems)
    _print_problems(getattr(args, "warnings", []))  # answers written against other verdicts, typed figures
    if not args.quiet:
        for c in claims:
            print(f"ok  {c.path}", file=human)
    drafts = sum(1 for c in claims if "draft" in c.tags)
    note = f"; {drafts} draft{'s' if drafts != 1 else ''} (not published: remove the draft tag to publish)" if drafts else ""
    print(f"{len(claims)} valid, {len({p.path for p in problems})} invalid claim file(s){note}", file=human)
    threads = args.claims / "threads"
    companions = [f"{len(list(threads.glob(pattern)))} {what}" for pattern, what in
                  (("*.map.yaml", "sentence map(s)"), ("*.answer.yaml", "answer file(s)"))] if threads.is_dir() else []
    if companions and not args.targets:
        print(f"checked {' and '.join(companions)} in {threads}", file=human)
    if json_mode:
        data = {"claims": [{"id": c.id, "path": str(c.path), "line": c.line} for c in claims],
                "invalid": [p.to_json() for p in problems]}
        _write_json(args.json, json_mode, data)
    return EXIT_USAGE if problems else EXIT_OK


def cmd_coverage(args) -> int:
    from bnclaims.coverage import report

    json_mode = _json_mode(args.json)
    human = sys.stderr if json_mode == "stdout" else sys.stdout
    from bnclaims.claims import load_claims
    from bnclaims.coverage import load_maps

    _import_experiments(args)
    if not args.claims.is_dir():
        raise UserError(f"{args.claims}: claims directory not found (use --claims DIR)")
    claims, problems = load_claims([args.claims])
    if args.skeleton:
        from bnclaims.coverage import skeleton

        name = args.skeleton if args.skeleton.endswith(".txt") else args.skeleton + ".txt"
        path = args.claims / "threads" / name
        if "/" in name or not path.is_file():
            raise UserError(f"no thread {name} in {args.claims / 'threads'}")
        sys.stdout.write(skeleton(name, path.read_text(encoding="utf-8"), claims))
        return EXIT_OK
    maps, map_problems = load_maps(args.claims, claims)
    _print_problems(problems + map_problems)
    data = report(maps)
    width = max([len(t["thread"]) for t in data["threads"]] + [6])
    print(f"{'thread':<{width}}  sentences  testable  tested  coverage", file=human)
    for t in data["threads"]:
        percent = "—" if t["percent"] is None else f"{t['percent']:.0f}%"
        print(f"{t['thread']:<{width}}  {t['sentences']:>9}  {t['testable']:>8}  {t['tested']:>6}  {percent:>8}", file=human)
    total = "—" if data["percent"] is None else f"{data['percent']:.0f}%"
    print(f"{'total':<{width}}  {sum(t['sentences'] for t in data['threads']):>9}  {data['testable']:>8}  "
          f"{data['tested']:>6}  {total:>8}", file=human)
    untested = [(t["thread"], u) for t in data["threads"] for u in t["untested"]]
    if untested and not args.quiet:
        print("\nTestable, not tested yet:", file=human)
        for thread, u in untested:
            print(f"{thread}:{u['line']}: {u['text']}", file=human)
    if not data["threads"]:
        print(f"no sentence maps in {args.claims / 'threads'} (add <thread>.map.yaml beside a thread)", file=human)
    if json_mode:
        _write_json(args.json, json_mode, {**data, "invalid": [p.to_json() for p in problems + map_problems]})
    if problems or map_problems:
        return EXIT_USAGE
    if args.fail_under is not None and (data["percent"] or 0.0) < args.fail_under:
        print(f"coverage {total} is below --fail-under {args.fail_under:g}%", file=human)
        return EXIT_FAILED
    return EXIT_OK


def cmd_list(args) -> int:
    from bnclaims import experiments
    from bnclaims.cache import Cache, default_cache_dir

    if args.experiments:
        _import_experiments(args)  # works anywhere: no claims directory needed
        known = experiments.load_all()
        if args.targets:  # one experiment in full: its parameters, metrics and series
            from bnclaims.claims import did_you_mean

            for name in args.targets:
                exp = known.get(name)
                if exp is None:
                    raise UserError(f"unknown experiment (found {name!r}{did_you_mean(name, known)})")
                print(f"{name}  ({exp.module})")
                if exp.doc:
                    print("    " + " ".join(exp.doc.split("\n\n")[0].split()))
                for p in exp.params.values():
                    print(f"    param  {p.name}: {p.type_name} = {p.default!r}")
                for m, desc in exp.metrics.items():
                    print(f"    metric {m}: {desc}")
                for m, desc in exp.series.items():
                    print(f"    series {m}: {desc}")
            return EXIT_OK
        width = max((len(n) for n in known), default=10)
        for name, exp in sorted(known.items()):
            summary = " ".join((exp.doc or "").split("\n\n")[0].split())
            summary = summary if len(summary) <= 100 else summary[:99].rsplit(" ", 1)[0] + "…"
            print(f"{name:<{width}}  {summary}")
        print(f"\n{len(known)} experiments; details: bnclaims list --experiments NAME")
        return EXIT_OK
    claims, problems = _load(args, args.targets)
    _print_problems(problems)
    empty = _no_selection(args, claims, problems)
    if empty is not None:
        return empty
    cache = Cache(args.cache_dir or default_cache_dir())
    width = max((len(c.id) for c in claims), default=10)
    print(f"{'id':<{width}}  {'last verdict':<12}  {'thread':<24}  tags  — title")
    for c in claims:
        last = (cache.get_claim(c.id) or {}).get("verdict", "not run")
        print(f"{c.id:<{width}}  {last:<12}  {Path(c.thread).stem:<24}  {','.join(c.tags)}  — {c.title}")
    return EXIT_USAGE if problems else EXIT_OK


def cmd_new(args) -> int:
    from bnclaims.scaffold import scaffold

    _import_experiments(args)
    import shlex

    path = scaffold(args.id, args.claims, experiment=args.experiment, thread=args.thread, force=args.force)
    # the next command works as printed: modules named on this command line are named on it too
    extra = "".join(f" --experiments-module {shlex.quote(m)}" for m in args.experiments_module)
    print(f"created {path}; edit it, then run: bnclaims check {shlex.quote(str(path))}{extra}")
    return EXIT_OK


def cmd_schema(args) -> int:
    from bnclaims.claims import schema_json

    sys.stdout.write(schema_json())
    return EXIT_OK


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so it ends the run as Ctrl-C does (workers stopped,
    finished seeds kept)."""


def _on_sigterm(signum, frame):
    raise Terminated()


class _Stdout:
    """Standard output that a reader may close early (``bnclaims run | head -1``): the rest of the output
    is dropped, the run goes on (cache, --json, site) and the exit code is still the run's."""

    def __init__(self, stream):
        self.stream = stream
        self.closed_early = False

    def write(self, text: str) -> int:
        if not self.closed_early:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.closed_early:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.closed_early = True
        try:  # nothing more reaches the pipe, not even Python's flush at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    commands = {"run": cmd_run, "build": lambda a: cmd_run(a, build=True), "check": cmd_check,
                "list": cmd_list, "new": cmd_new, "schema": cmd_schema, "coverage": cmd_coverage}
    previous_term = None
    try:
        previous_term = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (called from a library): leave signals alone
        pass
    stdout = sys.stdout
    if stdout is not None and not isinstance(stdout, _Stdout):
        sys.stdout = _Stdout(stdout)
    try:
        if args.command != "schema":
            _apply_project(args)
        return commands[args.command](args)
    except UserError as e:
        if args.debug:
            raise
        print(f"bnclaims: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BnclaimsError as e:
        if args.debug:
            raise
        print(f"bnclaims: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print(f"bnclaims: {'terminated' if terminated else 'interrupted'}; finished seeds are cached",
              file=sys.stderr)
        return EXIT_SIGTERM if terminated else EXIT_SIGINT
    except BrokenPipeError:  # stderr closed too: nothing can be said, the code still says it failed
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - a bug in bnclaims: one line unless --debug
        if args.debug:
            raise
        print(f"bnclaims: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        if sys.stdout is not stdout:
            sys.stdout = stdout
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


if __name__ == "__main__":
    raise SystemExit(main())
