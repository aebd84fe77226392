#!/usr/bin/env python3
"""Draw the host's import arrows between files and report cycles.

Every `use crate::…`, `super::…`, `self::…` and inline `crate::…` path in a file under
`host/src` becomes an arrow to the file that defines the module it names. A file naming
its own folder's `mod.rs` does not count (a module may use its parent's items). Cycles
are the strongly connected components with more than one file. The bindgen `with:`
mapping between `bindings.rs` and the capability resource types is the one allowed
cycle. Files also sit in layers (LAYERS below); an import from a lower layer into a
higher one is reported too. Anything reported fails (exit 1).

Usage: scripts/layers.py [--dot] [--allow FILE,FILE,...]
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "host", "src")
ALLOWED_CYCLE_MEMBERS = {"bindings.rs"}  # plus capability files it maps with `with:`


def module_files(root):
    """Map module path tuple -> file path relative to root."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            files[tuple(parts)] = rel
    return files


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def expand_use_tree(tree):
    """Expand `a::{b, c::{d}}` into ['a::b', 'a::c::d']."""
    tree = tree.strip()
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                prefix = tree[:i]
                inner = tree[i + 1 : tree.rindex("}")]
                parts, start, d = [], 0, 0
                for j, c in enumerate(inner):
                    if c == "{":
                        d += 1
                    elif c == "}":
                        d -= 1
                    elif c == "," and d == 0:
                        parts.append(inner[start:j])
                        start = j + 1
                parts.append(inner[start:])
                out = []
                for part in parts:
                    part = part.strip()
                    if not part:
                        continue
                    if part == "self":
                        out.append(prefix.rstrip(":"))
                    else:
                        out.extend(prefix + p for p in expand_use_tree(part))
                return out
            depth += 1
    return [re.sub(r"\s+as\s+\w+$", "", tree)]


def current_module(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] == "mod":
        return parts[:-1], True
    if parts in (["lib"], ["main"]):
        return [], True
    return parts, False


def resolve(path, rel, files):
    segs = [s for s in path.split("::") if s]
    module, is_dir = current_module(rel)
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(module)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    full = base + segs
    for n in range(len(full), -1, -1):
        key = tuple(full[:n])
        if key in files:
            return files[key]
    return None


def arrows(root):
    files = module_files(root)
    edges = {rel: set() for rel in files.values()}
    use_re = re.compile(r"\b(?:pub(?:\([^)]*\))?\s+)?use\s+((?:crate|super|self)\b[^;]*);", re.S)
    inline_re = re.compile(r"\b(?:crate|super)(?:::\w+)+")
    for rel in files.values():
        with open(os.path.join(root, rel), encoding="utf-8") as fh:
            text = strip_comments(fh.read())
        paths = []
        for m in use_re.finditer(text):
            paths.extend(expand_use_tree(m.group(1)))
        stripped = use_re.sub("", text)
        paths.extend(inline_re.findall(stripped))
        module, is_dir = current_module(rel)
        parent_mod = files.get(tuple(module if not is_dir else module[:-1]))
        own_dir_mod = files.get(tuple(module[:-1])) if not is_dir else None
        for p in paths:
            target = resolve(p, rel, files)
            if target is None or target == rel:
                continue
            if target == own_dir_mod or (not is_dir and target == parent_mod):
                continue
            edges[rel].add(target)
    # lib.rs / main.rs only declare modules.
    edges.pop("lib.rs", None)
    edges.pop("main.rs", None)
    for targets in edges.values():
        targets.discard("lib.rs")
        targets.discard("main.rs")
    return edges


def sccs(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
            out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


# Layers, lowest first. A file may import its own layer or lower ones, never higher.
LAYERS = [
    ("leaves", ["protocol.rs", "grpc.rs", "deadline.rs", "serving_threads.rs", "policy/", "events/", "manifest.rs",
                "data_dir.rs", "telemetry/", "trust.rs", "recording/"]),
    ("backends", ["registry/", "store/", "access/", "secrets/"]),
    ("caller", ["caller/"]),
    ("platform", ["platform.rs"]),
    ("capabilities", ["bindings.rs", "capabilities/"]),
    ("runtime", ["runtime/"]),
    ("services", ["services/"]),
    ("cluster", ["cluster/"]),
    ("edges", ["listener.rs", "tls.rs", "gateway.rs", "admin/"]),
    ("wiring", ["config.rs", "server.rs", "cli/"]),
]


def layer_of(path):
    path = path.replace(os.sep, "/")
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(path == p or (p.endswith("/") and path.startswith(p)) for p in prefixes):
            return rank
    return None


def upward_arrows(edges):
    bad = []
    for src in sorted(edges):
        for dst in sorted(edges[src]):
            a, b = layer_of(src), layer_of(dst)
            if a is None or b is None:
                bad.append((src, dst, "file in no layer"))
            elif b > a:
                bad.append((src, dst, f"{LAYERS[a][0]} imports {LAYERS[b][0]}"))
    return bad


def allowed(component, edges):
    """The bindgen mapping: bindings.rs with capability files, and only that."""
    if "bindings.rs" not in component:
        return False
    return all(f == "bindings.rs" or f.startswith("capabilities" + os.sep) for f in component)


def main():
    edges = arrows(ROOT)
    if "--dot" in sys.argv:
        print("digraph shoal {")
        for src in sorted(edges):
            for dst in sorted(edges[src]):
                print(f'  "{src}" -> "{dst}";')
        print("}")
        return 0
    bad = 0
    for comp in sccs(edges):
        inside = {f: sorted(t for t in edges[f] if t in comp) for f in comp}
        tag = "allowed (bindgen `with:` mapping)" if allowed(comp, edges) else "CYCLE"
        if tag == "CYCLE":
            bad += 1
        print(f"{tag}: {len(comp)} files")
        for f in comp:
            print(f"  {f} -> {', '.join(inside[f])}")
    for src, dst, why in upward_arrows(edges):
        bad += 1
        print(f"UPWARD: {src} -> {dst} ({why})")
    if "--verbose" in sys.argv:
        for src in sorted(edges):
            print(f"{src} -> {', '.join(sorted(edges[src]))}")
    if bad:
        print(f"{bad} layering violation(s)", file=sys.stderr)
        return 1
    print("no import cycles outside the bindgen mapping, no upward imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
