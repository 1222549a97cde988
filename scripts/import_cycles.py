#!/usr/bin/env python3
"""Lists circles among the files of a crate's src/: file A takes a name from
file B (a `use`, or a path written out in code such as `super::ops::run` or
`serve::run`, resolved to the file of the deepest module it goes through) and
B, directly or around a loop, takes one from A. A parent's `mod child;`
declaration is not an import; `pub use child::X` is. Test-only modules
(`#[cfg(test)] mod x;` and inline `#[cfg(test)] mod tests { .. }`) are left
out. Exits 1 when there is a circle, so the test command can enforce that
dependencies run one way.

It reads Rust as text (no macro expansion, no name resolution beyond module
paths), so it can miss an edge hidden in a macro; it does not invent one.

usage: scripts/import_cycles.py [SRC_DIR]   (default: src)"""
import os, re, sys
from collections import defaultdict

root = sys.argv[1] if len(sys.argv) > 1 else "src"

def modpath_of(path):
    rel = os.path.relpath(path, root)
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return tuple(parts)

files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith(".rs"):
            p = os.path.join(d, f)
            files[modpath_of(p)] = p
# test-only files: declared under #[cfg(test)]
test_mods = set()
for mp, p in files.items():
    src = open(p).read()
    for m in re.finditer(r'#\[cfg\(test\)\]\s*(?:#\[path\s*=\s*"([^"]+)"\]\s*)?(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', src):
        test_mods.add(mp + (m.group(2),))

def strip_comments(s):
    s = re.sub(r'//[^\n]*', '', s)
    return re.sub(r'/\*.*?\*/', '', s, flags=re.S)

def expand(tree):
    # tree: text like a::b::{c, d::{e, f as g}, self}
    tree = tree.strip()
    out = []
    i = tree.find('{')
    if i < 0:
        t = re.sub(r'\s+as\s+\w+$', '', tree).strip()
        return [t] if t else []
    prefix = tree[:i]
    body = tree[i+1:tree.rfind('}')]
    depth, cur, items = 0, '', []
    for ch in body:
        if ch == '{': depth += 1
        if ch == '}': depth -= 1
        if ch == ',' and depth == 0:
            items.append(cur); cur = ''
        else:
            cur += ch
    items.append(cur)
    for it in items:
        it = it.strip()
        if not it: continue
        for e in expand(it):
            out.append(prefix + e if e != 'self' else prefix.rstrip(':'))
    return out

def reached(mp, children, segs, last_is_item):
    """The file of the deepest module a path goes through, seen from module
    `mp`, or None for a path into another crate. In a `use`, the last
    segment may be a module itself; in code, it names an item."""
    if segs[0] == 'crate':
        base, segs = (), segs[1:]
    elif segs[0] == 'super':
        base = mp
        while segs and segs[0] == 'super':
            base, segs = base[:-1], segs[1:]
    elif segs[0] == 'self':
        base, segs = mp, segs[1:]
    elif segs[0] in children:
        base = mp
    else:
        return None
    cur = base
    for seg in (segs[:-1] if last_is_item else segs):
        if cur + (seg,) not in files:
            break
        cur = cur + (seg,)
    return cur if cur != mp and cur in files else None

USE = r'^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);'
edges = defaultdict(set)
for mp, p in files.items():
    if any(mp[:k] in test_mods for k in range(1, len(mp) + 1)):
        continue
    src = strip_comments(open(p).read())
    # drop #[cfg(test)] mod tests { ... } blocks (crudely: from the attribute to the end)
    m = re.search(r'#\[cfg\(test\)\]\s*mod\s+\w+\s*\{', src)
    if m: src = src[:m.start()]
    children = set(re.findall(r'^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', src, re.M))
    paths = []
    for u in re.finditer(USE, src, re.M):
        paths += [([s for s in path.split('::') if s], False) for path in expand(u.group(1))]
    # paths written out in code (`kms::run(cmd)`, `crate::nbd::Export`,
    # `super::ops::dispatch`) take names just as a `use` does
    body = re.sub(USE, '', src, flags=re.M)
    body = re.sub(r'"(?:\\.|[^"\\])*"', '""', body)
    for m in re.finditer(r'(?<![\w:])((?:crate|super|self|\w+)(?:::\w+)+)', body):
        paths.append((m.group(1).split('::'), True))
    for segs, last_is_item in paths:
        if segs:
            target = reached(mp, children, segs, last_is_item)
            if target is not None:
                edges[mp].add(target)

# Tarjan SCC
index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
sys.setrecursionlimit(10000)
for v in list(files):
    if v not in index: strong(v)
name = lambda m: files[m]
for c in sccs:
    print("circle:", ", ".join(sorted(name(m) for m in c)))
    for a in sorted(c):
        for b in sorted(edges[a]):
            if b in c: print(f"  {name(a)} -> {name(b)}")
print(f"{len(sccs)} circle(s) among {len(files)} files")
sys.exit(1 if sccs else 0)
