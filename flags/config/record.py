#!/usr/bin/env python3
"""Records the field paths a component config kind accepts, from the Go types of a release.

usage: record.py ROOT_TYPE OUT types.go [more types.go ...]

Every struct type of the given files is read (fields and their `json:"..."` names; inline
embeddings are flattened); the paths reachable from ROOT_TYPE are written one per line:
`a.b.c` for a field, `a.*` where a map takes any key, `a[]` for the elements of a list.
A field whose type is not a struct of the given files is a leaf (durations, quantities...).
"""
import re
import sys

STRUCT = re.compile(r"^type (\w+) struct \{$")
FIELD = re.compile(r"^\s*(\w+)?\s*([\w.\[\]*]+(?:\[[\w.*]+\][\w.*]+)?)\s+`json:\"([^\"]*)\"")


def parse(paths):
    types = {}
    for p in paths:
        cur = None
        depth = 0
        for line in open(p, encoding="utf-8"):
            line = line.rstrip("\n")
            if cur is None:
                m = STRUCT.match(line)
                if m:
                    cur, depth = m.group(1), 1
                    types[cur] = []
                continue
            code = line.split("//", 1)[0]
            depth += code.count("{") - code.count("}")
            if depth <= 0:
                cur = None
                continue
            if depth != 1:
                continue
            if "`" not in line:
                continue
            m = FIELD.match(line)
            if not m:
                continue
            name, typ, tag = m.group(1), m.group(2), m.group(3)
            if name is None:
                # An embedded type: `Type \`json:",inline"\``.
                name, typ = typ, typ
            jname = tag.split(",")[0]
            inline = "inline" in tag.split(",")[1:]
            types[cur].append((jname, typ, inline))
    return types


def base(typ):
    t = typ.lstrip("*")
    if "." in t and not t.startswith("map[") and not t.startswith("[]"):
        t = t.split(".")[-1]
    return t


def walk(types, typ, prefix, out, seen):
    t = typ.lstrip("*")
    if t.startswith("[]"):
        walk(types, t[2:], prefix + "[]", out, seen)
        return
    if t.startswith("map["):
        val = t[t.index("]") + 1:]
        out.add(prefix + ".*")
        walk(types, val, prefix + ".*", out, seen)
        return
    b = base(t)
    if b not in types or b in seen:
        if prefix:
            out.add(prefix)
        return
    for jname, ftyp, inline in types[b]:
        if inline or jname == "":
            walk(types, ftyp, prefix, out, seen | {b})
            continue
        if jname == "-":
            continue
        p = f"{prefix}.{jname}" if prefix else jname
        out.add(p)
        walk(types, ftyp, p, out, seen | {b})


def main():
    root, out_path, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    types = parse(files)
    if root not in types:
        sys.exit(f"{root}: not found in {files}")
    out = set()
    walk(types, root, "", out, set())
    with open(out_path, "a", encoding="utf-8") as f:
        for p in sorted(out):
            f.write(p + "\n")


if __name__ == "__main__":
    main()
