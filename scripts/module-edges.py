#!/usr/bin/env python3
"""The `use` edges between the modules of src/ and any import circle among
them. Test-only code (files named tests.rs / *_tests.rs / props.rs, and
`#[cfg(test)] mod tests { ... }` blocks) is left out. Prints the edges, one
per line ("a -> b"), then the circles; exits 1 if there is one.

    python3 scripts/module-edges.py [--quiet]
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
TEST_FILES = re.compile(r"(^|/)(tests|[a-z_]+_tests|props|testing)\.rs$")


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return "::".join(parts) or "crate"


def strip_tests(text):
    # drop `#[cfg(test)] mod NAME { ... }` blocks (brace-matched)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def main():
    files = []
    for root, _, names in os.walk(SRC):
        for n in names:
            p = os.path.join(root, n)
            if n.endswith(".rs") and not TEST_FILES.search(os.path.relpath(p, SRC)):
                files.append(p)
    modules = {module_of(p) for p in files}

    def resolve(path_parts):
        # the longest prefix that is a module
        for k in range(len(path_parts), 0, -1):
            cand = "::".join(path_parts[:k])
            if cand in modules:
                return cand
        return None

    edges = set()
    for p in files:
        me = module_of(p)
        text = strip_tests(open(p).read())
        text = re.sub(r"//[^\n]*", "", text)
        parent = me.rsplit("::", 1)[0] if "::" in me else "crate"
        is_mod_file = os.path.basename(p) == "mod.rs" or me == "crate"
        base_super = parent if not is_mod_file else (me.rsplit("::", 1)[0] if "::" in me else "crate")
        for m in re.finditer(r"\b(crate|super|self)((?:::\w+)*)(::\*)?", text):
            if not m.group(2) and not m.group(3):
                continue
            head, rest = m.group(1), [x for x in m.group(2).split("::") if x]
            if head == "crate":
                prefix = []
            elif head == "super":
                prefix = [] if base_super == "crate" else base_super.split("::")
                # `super::super::...` climbs once more per `super`
                while rest and rest[0] == "super":
                    rest = rest[1:]
                    prefix = prefix[:-1]
            else:
                prefix = me.split("::") if me != "crate" else []
            target = resolve(prefix + rest)
            if target and target != me and target != "crate":
                edges.add((me, target))
        # a child module named without `self::`
        own = [] if me == "crate" else me.split("::")
        if is_mod_file:
            for m in re.finditer(r"(?<![:\w])(\w+)((?:::\w+)+)", text):
                target = resolve(own + [m.group(1)] + [x for x in m.group(2).split("::") if x])
                if target and target != me and target.startswith(me if me != "crate" else ""):
                    edges.add((me, target))

    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    # circles: strongly connected components with more than one module
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    if "--quiet" not in sys.argv:
        for a, b in sorted(edges):
            print(f"{a} -> {b}")
    for c in sccs:
        print("circle: " + " <-> ".join(c))
    print(f"{len(modules)} modules, {len(edges)} edges, {len(sccs)} circles")
    return 1 if sccs else 0


if __name__ == "__main__":
    sys.exit(main())
