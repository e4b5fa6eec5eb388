#!/usr/bin/env python3
"""Writes the API dump of AIDL files the way AOSP's `aidl --dumpapi` does (system/tools/aidl
aidl_dumpapi.cpp), so aidl_api/<package>/<N> and current hold what `m <name>-freeze-api` /
`m <name>-update-api` would write: the immutable-file banner, the document's leading (license)
comment if any, comments dropped, imports dropped, type names fully qualified, two-space
indentation, members in dumpapi's order (methods, fields, constants), annotations sorted, and a
constant expression that is not a single literal printed in parentheses with its value after it.

Usage: dumpapi.py OUT_DIR FILE.aidl...   (writes OUT_DIR/<package path>/<Type>.aidl)

Hand-written rather than running aidl itself: there is no Android tree (and so no aidl binary)
where this project is developed. It covers the AIDL this package uses (parcelables, interfaces,
enums, constants, annotations, arrays, generics) and refuses anything else, so a construct it does
not know fails loudly instead of being dumped wrongly.
"""

import os
import re
import sys

PREAMBLE = """\
///////////////////////////////////////////////////////////////////////////////
// THIS FILE IS IMMUTABLE. DO NOT EDIT IN ANY CASE.                          //
///////////////////////////////////////////////////////////////////////////////

// This file is a snapshot of an AIDL file. Do not edit it manually. There are
// two cases:
// 1). this is a frozen version file - do not edit this in any case.
// 2). this is a 'current' file. If you make a backwards compatible change to
//     the interface (from the latest frozen version), the build system will
//     prompt you to update this file with `m <name>-update-api`.
//
// You must not make a backward incompatible change to any AIDL file built
// with the aidl_interface module type with versions property set. The module
// type is used to build AIDL files in a way that they can be used across
// independently updatable components of the system. If a device is shipped
// with such a backward incompatible change, it has a high risk of breaking
// later when a module using the interface is updated, e.g., Mainline modules.

"""

# Types aidl knows without an import; they stay unqualified in a dump.
BUILTINS = {
    "void", "boolean", "byte", "char", "int", "long", "float", "double", "String", "CharSequence",
    "IBinder", "ParcelFileDescriptor", "ParcelableHolder", "FileDescriptor", "List", "Map",
}

TOKEN = re.compile(
    r'(?P<ws>\s+)|(?P<block>/\*.*?\*/)|(?P<line>//[^\n]*)|(?P<str>"(?:\\.|[^"\\])*")'
    r"|(?P<num>0[xX][0-9a-fA-F]+[lL]?|\d+[lL]?)|(?P<ident>[A-Za-z_][A-Za-z0-9_.]*)"
    r"|(?P<op><<|>>|&&|\|\||==|!=|<=|>=|[-+*/%&|^~!<>(){}\[\];,=@])",
    re.S,
)


class AidlError(Exception):
    pass


def tokenize(text, path):
    """(kind, text) tokens; comments are kept apart as ("comment", text) for the header."""
    tokens, pos = [], 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            raise AidlError(f"{path}: cannot read {text[pos:pos + 20]!r}")
        kind = m.lastgroup
        if kind in ("block", "line"):
            tokens.append(("comment", m.group()))
        elif kind != "ws":
            tokens.append((kind, m.group()))
        pos = m.end()
    return tokens


