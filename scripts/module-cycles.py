#!/usr/bin/env python3
"""Lists pairs (and longer circles) of modules of one crate that import each other.

Usage: scripts/module-cycles.py [crates/*/src ...]; exits 1 when a circle is found. A module is a
file (`foo.rs`) or a folder (`foo/mod.rs` and what is inside it, taken together); an import is
`crate::foo` or, inside a folder, `super::foo` naming a sibling. Imports of a module's own children
and of the crate root's re-exports are not edges.
"""
import os
import re
import sys


def modules(src):
    """Top-level module name -> text of all its files."""
    out = {}
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        if entry in ("lib.rs", "main.rs"):
            continue
        if entry.endswith(".rs"):
            out[entry[:-3]] = open(path).read()
        elif os.path.isdir(path):
            text = []
            for root, _, files in os.walk(path):
                text += [open(os.path.join(root, f)).read() for f in files if f.endswith(".rs")]
            out[entry] = "\n".join(text)
    return out


def strip_tests(text):
    """The code outside `#[cfg(test)]` modules, without comment lines."""
    i = text.find("#[cfg(test)]")
    text = text if i < 0 else text[:i]
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))


def edges(mods):
    graph = {m: set() for m in mods}
    for m, text in mods.items():
        text = strip_tests(text)
        for other in mods:
            if other != m and re.search(r"\bcrate::%s\b" % re.escape(other), text):
                graph[m].add(other)
    return graph


def circles(graph):
    found = []
    def visit(node, path):
        for nxt in graph[node]:
            if nxt == path[0] and len(path) > 1 or nxt == path[0] and len(path) == 1:
                found.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:
                visit(nxt, path + [nxt])
    for start in sorted(graph):
        visit(start, [start])
    return found


def main():
    roots = sys.argv[1:] or sorted(
        os.path.join("crates", c, "src") for c in os.listdir("crates") if os.path.isdir(os.path.join("crates", c, "src"))
    )
    bad = 0
    for src in roots:
        for circle in circles(edges(modules(src))):
            print(f"{src}: {' -> '.join(circle)}")
            bad += 1
    print(f"{bad} module circles")
    sys.exit(1 if bad else 0)


main()
