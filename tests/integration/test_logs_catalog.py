"""docs/logs.md catalogs every log event the code can write, and nothing else.

The events are read from the C sources: every call of dun_log() (src/util/
log.h). Its second argument is the event name: a string literal, a ternary
of literals (`dead ? "inbox.dead" : "inbox.retrying"`), or a parameter of
the function around the call, whose values are then the literals the
callers in the same file pass at that position. The keys passed after the
name are the fields. A call this reader cannot resolve fails the test (so a
new way of logging cannot slip past the catalog).

Checked: every event the code logs has a catalog row; every row names an
event the code still logs; each row lists every literal field the code
passes and the level(s) a literal level argument gives.
"""

import re
from pathlib import Path

from conftest import DUN_REPO

SRC = DUN_REPO / "src"
CATALOG = DUN_REPO / "docs" / "logs.md"
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
LEVELS = {"DUN_LOG_DEBUG": "debug", "DUN_LOG_INFO": "info", "DUN_LOG_WARN": "warn",
          "DUN_LOG_ERROR": "error"}


def strip_comments(text):
    """C text with comments blanked (string literals kept, line numbers kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"' or c == "'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def call_args(text, open_paren):
    """The top-level arguments of the call whose '(' is at open_paren, and its end."""
    args, depth, cur, i = [], 0, [], open_paren + 1
    while i < len(text):
        c = text[i]
        if c in "\"'":
            j = i + 1
            while text[j] != c:
                j += 2 if text[j] == "\\" else 1
            cur.append(text[i:j + 1])
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                args.append("".join(cur).strip())
                return args, i
            depth -= 1
        elif c == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    raise AssertionError("unterminated call")


def literal(expr):
    """The value of a C string literal (adjacent literals joined), or None."""
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', expr)
    if parts and re.fullmatch(r'\s*("(?:[^"\\]|\\.)*"\s*)+', expr):
        return "".join(parts)
    return None


def literal_values(expr):
    """The literals an expression can be: one literal, or a ternary of them."""
    v = literal(expr)
    if v is not None:
        return [v]
    m = re.fullmatch(r"(?s)[^?]*\?\s*(.*?)\s*:\s*(.*)", expr)
    if m:
        a, b = literal_values(m.group(1)), literal_values(m.group(2))
        if a and b:
            return a + b
    return []


def enclosing_function(text, pos):
    """(name, parameter names) of the function definition before pos."""
    best = None
    for m in re.finditer(r"(?m)^[a-z][\w \*]*?\b(\w+)\(([^)]*)\)\s*\{", text[:pos]):
        best = m
    assert best, "no function around offset %d" % pos
    params = [re.findall(r"\w+", p)[-1] for p in best.group(2).split(",") if p.strip()]
    return best.group(1), params


def code_events():
    """{event: {"levels": set, "fields": set, "where": [file:line]}}."""
    events = {}
    problems = []
    for path in sorted(SRC.rglob("*.c")):
        if path.name == "log.c" and path.parent.name == "util":
            continue
        text = strip_comments(path.read_text())
        for m in re.finditer(r"\bdun_log\s*\(", text):
            args, _ = call_args(text, m.end() - 1)
            where = "%s:%d" % (path.relative_to(DUN_REPO), text.count("\n", 0, m.start()) + 1)
            names = literal_values(args[1])
            direct = bool(names)
            if not names and re.fullmatch(r"\w+", args[1]):
                fn, params = enclosing_function(text, m.start())
                if args[1] in params:
                    idx = params.index(args[1])
                    for c in re.finditer(r"\b%s\s*\(" % re.escape(fn), text):
                        cargs, _ = call_args(text, c.end() - 1)
                        if len(cargs) == len(params):
                            names += literal_values(cargs[idx])
            if not names or not all(EVENT_NAME.match(n) for n in names):
                problems.append("%s: cannot tell the event name of dun_log(%s)" %
                                (where, ", ".join(args[:2])))
                continue
            levels = {LEVELS[t] for t in re.findall(r"DUN_LOG_[A-Z]+", args[0])}
            keys = set()
            for k in args[2:-1:2]:
                v = literal(k)
                if v is not None:
                    keys.add(v)
            for n in names:
                e = events.setdefault(n, {"levels": set(), "fields": set(), "where": [],
                                          "helper_fields": []})
                if direct and len(names) == 1:
                    e["levels"] |= levels
                if direct:
                    e["fields"] |= keys
                else:
                    # a helper's calls are told apart by code this reader does not
                    # follow: only the fields every one of them passes are certain
                    e["helper_fields"].append(keys)
                e["where"].append(where)
    assert not problems, "\n".join(problems)
    for e in events.values():
        if e["helper_fields"]:
            e["fields"] |= set.intersection(*e["helper_fields"])
    return events


def catalog():
    """{event: {"level": text, "fields": text}} from the rows of docs/logs.md."""
    rows = {}
    for line in CATALOG.read_text().splitlines():
        m = re.match(r"^\|\s*`([a-z0-9_.]+)`\s*\|([^|]*)\|([^|]*)\|", line)
        if not m:
            continue
        assert m.group(1) not in rows, "catalogued twice: " + m.group(1)
        rows[m.group(1)] = {"level": m.group(2), "fields": m.group(3)}
    return rows


def test_the_reader_finds_the_events_it_must():
    events = code_events()
    # one of each shape: a literal, a ternary, a parameter of a helper
    for name in ("recompute.done", "inbox.dead", "inbox.retrying", "email.sent",
                 "email.overdue", "http.request"):
        assert name in events, name
    assert events["inbox.dead"]["fields"] >= {"account", "attempts", "error"}
    assert len(events) >= 40, sorted(events)


def test_every_event_is_catalogued():
    events, rows = code_events(), catalog()
    missing = sorted(set(events) - set(rows))
    assert not missing, "log events missing from docs/logs.md: %s (logged at %s)" % (
        missing, [events[n]["where"][0] for n in missing])


def test_no_stale_catalog_entries():
    events, rows = code_events(), catalog()
    stale = sorted(set(rows) - set(events))
    assert not stale, "docs/logs.md catalogs events the code no longer logs: %s" % stale


def test_catalog_rows_list_the_fields_and_levels_the_code_uses():
    events, rows = code_events(), catalog()
    wrong = []
    for name, e in sorted(events.items()):
        row = rows.get(name)
        if not row:
            continue
        listed = set(re.findall(r"`([a-z0-9_]+)`", row["fields"]))
        if e["fields"] - listed:
            wrong.append("%s: fields %s not listed" % (name, sorted(e["fields"] - listed)))
        for lvl in e["levels"]:
            if lvl not in row["level"]:
                wrong.append("%s: level %s not listed" % (name, lvl))
    assert not wrong, "\n".join(wrong)
