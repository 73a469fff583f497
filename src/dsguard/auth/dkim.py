"""DKIM verification (RFC 6376, ed25519-sha256 of RFC 8463) with dkimpy, keys through our resolver.

One :class:`DkimResult` per ``DKIM-Signature`` field, topmost first, with the RFC 8601 result
names: ``pass``; ``fail`` (body hash or signature does not match); ``permerror`` (malformed
signature, no key record, unusable key); ``temperror`` (the key lookup failed for now);
``neutral`` (not verified because of our own limits, e.g. message size).

dkimpy needs PyNaCl for ed25519. PyNaCl is not a dependency of dsguard, but ``cryptography``
(already installed for dkimpy's other users and the TLS stack) implements Ed25519, so when
PyNaCl is absent :func:`_install_ed25519` gives dkimpy the three small pieces of the
``nacl`` API it calls (``signing.VerifyKey``/``SigningKey`` with Base64 keys,
``exceptions.BadSignatureError``). It only fills a missing name; an installed PyNaCl is used
as is. The RFC 8463 example signature (tests/corpus/test_dkim_vectors.py) checks it.

SECURITY: the message, its signatures and the key records are hostile. Limits: at most
``max_signatures`` signatures are verified (each costs a DNS lookup and an RSA operation);
messages over ``MAX_MESSAGE_BYTES`` are not handed to dkimpy at all (``neutral``); keys under
1024 bits are refused (RFC 8301 section 3.2); each key lookup is bounded by the resolver's
lifetime and cached for the other signatures of the same message. Nothing raises out of
:func:`verify_dkim`; dkimpy's own exceptions and bugs become ``permerror`` with a reason.
"""

from __future__ import annotations

import base64
import logging
import re
import types
from dataclasses import dataclass
from typing import Any

import dkim as dkimpy  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dsguard.auth.resolver import DnsPermError, DnsTempError, Resolver

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
MAX_SIGNATURES = 5
MIN_RSA_BITS = 1024  # RFC 8301 section 3.2: verifiers MUST NOT consider shorter keys valid
MAX_REASON = 200

RESULTS = frozenset({"pass", "fail", "neutral", "temperror", "permerror", "none"})

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_BYTES_REPR = re.compile(r"""b'([^']*)'""")

# dkimpy logs attacker-triggered problems at ERROR; the reason travels in the result instead.
_log = logging.getLogger(__name__ + ".dkimpy")
if _log.level == logging.NOTSET:
    _log.setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class DkimResult:
    result: str  # pass, fail, neutral, temperror, permerror, none
    domain: str  # d= (lower case; "" when the signature has none)
    selector: str  # s=
    reason: str  # why it is not a pass (empty for pass)


# -- ed25519 without PyNaCl ------------------------------------------------------------


class _BadSignatureError(Exception):
    pass


class _Signed:
    def __init__(self, signature: bytes) -> None:
        self.signature = signature


def _b64(data: bytes) -> bytes:
    # RFC 6376 section 3.6.1 allows folding whitespace inside p=; anything else must be base64.
    return base64.b64decode(re.sub(rb"\s+", b"", data), validate=True)


class _VerifyKey:
    def __init__(self, key: bytes, encoder: object = None) -> None:
        # ValueError (wrong length, bad base64) is what dkimpy catches as a key format error.
        self._key = Ed25519PublicKey.from_public_bytes(_b64(key))

    def verify(self, smessage: bytes, signature: bytes) -> bytes:
        try:
            self._key.verify(signature, smessage)
        except InvalidSignature as exc:
            raise _BadSignatureError("signature does not verify") from exc
        return smessage


class _SigningKey:
    def __init__(self, seed: bytes, encoder: object = None) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(_b64(seed))

    def sign(self, message: bytes) -> _Signed:
        return _Signed(self._key.sign(message))


