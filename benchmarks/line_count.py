"""Line counts of the product code (`jaxnas/ export/ latency/`) at git revisions: physical lines (`wc -l`) and
code lines (lines holding a Python token other than a comment or a docstring; blank lines do not count).

    python benchmarks/line_count.py 5f497f7^ 3df8c34 174f8e6 HEAD

Issue 10 ("the net line count goes down") was judged with these two figures.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import tokenize

PATHS = ("jaxnas", "export", "latency")
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
_STATEMENT_START = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}


def code_lines(source: str) -> int:
    """Physical lines holding code: a string that is a statement of its own (a docstring) is not code."""
    toks = list(tokenize.generate_tokens(io.StringIO(source).readline))
    lines: set[int] = set()
    for i, t in enumerate(toks):
        if t.type in _SKIP:
            continue
        if t.type == tokenize.STRING:
            before = next((p for p in reversed(toks[:i]) if p.type not in (tokenize.NL, tokenize.COMMENT)), None)
            after = next((p for p in toks[i + 1:] if p.type != tokenize.COMMENT), None)
            if (before is None or before.type in _STATEMENT_START) and \
                    after is not None and after.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                continue
        lines.update(range(t.start[0], t.end[0] + 1))
    return len(lines)


def count(rev: str) -> tuple[int, int, int]:
    """(files, physical lines, code lines) of the .py files under PATHS at `rev`."""
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", *PATHS], check=True,
                           capture_output=True, text=True).stdout.split()
    files = [n for n in names if n.endswith(".py")]
    physical = code = 0
    for f in files:
        src = subprocess.run(["git", "show", f"{rev}:{f}"], check=True, capture_output=True, text=True).stdout
        physical += src.count("\n")
        code += code_lines(src)
    return len(files), physical, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("revs", nargs="+", help="git revisions, e.g. 5f497f7^ HEAD")
    for rev in ap.parse_args().revs:
        files, physical, code = count(rev)
        print(f"{rev:>12}: {files} files, {physical} lines, {code} code lines")


if __name__ == "__main__":
    main()