class Parser:
    def __init__(self, tokens, path):
        self.path = path
        self.leading_comments = []
        i = 0
        while i < len(tokens) and tokens[i][0] == "comment":
            self.leading_comments.append(tokens[i][1])
            i += 1
        self.toks = [t for t in tokens[i:] if t[0] != "comment"]
        self.pos = 0

    def peek(self, offset=0):
        i = self.pos + offset
        return self.toks[i][1] if i < len(self.toks) else None

    def next(self):
        if self.pos >= len(self.toks):
            raise AidlError(f"{self.path}: unexpected end of file")
        self.pos += 1
        return self.toks[self.pos - 1][1]

    def expect(self, text):
        got = self.next()
        if got != text:
            raise AidlError(f"{self.path}: expected {text!r}, got {got!r}")

    def annotations(self):
        out = []
        while self.peek() == "@":
            self.next()
            name = self.next()
            params = {}
            if self.peek() == "(":
                self.next()
                while self.peek() != ")":
                    key = self.next()
                    self.expect("=")
                    params[key] = self.next()
                    if self.peek() == ",":
                        self.next()
                self.next()
            out.append((name, params))
        return out

    def type_spec(self):
        annotations = self.annotations()
        name = self.next()
        args = []
        if self.peek() == "<":
            self.next()
            while True:
                args.append(self.type_spec())
                if self.next() == ">":
                    break
        arrays = 0
        while self.peek() == "[":
            self.next()
            self.expect("]")
            arrays += 1
        return {"annotations": annotations, "name": name, "args": args, "arrays": arrays}

    def const_expr(self, stop):
        """Tokens up to (not including) one of `stop` at nesting depth 0, as an expression tree."""
        toks = []
        depth = 0
        while not (depth == 0 and self.peek() in stop):
            t = self.next()
            depth += t in "([{"
            depth -= t in ")]}"
            toks.append(t)
        return ExprParser(toks, self.path).parse()

    def document(self):
        self.expect("package")
        package = self.next()
        self.expect(";")
        imports = []
        while self.peek() == "import":
            self.next()
            imports.append(self.next())
            self.expect(";")
        decl = self.declaration()
        if self.pos != len(self.toks):
            raise AidlError(f"{self.path}: one type per file")
        return {"package": package, "imports": imports, "decl": decl, "comments": self.leading_comments}

    def declaration(self):
        annotations = self.annotations()
        oneway = False
        if self.peek() == "oneway":
            self.next()
            oneway = True
        kind = self.next()
        if kind not in ("parcelable", "interface", "enum", "union"):
            raise AidlError(f"{self.path}: unsupported declaration {kind!r}")
        name = self.next()
        self.expect("{")
        decl = {"kind": kind, "name": name, "annotations": annotations, "oneway": oneway,
                "methods": [], "fields": [], "consts": [], "enumerators": []}
        while self.peek() != "}":
            if kind == "enum":
                ename = self.next()
                value = None
                if self.peek() == "=":
                    self.next()
                    value = self.const_expr({",", "}"})
                if self.peek() == ",":
                    self.next()
                decl["enumerators"].append((ename, value))
            elif self.peek() == "const":
                self.next()
                ctype = self.type_spec()
                cname = self.next()
                self.expect("=")
                decl["consts"].append((ctype, cname, self.const_expr({";"})))
                self.expect(";")
            elif kind == "interface":
                decl["methods"].append(self.method())
            else:
                ftype = self.type_spec()
                fname = self.next()
                default = None
                if self.peek() == "=":
                    self.next()
                    default = self.const_expr({";"})
                self.expect(";")
                decl["fields"].append((ftype, fname, default))
        self.expect("}")
        return decl

    def method(self):
        oneway = False
        if self.peek() == "oneway":
            self.next()
            oneway = True
        rtype = self.type_spec()
        name = self.next()
        self.expect("(")
        args = []
        while self.peek() != ")":
            direction = None
            if self.peek() in ("in", "out", "inout"):
                direction = self.next()
            atype = self.type_spec()
            args.append((direction, atype, self.next()))
            if self.peek() == ",":
                self.next()
        self.expect(")")
        method_id = None
        if self.peek() == "=":
            self.next()
            method_id = self.next()
        self.expect(";")
        return {"oneway": oneway, "type": rtype, "name": name, "args": args, "id": method_id}


class ExprParser:
    """Constant expressions: literals, references, unary and binary operators, C precedence."""

    BINARY = [["||"], ["&&"], ["|"], ["^"], ["&"], ["==", "!="], ["<", ">", "<=", ">="],
              ["<<", ">>"], ["+", "-"], ["*", "/", "%"]]

    def __init__(self, toks, path):
        self.toks, self.pos, self.path = toks, 0, path

    def parse(self):
        e = self.binary(0)
        if self.pos != len(self.toks):
            raise AidlError(f"{self.path}: cannot read constant {' '.join(self.toks)}")
        return e

    def binary(self, level):
        if level == len(self.BINARY):
            return self.unary()
        left = self.binary(level + 1)
        while self.pos < len(self.toks) and self.toks[self.pos] in self.BINARY[level]:
            op = self.toks[self.pos]
            self.pos += 1
            left = ("binary", op, left, self.binary(level + 1))
        return left

    def unary(self):
        t = self.toks[self.pos]
        self.pos += 1
        if t in ("-", "+", "~", "!"):
            return ("unary", t, self.unary())
        if t == "(":
            e = self.binary(0)
            if self.toks[self.pos] != ")":
                raise AidlError(f"{self.path}: unbalanced parentheses")
            self.pos += 1
            return e
        if t == "{":
            raise AidlError(f"{self.path}: array constants are not supported here")
        if t[0].isdigit() or t[0] == '"' or t in ("true", "false"):
            return ("literal", t)
        return ("reference", t)


def literal_value(text):
    if text in ("true", "false"):
        return int(text == "true")
    return int(text.rstrip("lL"), 0)


