"""Keep the shared blocks of the algorithm scripts identical.

A shared block is delimited by `# ---- shared: NAME ----` and `# ---- end shared: NAME ----`
(see STYLE: every script stands alone, so common code is copied, and copies must agree).

    python tools/sync_blocks.py --check              # exit 1 and list every block whose copies differ
    python tools/sync_blocks.py --from algorithms/bc.py
        # copy each block of bc.py into every other script that has a block of that name
"""

import argparse
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"^# ---- shared: (?P<name>[\w-]+) ----\n.*?^# ---- end shared: (?P=name) ----$", re.S | re.M)


def scripts() -> list[str]:
    return sorted(glob.glob(os.path.join(ROOT, "algorithms", "*.py")))


def blocks(text: str) -> dict[str, str]:
    """Block name -> its full text, delimiters included."""
    found = {}
    for match in BLOCK.finditer(text):
        if match["name"] in found:
            raise ValueError(f"block {match['name']!r} appears twice in one file")
        found[match["name"]] = match.group(0)
    return found


def check() -> list[str]:
    """One line per block name whose copies are not byte-identical."""
    copies: dict[str, dict[str, list[str]]] = {}
    for path in scripts():
        with open(path) as f:
            for name, text in blocks(f.read()).items():
                copies.setdefault(name, {}).setdefault(text, []).append(os.path.relpath(path, ROOT))
    return [
        f"block {name!r} differs between: " + " | ".join(", ".join(files) for files in versions.values())
        for name, versions in sorted(copies.items())
        if len(versions) > 1
    ]


def sync(source: str) -> list[str]:
    """Copy every block of `source` into the other scripts; returns the files changed."""
    with open(source) as f:
        canonical = blocks(f.read())
    changed = []
    for path in scripts():
        if os.path.abspath(path) == os.path.abspath(source):
            continue
        with open(path) as f:
            text = f.read()
        new = BLOCK.sub(lambda m: canonical.get(m["name"], m.group(0)), text)
        if new != text:
            with open(path, "w") as f:
                f.write(new)
            changed.append(os.path.relpath(path, ROOT))
    return changed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true", help="report blocks whose copies differ")
    group.add_argument("--from", dest="source", help="script whose blocks are copied everywhere")
    args = parser.parse_args()
    if args.check:
        problems = check()
        print("\n".join(problems) if problems else "all shared blocks agree")
        sys.exit(1 if problems else 0)
    if not os.path.isfile(args.source):
        sys.exit(f"error: {args.source} does not exist")
    changed = sync(args.source)
    print("updated: " + ", ".join(changed) if changed else "nothing to update")


if __name__ == "__main__":
    main()