def _install_ed25519() -> None:
    if hasattr(dkimpy, "nacl"):
        return  # PyNaCl is installed: dkimpy uses it
    dkimpy.nacl = types.SimpleNamespace(
        signing=types.SimpleNamespace(VerifyKey=_VerifyKey, SigningKey=_SigningKey),
        encoding=types.SimpleNamespace(Base64Encoder=object()),
        exceptions=types.SimpleNamespace(
            BadSignatureError=_BadSignatureError, ValueError=ValueError
        ),
    )


_install_ed25519()


# -- helpers ---------------------------------------------------------------------------


def _reason(text: str) -> str:
    return _UNPRINTABLE.sub("?", text)[:MAX_REASON]


def _message(exc: Exception) -> str:
    """dkimpy's exception text without bytes reprs: ``missing b'b'=`` becomes ``missing b=``."""
    return _BYTES_REPR.sub(r"\1", str(exc))


def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return _UNPRINTABLE.sub("?", value.strip())[:253]


def _tags(value: bytes) -> dict[bytes, bytes]:
    """The tag list of a DKIM-Signature, tolerantly (for d= and s= even when it is broken)."""
    tags: dict[bytes, bytes] = {}
    for part in re.sub(rb"\s+", b"", value).split(b";"):
        name, sep, val = part.partition(b"=")
        if sep and name and name not in tags:
            tags[name] = val
    return tags


def _parse(message: bytes) -> tuple[list[list[bytes]], bytes] | None:
    """What ``dkimpy.rfc822_parse(message)`` returns (header fields, body with CRLF line
    ends), for less: dkimpy splits the whole message into lines and joins the body back; here
    only the header block goes through dkimpy's parser and the body is taken as it is (or with
    bare LFs made CRLF, which is what its split and join amount to). None when the message
    opens with an empty line (no header at all), left to dkimpy itself. Raises what dkimpy's
    parser raises for a malformed header."""
    if message.startswith((b"\n", b"\r\n")):
        return None
    end = _HEADER_END.search(message)
    # Without an empty line, every line is a header line and the body is empty.
    head, body = (message[: end.start()], message[end.end() :]) if end else (message, b"")
    headers, _ = dkimpy.rfc822_parse(head + b"\r\n\r\n")
    if body.count(b"\n") != body.count(b"\r\n"):
        body = _LINE_END.sub(b"\r\n", body)
    return headers, body


def _signature_fields(message: bytes) -> list[bytes] | None:
    """Values of the DKIM-Signature fields, topmost first; None if the header is unparsable."""
    end = _HEADER_END.search(message)
    header = message[: end.start()] if end else message
    try:
        headers, _body = dkimpy.rfc822_parse(header + b"\r\n\r\n")
    except Exception:
        return None
    return [bytes(v) for n, v in headers if bytes(n).lower() == b"dkim-signature"]


