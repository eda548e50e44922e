"""Sizes of the filter modules before and after wasm-opt, with a section breakdown."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

SECTION_NAMES = {0: "custom", 1: "type", 2: "import", 3: "function", 4: "table", 5: "memory",
                 6: "global", 7: "export", 8: "start", 9: "element", 10: "code", 11: "data",
                 12: "datacount"}


def _leb(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def sections(data: bytes) -> dict[str, int]:
    """Bytes per section kind (custom sections by name); {} if not a Wasm module."""
    if data[:4] != b"\0asm":
        return {}
    out: dict[str, int] = {}
    i = 8
    while i < len(data):
        sid = data[i]
        size, body = _leb(data, i + 1)
        name = SECTION_NAMES.get(sid, f"section{sid}")
        if sid == 0:
            n, j = _leb(data, body)
            name = "custom:" + data[j:j + n].decode("utf-8", "replace")
        out[name] = out.get(name, 0) + size
        i = body + size
    return out


def function_count(data: bytes) -> int:
    """Functions defined in the module (entries of the code section)."""
    if data[:4] != b"\0asm":
        return 0
    i = 8
    while i < len(data):
        sid = data[i]
        size, body = _leb(data, i + 1)
        if sid == 10:
            return _leb(data, body)[0]
        i = body + size
    return 0


# Size targets after wasm-opt ("150 KB" / "250 KB", read strictly as 1,000-byte KB).
SINGLE_LIMIT_BYTES = 150_000
COMBINED_LIMIT_BYTES = 250_000


def module_files(module: str) -> dict:
    """Cargo package, built file (in the wasm profile's directory) and packaged file name of
    `module`: "meshwarden" (the combined module) or a kind (its single-purpose module); the
    mapping of scripts/package-wasm.sh."""
    if module == "meshwarden":
        return {"package": "meshwarden-module", "built": "meshwarden_module.wasm",
                "packaged": "meshwarden.wasm", "limit_bytes": COMBINED_LIMIT_BYTES}
    return {"package": f"meshwarden-{module}-module", "built": f"meshwarden_{module}_module.wasm",
            "packaged": f"meshwarden_{module}.wasm", "limit_bytes": SINGLE_LIMIT_BYTES}


def measure(build_dir: Path, out_dir: Path, modules: list[str]) -> list[dict]:
    rows = []
    for f in modules:
        files = module_files(f)
        src = build_dir / files["built"]
        dst = out_dir / files["packaged"]
        row: dict = {"filter": f, "module": files["packaged"], "package": files["package"],
                     "limit_bytes": files["limit_bytes"],
                     "unoptimised_path": str(src), "optimised_path": str(dst)}
        if src.is_file():
            row["unoptimised_bytes"] = src.stat().st_size
        if dst.is_file():
            data = dst.read_bytes()
            row["optimised_bytes"] = len(data)
            row["optimised_gzip_bytes"] = len(gzip.compress(data, 9))
            row["sections"] = sections(data)
            row["functions"] = function_count(data)
        rows.append(row)
    return rows


def _name(buf: bytes, i: int) -> tuple[str, int]:
    n, i = _leb(buf, i)
    return buf[i:i + n].decode("utf-8", "replace"), i + n


def _limits(buf: bytes, i: int) -> int:
    flags = buf[i]
    _, i = _leb(buf, i + 1)
    if flags & 1:
        _, i = _leb(buf, i)
    return i


def function_sizes(data: bytes) -> list[tuple[str, int]]:
    """(name, body bytes) of every defined function, names from the `name` section (a module
    built without `strip`); unnamed functions are reported as `?`."""
    if data[:4] != b"\0asm":
        return []
    imported = 0
    bodies: list[int] = []
    names: dict[int, str] = {}
    i = 8
    while i < len(data):
        sid = data[i]
        size, body = _leb(data, i + 1)
        end = body + size
        if sid == 2:
            count, j = _leb(data, body)
            for _ in range(count):
                _, j = _name(data, j)
                _, j = _name(data, j)
                kind = data[j]
                j += 1
                if kind == 0:
                    imported += 1
                    _, j = _leb(data, j)
                elif kind == 1:
                    j = _limits(data, j + 1)
                elif kind == 2:
                    j = _limits(data, j)
                elif kind == 3:
                    j += 2
                else:
                    _, j = _leb(data, j + 1)
        elif sid == 10:
            count, j = _leb(data, body)
            for _ in range(count):
                n, k = _leb(data, j)
                bodies.append(n)
                j = k + n
        elif sid == 0:
            cname, j = _name(data, body)
            if cname == "name":
                while j < end:
                    sub = data[j]
                    ssize, k = _leb(data, j + 1)
                    if sub == 1:
                        count, m = _leb(data, k)
                        for _ in range(count):
                            idx, m = _leb(data, m)
                            nm, m = _name(data, m)
                            names[idx] = nm
                    j = k + ssize
        i = end
    return [(names.get(imported + n, "?"), size) for n, size in enumerate(bodies)]


_LEGACY_ESCAPES = [("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$RF$", "&"), ("$BP$", "*"),
                   ("$C$", ","), ("$u7b$", "{"), ("$u7d$", "}"), ("$u5b$", "["), ("$u5d$", "]"),
                   ("..", "::")]


def _first_ident(s: str) -> str:
    s = s.lstrip("_<&*[ ")
    for prefix in ("mut ", "dyn ", "const "):
        if s.startswith(prefix):
            s = s[len(prefix):].lstrip("<&*[ ")
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", s)
    return m.group(0) if m else "?"


def crate_of(symbol: str) -> str:
    """The crate a Rust function belongs to, from its mangled name (legacy `_ZN` or v0 `_R`);
    for `<T as Trait>::f` the crate of T. Unmangled names: `proxy_*` exports are the SDK's,
    the rest is the C side of the standard library (allocator, libc)."""
    if symbol.startswith("_ZN"):
        m = re.match(r"_ZN(\d+)", symbol)
        if not m:
            return "?"
        n = int(m.group(1))
        seg = symbol[m.end():m.end() + n]
        for a, b in _LEGACY_ESCAPES:
            seg = seg.replace(a, b)
        return _first_ident(seg)
    if symbol.startswith("_R"):
        m = re.search(r"C(?:s[0-9A-Za-z]*_)?(\d+)", symbol)
        if m:
            n = int(m.group(1))
            return symbol[m.end():m.end() + n] or "?"
        return "?"
    if symbol.startswith("proxy_"):
        return "proxy_wasm"
    return "std (C: allocator, libc)" if symbol != "?" else "?"


def attribute(module: Path, top: int = 12) -> list[tuple[str, int]]:
    """Code bytes per crate of an unstripped module, largest first."""
    per: dict[str, int] = {}
    for name, size in function_sizes(module.read_bytes()):
        c = crate_of(name)
        per[c] = per.get(c, 0) + size
    return sorted(per.items(), key=lambda kv: -kv[1])[:top]
