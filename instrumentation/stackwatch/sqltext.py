"""SQL text: the statement normaliser and the sqlcommenter comment, one implementation of each.

The SQLAlchemy listeners (N+1 detection, slow-query log) and the PostgreSQL log
scanner must agree on when two statements are "the same", so both call
``statement_shape``. The comment format is written by the SQLAlchemy listener
and read back by ``stackwatch db top``, so its writer and parser live together.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import quote, unquote

# Statement kinds used as the `operation` label: a closed set keeps the label bounded.
OPERATIONS = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "WITH",
        "CREATE",
        "ALTER",
        "DROP",
        "TRUNCATE",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "SET",
        "SHOW",
        "COPY",
        "CALL",
        "EXPLAIN",
        "LOCK",
        "VACUUM",
        "ANALYZE",
        "PREPARE",
        "EXECUTE",
        "DEALLOCATE",
    }
)
OTHER_OPERATION = "OTHER"

# Normalised statements are keys of per-request counters and log fields: bound them.
MAX_NORMALIZED_CHARS = 2000

_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_LINE_COMMENT = re.compile(r"--[^\n]*")
# Literals and placeholders go in separate passes, each run only when its first
# character occurs: Python's re tries every branch of an alternation at every
# position, which made one combined pattern several times slower. Strings go first
# (their contents may look like anything), numbers last (placeholders hold digits).
# Unrolled ('..' then any ''-escaped runs): ten times faster than an alternation. A
# prefixed literal (E'..', B'..') keeps its letter: "E?".
_STRING = re.compile(r"'[^']*(?:''[^']*)*'")
_DOLLAR_PLACEHOLDER = re.compile(r"\$\d+")
_PERCENT_PLACEHOLDER = re.compile(r"%(?:\(\w+\))?s")
_NAMED_PLACEHOLDER = re.compile(r"(?<![\w:]):\w+")  # :name; '::type' casts are kept
# Starts with the digit class (the engine then scans for digits in C) and looks back
# one character to leave digits inside identifiers (users_1, t2) alone. SQL numbers are
# ASCII digits: "[0-9]" is a third cheaper to scan for than Unicode "\d". Optional parts
# are "(?:X|)" rather than "(?:X)?": the same match without the engine's repeat bookkeeping.
_NUMBER = re.compile(r"[0-9](?<![\w$][0-9])[0-9]*(?:\.[0-9]+|)(?:[eE][-+]?[0-9]+|)\b")
# An IN-list element as written: a literal or a placeholder of any paramstyle, maybe
# with a cast (psycopg renders ``%(id_1)s::INTEGER``). Lists are collapsed before the
# literal passes, so a list of a hundred numbers costs one match, not a hundred.
_ELEMENT = (
    r"(?:'[^']*(?:''[^']*)*'|-?[0-9]+(?:\.[0-9]+|)(?:[eE][-+]?[0-9]+|)|\$\d+|%\(\w+\)s|%s|:\w+|\?)"
    r"(?:::\w+(?:\[\]|)|)"
)
# The list itself, from its "(" (a literal the engine can scan for) when "IN" precedes it;
# the group holds a ", element" when there are several, which makes the list a batch.
_IN_LIST = re.compile(
    rf"\((?:(?<=\b[Ii][Nn] \()|(?<=\b[Ii][Nn]\())\s*{_ELEMENT}(\s*,\s*{_ELEMENT})*\s*\)"
)
_MULTI_ARRAY_LITERAL = re.compile(r"\bARRAY\s*\[[^\],]*,[^\]]*\]", re.IGNORECASE)
_ARRAY_LITERAL = re.compile(r"\bARRAY\s*\[[^\]]*\]", re.IGNORECASE)
_MULTI_VALUES = re.compile(r"\bVALUES\s*(\([^()]*\))(?:\s*,\s*\([^()]*\))+", re.IGNORECASE)


class StatementShape(NamedTuple):
    """What the listeners need to know about one statement text.

    ``batched`` is true for a statement that carries a list of several values (an
    ``IN`` list, a multi-row ``VALUES``): one such query is the cure for N+1, never
    an instance of it.
    """

    normalized: str
    operation: str
    batched: bool


def normalize_statement(statement: str) -> str:
    """The statement with comments removed, literals and parameters as ``?``, lists collapsed.

    ``WHERE id = 1`` and ``WHERE id = 2``, ``WHERE id = %(id_1)s`` and ``$1``, and
    ``IN (1, 2)`` and ``IN (3, 4, 5)`` all normalise to the same text.
    """
    return statement_shape(statement).normalized


@functools.lru_cache(maxsize=8192)
def statement_shape(statement: str) -> StatementShape:
    """Normalised text, operation and batch flag of ``statement``; cached (bounded LRU).

    SQLAlchemy reuses the same compiled string for every execution of a statement, so
    the hot path is one dictionary hit; the regular expressions run once per text.
    """
    normalized, batched = _normalize(statement)
    return StatementShape(normalized, statement_operation(normalized), batched)


def normalize_uncached(statement: str) -> str:
    """``normalize_statement`` without the cache (the log scanner caches raw bytes itself)."""
    return _normalize(statement)[0]


def _normalize(statement: str) -> tuple[str, bool]:
    text = statement
    if "/*" in text:
        text = _BLOCK_COMMENT.sub(" ", text)
    batched = False
    if "N (" in text or "n (" in text or "N(" in text or "n(" in text:
        parts = _IN_LIST.split(text)  # [before, group, between, group, ..., after]
        if len(parts) > 1:
            batched = any(more is not None for more in parts[1::2])
            text = "(...)".join(parts[0::2])
    if "'" in text:
        text = _STRING.sub("?", text)
    if "--" in text:  # after strings, so that '--' inside a literal is not a comment
        text = _LINE_COMMENT.sub(" ", text)
    if "$" in text:
        text = _DOLLAR_PLACEHOLDER.sub("?", text)
    if "%" in text:
        text = _PERCENT_PLACEHOLDER.sub("?", text)
    if ":" in text:
        text = _NAMED_PLACEHOLDER.sub("?", text)
    text = _NUMBER.sub("?", text)
    if "?" in text and ("ALUES" in text or "alues" in text):
        text, collapsed = _MULTI_VALUES.subn(r"VALUES \1, ...", text)
        batched = batched or collapsed > 0
    if "[" in text:
        text, collapsed = _MULTI_ARRAY_LITERAL.subn("ARRAY[...]", text)
        batched = batched or collapsed > 0
        text = _ARRAY_LITERAL.sub("ARRAY[...]", text)
    # Every whitespace character but the plain space is unprintable: a text that passes
    # these checks is already collapsed, and split/join would be the dearest step.
    if (
        "\n" in text
        or "  " in text
        or not text.isprintable()
        or text[:1] == " "
        or text[-1:] == " "
    ):
        text = " ".join(text.split())
    normalized = text
    if len(normalized) > MAX_NORMALIZED_CHARS:
        normalized = normalized[:MAX_NORMALIZED_CHARS] + "..."
    return normalized, batched


def statement_operation(statement: str) -> str:
    """The first keyword of ``statement`` (``SELECT``...), or ``OTHER``: a bounded label value."""
    head = statement.lstrip(" \t\r\n(")[:12].split(None, 1)
    if not head:
        return OTHER_OPERATION
    keyword = head[0].upper()
    return keyword if keyword in OPERATIONS else OTHER_OPERATION


def sqlcomment(fields: Mapping[str, str | None], *, double_percent: bool) -> str:
    """A sqlcommenter comment (``/*key='value',...*/``) for ``fields``, per the spec.

    Keys and values are URL-encoded with no safe characters, so a value cannot
    contain a quote, ``*/`` or a newline and cannot leave the comment; then ``'`` is
    escaped and values are quoted, pairs sorted by key. DB-API drivers that use
    ``%`` placeholders need the encoder's ``%`` doubled (``double_percent``).
    """
    pairs = [
        f"{_encode(key)}='{_encode(value)}'"
        for key, value in sorted(fields.items())
        if value is not None
    ]
    if not pairs:
        return ""
    comment = "/*" + ",".join(pairs) + "*/"
    return comment.replace("%", "%%") if double_percent else comment


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]*")


@functools.lru_cache(maxsize=4096)
def _encode(value: str) -> str:
    """URL-encode (no safe characters) then escape quotes; cached, as routes and ids repeat.

    Values made of unreserved characters only (hex ids, traceparents) skip urllib,
    whose per-call cost dominated the comment.
    """
    if _URL_SAFE.fullmatch(value):
        return value
    return quote(value, safe="").replace("'", "\\'")


_TRAILING_COMMENT = re.compile(r"/\*([^*]*(?:\*(?!/)[^*]*)*)\*/\s*;?\s*$")


def parse_sqlcomment(statement: str) -> dict[str, str]:
    """The key/value pairs of a trailing sqlcommenter comment, decoded; {} when there is none."""
    match = _TRAILING_COMMENT.search(statement)
    if match is None:
        return {}
    fields: dict[str, str] = {}
    for pair in match.group(1).split(","):
        key, sep, raw = pair.strip().partition("=")
        if not sep or len(raw) < 2 or raw[0] != "'" or raw[-1] != "'":
            continue
        value = raw[1:-1].replace("\\'", "'")
        fields[unquote(key)] = unquote(value)
    return fields


def has_comment(statement: str) -> bool:
    """Whether ``statement`` already carries a comment (sqlcommenter then leaves it alone)."""
    return "/*" in statement or "--" in statement