class _KeyLookup:
    """dkimpy's ``dnsfunc``: TXT at ``<s>._domainkey.<d>.`` through the resolver, cached,
    remembering what happened so a False from dkimpy can be classified."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.outcomes: dict[str, tuple[str, str]] = {}  # name -> (kind, record or message)

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        qname = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        qname = qname.rstrip(".").lower()
        if qname not in self.outcomes:
            self.outcomes[qname] = self._fetch(qname)
        kind, data = self.outcomes[qname]
        if kind == "temp":
            raise DnsTempError(data)
        return data.encode("utf-8", "surrogateescape") if kind == "found" else None

    def _fetch(self, qname: str) -> tuple[str, str]:
        try:
            records = self.resolver.txt(qname)
        except DnsTempError as exc:
            return "temp", str(exc)
        except DnsPermError as exc:
            return "invalid", str(exc)
        if not records:
            return "missing", ""
        # RFC 6376 section 3.6.2.2: several records at one name give undefined results;
        # prefer one that looks like a key.
        keyish = [r for r in records if "p=" in r.replace(" ", "")]
        return "found", (keyish or records)[0]


def _classify_false(lookup: _KeyLookup, domain: str, selector: str) -> tuple[str, str]:
    """dkimpy returned False: a key problem (permerror) or a signature mismatch (fail)."""
    name = f"{selector}._domainkey.{domain}".lower()
    kind, data = lookup.outcomes.get(name, ("unknown", ""))
    if kind == "missing":
        return "permerror", f"no key record at {name}"
    if kind == "invalid":
        return "permerror", f"cannot look up the key: {data}"
    if kind == "found":
        key_tags = _tags(data.encode("utf-8", "surrogateescape"))
        if key_tags.get(b"p") == b"":  # RFC 6376 section 3.6.1: an empty p= is a revoked key
            return "permerror", f"key revoked at {name}"
        try:
            dkimpy.evaluate_pk(name.encode(), data.encode("utf-8", "surrogateescape"))
        except Exception as exc:
            return "permerror", f"unusable key record at {name}: {_message(exc)}"
        return "fail", "signature did not verify"
    return "fail", "signature did not verify"


def _verify_one(
    verifier: Any, index: int, keys: _KeyLookup, domain: str, selector: str
) -> tuple[str, str]:
    try:
        ok = verifier.verify(idx=index, dnsfunc=keys)
    except DnsTempError as exc:
        return "temperror", f"key lookup failed: {exc}"
    except dkimpy.ValidationError as exc:
        text = _message(exc)
        if text.startswith("body hash mismatch"):
            return "fail", "body hash mismatch"
        return "permerror", text
    except dkimpy.DKIMException as exc:  # MessageFormatError, KeyFormatError (key too small) ...
        return "permerror", f"{type(exc).__name__}: {_message(exc)}"
    except Exception as exc:  # a dkimpy bug on hostile input must not reach the gateway
        return "permerror", f"verifier error: {type(exc).__name__}"
    if ok:
        return "pass", ""
    return _classify_false(keys, domain, selector)


def verify_dkim(
    message: bytes, resolver: Resolver, *, max_signatures: int = MAX_SIGNATURES
) -> list[DkimResult]:
    """Verify up to ``max_signatures`` DKIM-Signature fields; ``[]`` when unsigned. Never raises.

    The message is parsed once (:func:`_parse`) and the result handed to dkimpy, which would
    otherwise parse it again."""
    try:
        parsed = _parse(message)
    except Exception:
        return []  # no parsable header, so no signature we could name
    if parsed is None:
        fields = _signature_fields(message)
        if fields is None:
            return []
    else:
        fields = [bytes(v) for n, v in parsed[0] if bytes(n).lower() == b"dkim-signature"]
    fields = fields[: max(0, max_signatures)]
    if not fields:
        return []
    names = [_tags(field) for field in fields]
    ids = [(_text(t.get(b"d", b"")).lower(), _text(t.get(b"s", b"")).lower()) for t in names]
    if len(message) > MAX_MESSAGE_BYTES:
        why = f"message over {MAX_MESSAGE_BYTES} bytes: not verified"
        return [DkimResult("neutral", d, s, why) for d, s in ids]
    try:
        if parsed is None:
            verifier = dkimpy.DKIM(message, logger=_log, minkey=MIN_RSA_BITS)
        else:
            # DKIM(None) parses nothing; set_message would have set these two from the parse.
            verifier = dkimpy.DKIM(None, logger=_log, minkey=MIN_RSA_BITS)
            verifier.headers, verifier.body = parsed
    except Exception as exc:
        why = _reason(f"message could not be parsed: {type(exc).__name__}")
        return [DkimResult("permerror", d, s, why) for d, s in ids]
    keys = _KeyLookup(resolver)
    out: list[DkimResult] = []
    for index, (domain, selector) in enumerate(ids):
        result, why = _verify_one(verifier, index, keys, domain, selector)
        out.append(DkimResult(result, domain, selector, _reason(why)))
    return out
