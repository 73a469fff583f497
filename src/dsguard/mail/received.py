"""Parse ``Received:`` trace fields (RFC 5321 section 4.4) as MTAs actually write them.

Forms handled: Postfix/Sendmail ``from HELO (rdns [IP])``, Exchange/EOP ``from HELO (IP)``,
Exim ``from rdns ([IP] helo=HELO)``, Gmail ``from HELO (rdns. [IP])``, and
``(Authenticated sender: user)`` / ``with ESMTPSA`` for SMTP AUTH (RFC 3848).

SECURITY: only the receiver-recorded parts are taken as facts by callers (the IP in the
comment, never the HELO token, is the client IP). Lines are attacker-controlled below the
trusted hop; the tokenizer is linear and comment nesting is capped.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from dsguard.mail.ipaddr import canonical_ip
from dsguard.mail.memo import adaptive_memo
from dsguard.model import quick_init

_MAX_CHARS = 4096
_MAX_DEPTH = 8
_KEYWORDS = frozenset({"from", "by", "via", "with", "id", "for"})
# Every spelling whose lower() is a keyword: one set probe per word instead of lower-casing
# each word. Only ASCII letters lower-case to the keywords' letters (no other code point
# does), so these are all of them.
_KEYWORD_SPELLINGS = frozenset(
    "".join(spelling)
    for keyword in _KEYWORDS
    for spelling in itertools.product(*({c, c.upper()} for c in keyword))
)
_BRACKET_IP = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]{2,45})\]")
_BARE_IP = re.compile(
    r"(?<![\w.:])((?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![\w.:])"
)
_HELO_IN_COMMENT = re.compile(r"\bhelo=([^\s)\]]+)", re.IGNORECASE)
_AUTH_SENDER = re.compile(r"Authenticated sender:\s*([^\s)]+)", re.IGNORECASE)
_FOR_ADDR = re.compile(r"<?([^<>\s;]+@[^<>\s;]+)>?")


@quick_init
@dataclass(frozen=True, slots=True)
class ReceivedHop:
    index: int  # position among the message's header fields (0 = topmost)
    raw: str
    from_name: str | None  # the name the client gave (HELO/EHLO), as recorded
    from_rdns: str | None  # reverse DNS the receiver recorded, when it shows one
    from_ip: str | None  # the connecting IP the receiver recorded
    by: str | None  # the receiving host
    with_proto: str | None
    for_addr: str | None
    auth_user: str | None  # SMTP AUTH identity if the receiver recorded one
    authenticated: bool  # RFC 3848 ESMTPA/ESMTPSA/LMTPA or an "Authenticated sender" comment
    tls: bool  # ESMTPS/ESMTPSA or a TLS comment
    date: str | None


def _parse_valid_ip(text: str) -> str | None:
    return canonical_ip(text.strip())


# Memoised: the same relay and client addresses recur across a mailbox, and ipaddress
# parsing costs microseconds; adaptive, since on mail from new senders they do not (mail.memo).
_valid_ip = adaptive_memo(_parse_valid_ip, 4096)


_TOKEN = re.compile(r"[()]|[^\s()]+")
# Text whose parentheses are all balanced pairs without nesting (what _clauses_flat takes).
_FLAT_COMMENTS = re.compile(r"[^()]*+(?:\([^()]*+\)[^()]*+)*+")
_TLS_COMMENT = re.compile(r"\b(?:TLS1|TLSv1|version=TLS)")
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_HEXTETS = re.compile(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}")


def _cut_date(value: str) -> tuple[str, str | None]:
    """The line (capped) without its date, and the date."""
    text = value[:_MAX_CHARS]
    date = None
    # The date follows the last ";" outside comments: one inside a comment has more ")" than
    # "(" after it.
    semi = text.rfind(";")
    if semi != -1 and text.count(")", semi) <= text.count("(", semi):
        date = text[semi + 1 :].strip() or None
        text = text[:semi]
    return text, date


def _tokenize(value: str) -> tuple[list[tuple[str, list[str]]], str | None]:
    """Split into top-level words, each with the comments that follow it; and the date."""
    text, date = _cut_date(value)
    return _words(text), date


def _words(text: str) -> list[tuple[str, list[str]]]:
    """_tokenize's words, for a line _cut_date has already cut."""
    words: list[tuple[str, list[str]]] = []
    depth = 0
    comment: list[str] = []
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok == "(":
            if depth:
                comment.append("(")
            depth = min(depth + 1, _MAX_DEPTH)
        elif tok == ")":
            if depth == 0:
                continue
            depth -= 1
            if depth == 0:
                if not words:
                    words.append(("", []))
                words[-1][1].append(" ".join(comment).replace("( ", "(").replace(" )", ")"))
                comment = []
            else:
                comment.append(")")
        elif depth:
            comment.append(tok)
        else:
            words.append((tok, []))
    if comment and words:
        words[-1][1].append(" ".join(comment))
    return words


def _clauses_of_words(words: list[tuple[str, list[str]]]) -> dict[str, tuple[str, list[str]]]:
    """Keyword -> (first word after it, comments in the clause); the general path."""
    clauses: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for word, comments in words:
        low = word.lower()
        if low in _KEYWORDS and low not in clauses:
            current = low
            clauses[current] = ("", list(comments))
            continue
        if current is None:
            continue
        token, existing = clauses[current]
        clauses[current] = (token if token else word, existing + comments)
    return clauses


