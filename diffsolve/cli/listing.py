"""``diffsolve list``: the solvers, schedules, problems, models and grid kinds there are."""
from __future__ import annotations

import json
import re

from ._common import CLIError, choices_msg

KINDS = ("solvers", "schedules", "problems", "models", "grids")


def add_parser(subparsers):
    ls = subparsers.add_parser("list", help="list solvers, schedules, problems, models, grids")
    ls.add_argument("what", nargs="?", default="all",
                    help="solvers, schedules, problems, models, grids or all (default)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(run=run)
    return ls


def listing() -> dict:
    """Every kind of :data:`KINDS`, as a list of dicts."""
    from ..bench import list_problems
    from ..bench.problems import zoo_models
    from ..grids import GRID_SUMMARIES, GRIDS
    from ..schedules import SCHEDULES
    from ..solvers import list_solvers

    return {
        "solvers": list_solvers(),
        "schedules": [{"name": k, "summary": _first_sentence(v.__doc__)} for k, v in SCHEDULES.items()],
        "problems": list_problems(),
        "models": [{"name": k, "description": v} for k, v in zoo_models().items()],
        "grids": [{"name": g, "summary": GRID_SUMMARIES[g]} for g in GRIDS],
    }


def _first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    end = re.search(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\.\s", para)  # not "et al. 2021"
    return para if end is None else para[:end.start() + 1]


def _line(kind: str, it: dict) -> str:
    if kind == "solvers":
        cost = "adaptive steps" if it.get("adaptive") else f"{it['nfe_per_step']} NFE/step"
        extra = f"order {it['order']:g}, {'SDE' if it['stochastic'] else 'ODE'}, {cost}"
        line = f"  {it['name']:<14} {extra:<32} {it['summary']}"
        return line + (f"\n  {'':<14} options: {it['options']}" if it["options"] else "")
    if kind == "problems":
        shape = "x".join(map(str, it["shape"])) if it["shape"] else "-"
        return f"  {it['name']:<14} {it['kind']:<9} {shape:<9} {it['description']}"
    return f"  {it['name']:<14} {it.get('summary') or it.get('description') or ''}"


def run(args) -> int:
    if args.what != "all" and args.what not in KINDS:
        raise CLIError(choices_msg("list", args.what, KINDS + ("all",)).replace("lists", "choices"))
    data = listing()
    if args.what != "all":
        data = {args.what: data[args.what]}
    if args.json:
        print(json.dumps(data if args.what == "all" else data[args.what], indent=None))
        return 0
    for kind, items in data.items():
        print(f"{kind}:")
        if not items:
            print("  (none)")
        for it in items:
            print(_line(kind, it))
    return 0