def evaluate(e, path):
    kind = e[0]
    if kind == "literal":
        return literal_value(e[1])
    if kind == "unary":
        v = evaluate(e[2], path)
        return {"-": -v, "+": v, "~": ~v, "!": int(not v)}[e[1]]
    if kind == "binary":
        a, b = evaluate(e[2], path), evaluate(e[3], path)
        ops = {"+": a + b, "-": a - b, "*": a * b, "|": a | b, "&": a & b, "^": a ^ b,
               "<<": a << b if b >= 0 else 0, ">>": a >> b if b >= 0 else 0}
        if e[1] not in ops:
            raise AidlError(f"{path}: operator {e[1]} is not supported here")
        return ops[e[1]]
    raise AidlError(f"{path}: references in constants are not supported here")


def expr_text(e):
    """DumpVisitor's rendering: literals as written, every operation in parentheses."""
    kind = e[0]
    if kind in ("literal", "reference"):
        return e[1]
    if kind == "unary":
        return f"({e[1]}{expr_text(e[2])})"
    return f"({expr_text(e[2])} {e[1]} {expr_text(e[3])})"


def dump_value(e, path):
    """A constant with its final value as a comment unless it is a single literal."""
    text = expr_text(e)
    if e[0] == "literal":
        return text
    return f"{text} /* {evaluate(e, path)} */"


class Dumper:
    def __init__(self, doc, known, path):
        self.doc, self.known, self.path = doc, known, path
        self.lines = []
        self.depth = 0

    def qualify(self, name):
        if name in BUILTINS or "." in name:
            return name
        for imported in self.doc["imports"]:
            if imported.rsplit(".", 1)[-1] == name:
                return imported
        if name in self.known:
            return f"{self.doc['package']}.{name}"
        raise AidlError(f"{self.path}: unknown type {name}")

    @staticmethod
    def annotations(annotations):
        def one(name, params):
            if not params:
                return f"@{name}"
            return f"@{name}(" + ", ".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"
        return " ".join(sorted(one(n, p) for n, p in annotations))

    def type_text(self, t):
        text = self.qualify(t["name"])
        if t["args"]:
            text += "<" + ",".join(self.type_text(a) for a in t["args"]) + ">"
        text += "[]" * t["arrays"]
        ann = self.annotations(t["annotations"])
        return f"{ann} {text}" if ann else text

    def out(self, line):
        self.lines.append("  " * self.depth + line)

    def decl(self, d):
        ann = self.annotations(d["annotations"])
        if ann:
            self.out(ann)
        prefix = "oneway " if d["oneway"] else ""
        self.out(f"{prefix}{d['kind']} {d['name']} {{")
        self.depth += 1
        for m in d["methods"]:
            args = ", ".join((f"{direction} " if direction else "") + f"{self.type_text(t)} {n}"
                             for direction, t, n in m["args"])
            line = ("oneway " if m["oneway"] else "") + f"{self.type_text(m['type'])} {m['name']}({args})"
            if m["id"] is not None:
                line += f" = {m['id']}"
            self.out(line + ";")
        for t, name, default in d["fields"]:
            value = f" = {dump_value(default, self.path)}" if default is not None else ""
            self.out(f"{self.type_text(t)} {name}{value};")
        for t, name, value in d["consts"]:
            self.out(f"const {self.type_text(t)} {name} = {dump_value(value, self.path)};")
        for name, value in d["enumerators"]:
            self.out(f"{name} = {dump_value(value, self.path)}," if value is not None else f"{name},")
        self.depth -= 1
        self.out("}")

    def text(self):
        header = ""
        if self.doc["comments"]:
            header = "".join(self.doc["comments"])
            if not header.endswith("\n"):
                header += "\n"
        self.decl(self.doc["decl"])
        return header + PREAMBLE + f"package {self.doc['package']};\n" + "\n".join(self.lines) + "\n"


def main(argv):
    if len(argv) < 3:
        sys.exit("usage: dumpapi.py OUT_DIR FILE.aidl...")
    out_dir, files = argv[1], argv[2:]
    docs = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            docs.append((path, Parser(tokenize(f.read(), path), path).document()))
    known = {doc["decl"]["name"] for _, doc in docs}
    for path, doc in docs:
        try:
            text = Dumper(doc, known, path).text()
        except AidlError as e:
            sys.exit(f"dumpapi: {e}")
        dest = os.path.join(out_dir, *doc["package"].split("."), doc["decl"]["name"] + ".aidl")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except AidlError as e:
        sys.exit(f"dumpapi: {e}")