def _clauses_flat(text: str) -> dict[str, tuple[str, list[str]]] | None:
    """``_clauses_of_words(_tokenize(...))`` for a line whose comments are balanced and not
    nested (almost every real one; None for any other), without the tokenizer's step per
    token: the text between comments is split into words with ``str.split`` and each comment
    becomes its inner words joined by one space, as the tokenizer does; a comment goes to the
    clause of the word before it."""
    clauses: dict[str, tuple[str, list[str]]] = {}
    current: list[str] | None = None  # comments of the current clause
    token = ""
    key = ""
    pieces = text.split("(")
    # Flat means (what _FLAT_COMMENTS matches): pieces[0] is top-level text without ")", and
    # every later piece is "comment)top-level text" with exactly that one ")".
    if ")" in pieces[0]:
        return None
    for n, piece in enumerate(pieces):
        if n:
            comment, closed, piece = piece.partition(")")
            if not closed or ")" in piece:
                return None
            if current is not None:
                current.append(" ".join(comment.split()))
        for word in piece.split():
            if word in _KEYWORD_SPELLINGS:
                low = word.lower()
                if low not in clauses:
                    if current is not None:
                        clauses[key] = (token, current)
                    key, token, current = low, "", []
                    clauses[key] = ("", current)  # keeps the keyword order
                    continue
            if current is not None and not token:
                token = word
    if current is not None:
        clauses[key] = (token, current)
    return clauses


def parse_received(value: str, index: int) -> ReceivedHop:
    text, date = _cut_date(value)
    facts = _hop_facts(text) if len(text) <= _CACHED_CHARS else _parse_hop_facts(text)
    return ReceivedHop(index, value, *facts, date)


_HopFacts = tuple[
    str | None, str | None, str | None, str | None, str | None, str | None, str | None, bool, bool
]


# Memoised on the line without its date: a mailbox holds the same hops again and again (a
# tenant's frontend and mailbox servers, "with Microsoft SMTP Server ... id 15.20.x" --
# Exchange's id is its build number), and a parse costs several microseconds. Lines with
# per-message queue ids just miss, and when most do the memo stops storing (mail.memo). The
# answer is a tuple of immutable values. Only lines of ordinary length are kept (keys of at
# most 2 M characters).
_CACHED_CHARS = 1024


def _parse_hop_facts(text: str) -> _HopFacts:
    """ReceivedHop's fields from from_name to tls, for a line cut by _cut_date."""
    clauses = _clauses_flat(text)
    if clauses is None:
        clauses = _clauses_of_words(_words(text))  # _tokenize(value)[0]: text is already cut

    from_name = from_rdns = from_ip = None
    auth_user = None
    if "from" in clauses:
        token, comments = clauses["from"]
        from_name = token or None
        joined = " ".join(comments)
        # Each "x in text" below is a required character of the pattern after it, checked in
        # C first: most comments have none and the pattern search is skipped.
        m = _BRACKET_IP.search(joined) if "[" in joined else None
        if m:
            from_ip = _valid_ip(m.group(1))
            before = joined[: m.start()].strip().rstrip(".")
            if before and " " not in before and not before.lower().startswith("helo="):
                from_rdns = before.lower()
        if from_ip is None and _DOTTED_QUAD.fullmatch(joined):
            # Exchange's "(10.13.177.89)": the whole comment is the one address the general
            # search below would find.
            from_ip = _valid_ip(joined)
        elif from_ip is None and ":" in joined and _HEXTETS.fullmatch(joined):
            # Exchange's "(2603:10b6:a03:2d9::7b0d)": the whole comment is the only candidate
            # the general search below would find (its IPv6 branch, anchored).
            from_ip = _valid_ip(joined)
        elif from_ip is None:
            for candidate in _BARE_IP.findall(joined):
                from_ip = _valid_ip(candidate)
                if from_ip:
                    break
        helo = _HELO_IN_COMMENT.search(joined) if "=" in joined else None
        if helo:
            # Exim writes the reverse name first and the HELO as helo=...
            if from_name and from_rdns is None and not from_name.startswith("["):
                from_rdns = from_name.lower()
            from_name = helo.group(1)
        if from_rdns and from_rdns in ("unknown", ""):
            from_rdns = None
    with_proto = clauses["with"][0] if "with" in clauses else None
    proto = (with_proto or "").upper()
    tls = proto in {"ESMTPS", "ESMTPSA", "LMTPS", "LMTPSA"}
    # "sender:" matches only after "r" or "R" (no other character case-folds to r); IPv6
    # addresses put ":" in most comments, so testing for ":" alone rarely saved the search.
    # The comments are words of ``text`` joined by spaces, so what they contain ("r:", "TLS")
    # is in ``text`` too: most lines need neither search, nor the comments joined for it.
    auth_hint = "r:" in text or "R:" in text
    if auth_hint or (not tls and "TLS" in text):
        all_comments = " ".join([" ".join(c) for _, c in clauses.values()])
        m = (
            _AUTH_SENDER.search(all_comments)
            if auth_hint and ("r:" in all_comments or "R:" in all_comments)
            else None
        )
        if m:
            auth_user = m.group(1)
        tls = tls or bool("TLS" in all_comments and _TLS_COMMENT.search(all_comments))
    authenticated = auth_user is not None or proto in {"ESMTPA", "ESMTPSA", "LMTPA", "LMTPSA"}
    for_addr = None
    if "for" in clauses and clauses["for"][0]:
        fm = _FOR_ADDR.match(clauses["for"][0])
        if fm:
            for_addr = fm.group(1).strip(";")
    by = clauses["by"][0] if "by" in clauses and clauses["by"][0] else None
    return (
        from_name,
        from_rdns,
        from_ip,
        by.lower().rstrip(".") if by else None,
        with_proto,
        for_addr,
        auth_user,
        authenticated,
        tls,
    )


_hop_facts = adaptive_memo(_parse_hop_facts, 2048)
