#!/usr/bin/env python3
"""Lists modules of one crate that import each other, in a circle.

Usage: scripts/module-cycles.py [crates/NAME/src ...] (default: every crate); exits 1 when a
circle is found. At each level (the crate root, then each folder module) the modules are the
files and folders side by side; a module imports a sibling when its code (comments and
`#[cfg(test)]` modules left out) names `crate::PATH::sibling` or, inside a folder,
`super::sibling`. A folder counts as one module together with everything inside it.
"""
import os
import re
import sys


def code(path):
    """A file's code outside `#[cfg(test)]` modules, without comment lines."""
    text = open(path).read()
    i = text.find("#[cfg(test)]")
    text = text if i < 0 else text[:i]
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))


def texts(path):
    """Code of a module: one file, or every file under a folder."""
    if os.path.isfile(path):
        return [code(path)]
    out = []
    for root, _, files in os.walk(path):
        out += [code(os.path.join(root, f)) for f in files if f.endswith(".rs")]
    return out


def level(folder, crate_path):
    """Siblings in `folder` (crate_path: their path from `crate::`) -> their imports."""
    mods = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry in ("lib.rs", "main.rs", "mod.rs"):
            continue
        if entry.endswith(".rs"):
            mods[entry[:-3]] = path
        elif os.path.isdir(path):
            mods[entry] = path
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        text = "\n".join(texts(path))
        for other in mods:
            if other == m:
                continue
            full = "::".join(["crate"] + crate_path + [other])
            local = crate_path and re.search(r"\bsuper::%s\b" % re.escape(other), text)
            if re.search(r"\b%s\b" % re.escape(full), text) or local:
                graph[m].add(other)
    return mods, graph


def circles(graph):
    found = []

    def visit(node, path):
        for nxt in sorted(graph[node]):
            if nxt == path[0]:
                found.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return found


def walk(folder, crate_path, report):
    mods, graph = level(folder, crate_path)
    for circle in circles(graph):
        report(folder, circle)
    for name, path in mods.items():
        if os.path.isdir(path):
            walk(path, crate_path + [name], report)


def main():
    roots = sys.argv[1:] or sorted(
        os.path.join("crates", c, "src")
        for c in os.listdir("crates")
        if os.path.isdir(os.path.join("crates", c, "src"))
    )
    found = []
    for src in roots:
        walk(src, [], lambda folder, circle: found.append(f"{folder}: {' -> '.join(circle)}"))
    for line in found:
        print(line)
    print(f"{len(found)} module circles")
    sys.exit(1 if found else 0)


main()
