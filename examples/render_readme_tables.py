#!/usr/bin/env python
"""Write the README's demo tables from the committed metrics files (or check that they are current).

Each table sits between ``<!-- demo-table: NAME -->`` and ``<!-- /demo-table: NAME -->`` in
README.md and is ``affinity_demo.report.markdown_table`` of ``examples/results/NAME/metrics.json``,
which the command recorded in that file produced.

Usage::

    python examples/render_readme_tables.py           # rewrite the tables in README.md
    python examples/render_readme_tables.py --check   # exit 1 if README.md differs from them
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from affinity_demo import report  # noqa: E402

README = _HERE.parent / "README.md"
RESULTS = _HERE / "results"
TABLES = ("fib25", "synthetic")


def block(name: str, body: str) -> str:
    return f"<!-- demo-table: {name} -->\n{body}\n<!-- /demo-table: {name} -->"


def render_tables(results: Path = RESULTS) -> Dict[str, str]:
    """``{name: markdown}`` for every committed metrics file, with the command that made it."""
    out = {}
    for name in TABLES:
        metrics = report.load(results / name / "metrics.json")
        out[name] = (report.markdown_table(metrics) + "\n\nMeasured with `" + metrics["command"].strip()
                     + f"` (`examples/results/{name}/`).")
    return out


def render_readme(text: str, tables: Dict[str, str]) -> str:
    """``text`` with every table block replaced by its rendering (each block must be there once)."""
    for name, body in tables.items():
        pattern = re.compile(re.escape(f"<!-- demo-table: {name} -->") + r".*?"
                             + re.escape(f"<!-- /demo-table: {name} -->"), re.S)
        if len(pattern.findall(text)) != 1:
            raise SystemExit(f"render_readme_tables: README.md must hold the block '<!-- demo-table: {name} -->' "
                             f"... '<!-- /demo-table: {name} -->' exactly once")
        text = pattern.sub(lambda _: block(name, body), text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check; exit 1 if README.md is not current")
    args = p.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new = render_readme(text, render_tables())
    if args.check:
        if new != text:
            print("README.md's demo tables differ from examples/results/*/metrics.json: "
                  "run python examples/render_readme_tables.py")
            return 1
        print("README.md's demo tables are current")
        return 0
    if new != text:
        README.write_text(new, encoding="utf-8")
        print("README.md: demo tables rewritten")
    else:
        print("README.md: demo tables already current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
