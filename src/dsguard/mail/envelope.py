"""Rebuild the envelope of a received message from the receiving organisation's own stamps.

The trusted hop (the *boundary*) is the Received line the organisation's receiving MTA wrote
when the sender connected. Everything above it was written by the organisation; everything
below it by the sender (or by hosts the sender chose) and is evidence, never truth
(RFC 5321 section 4.4: each relay prepends its own trace field).

Profiles, tried in order:
1. Exchange Online: the topmost hop ``by *.mail.protection.outlook.com`` with only Exchange
   hosts above it (the tenant's inbound frontend). EOP's id-less Authentication-Results,
   Received-SPF, X-Forefront-Antispam-Report and X-MS-Exchange-Organization-* are then
   Exchange's own (its header firewall strips incoming copies).
   Mail that never left Exchange (all hops Exchange-internal) is read the same way.
2. Configured receivers (``[trust] receivers``): the topmost hop written by one of them whose
   client is not an internal relay.
3. Inferred: the topmost hop with a public client IP. Reported as inferred.

SECURITY: an Authentication-Results header is trusted only when it sits above the boundary
and carries an authserv-id of the organisation (or is EOP's id-less form in profile 1). One
below the boundary that uses the organisation's authserv-id is marked as impersonating.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from dsguard.auth.results import AuthResultsHeader, parse_authentication_results, parse_received_spf
from dsguard.config import Trust
from dsguard.mail.addresses import domain_of, parse_path
from dsguard.mail.headers import Header
from dsguard.mail.ipaddr import parse_ip
from dsguard.mail.message import ParsedMessage
from dsguard.mail.microsoft import is_exo_frontend, is_exo_internal, parse_forefront
from dsguard.mail.received import ReceivedHop, parse_received
from dsguard.model import Envelope, EnvelopeOrigin, quick_init
from dsguard.policy.domains import org_domain

MAX_HOPS = 100
_ENVELOPE_FROM_COMMENT = re.compile(r"envelope-from <([^<>]*)>")
_RECEIVER_ZONE = frozenset(
    {
        "received-spf",
        "authentication-results",
        "arc-authentication-results",
        "arc-seal",
        "arc-message-signature",
        "x-received",
        "return-path",
    }
)

# Not routable on the internet: a client here is an internal relay, not the sender.
_ALWAYS_INTERNAL = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "0.0.0.0/8",
    )
)


@quick_init
@dataclass(frozen=True, slots=True)
class ExoStamps:
    auth_as: str | None = None
    auth_source: str | None = None
    auth_mechanism: str | None = None
    directionality: str | None = None
    scl: str | None = None
    from_entity: str | None = None  # X-MS-Exchange-CrossTenant-FromEntityHeader
    forefront: dict[str, str] = field(default_factory=dict)


@quick_init
@dataclass(frozen=True, slots=True)
class HopAnalysis:
    envelope: Envelope
    profile: str  # "microsoft365", "microsoft365-internal", "configured", "inferred", "none"
    hops: tuple[ReceivedHop, ...]
    boundary: ReceivedHop | None
    trusted_results: tuple[AuthResultsHeader, ...]
    untrusted_results: tuple[AuthResultsHeader, ...]
    impersonating_results: tuple[AuthResultsHeader, ...]
    received_spf: tuple[str | None, dict[str, str]] | None
    exo: ExoStamps | None
    trusted_ids: frozenset[str]
    forged_stamps: tuple[str, ...]
    notes: tuple[str, ...]


class _Internal:
    """Is a client IP an internal relay? Built once per network list (``_internal_for``) and
    remembers its answers: the same relays recur in every message of a mailbox."""

    _MAX_KNOWN = 4096

    def __init__(self, internal_networks: tuple[str, ...]) -> None:
        self.networks = _ALWAYS_INTERNAL + tuple(
            ipaddress.ip_network(n) for n in internal_networks
        )
        self._known: dict[str, bool] = {}
        # (version, netmask, network) as ints: ``addr in network`` without its method calls.
        self._masks = tuple(
            (n.version, int(n.netmask), int(n.network_address)) for n in self.networks
        )

    def __call__(self, ip: str | None) -> bool:
        if ip is None:
            return True  # a hop with no recorded client (local pickup) is not the boundary
        known = self._known.get(ip)
        if known is None:
            known = self._check(ip)
            if len(self._known) >= self._MAX_KNOWN:
                self._known.clear()
            self._known[ip] = known
        return known

    def _check(self, ip: str) -> bool:
        try:
            addr = parse_ip(ip)
        except ValueError:
            return True
        version, value = addr.version, int(addr)
        return any(v == version and value & mask == network for v, mask, network in self._masks)


@lru_cache(maxsize=16)
def _internal_for(internal_networks: tuple[str, ...]) -> _Internal:
    return _Internal(internal_networks)


def _matches_any(host: str | None, patterns: tuple[str, ...]) -> bool:
    if not host:
        return False
    h = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(h, p.lower()) for p in patterns)


def _position(msg: ParsedMessage, first_of_its_name: Header) -> int:
    """``msg.index_of`` for the first field of its name, with ``tuple.index`` in C: a field
    equal to it has its name, so none comes before it and the first equal one is itself."""
    return msg.headers.index(first_of_its_name)


def _first_org_stamp(msg: ParsedMessage) -> Header | None:
    """The first X-MS-Exchange-Organization-* field (read only outside Exchange profiles)."""
    for h in msg.headers:
        if h.key.startswith("x-ms-exchange-organization-"):
            return h
    return None


class _LazyHops:
    """Received lines parsed top-down on demand: every walk below stops at the boundary, and
    most messages carry more trace lines below it than above."""

    def __init__(self, received: list[tuple[int, str]]) -> None:
        self._raw = received[:MAX_HOPS]
        self._parsed: list[ReceivedHop] = []

    def __len__(self) -> int:
        return len(self._raw)

    def __iter__(self) -> Iterator[ReceivedHop]:
        for k in range(len(self._raw)):
            if k == len(self._parsed):
                index, value = self._raw[k]
                self._parsed.append(parse_received(value, index))
            yield self._parsed[k]

    def parsed(self) -> tuple[ReceivedHop, ...]:
        return tuple(self._parsed)


def _exo_boundary(hops: _LazyHops) -> tuple[ReceivedHop | None, bool]:
    """(frontend hop, False) when the message entered Exchange Online through the tenant's
    inbound frontend with only Exchange hosts above it; (None, True) when every hop is inside
    Exchange (mail sent within the tenant); (None, False) otherwise."""
    for hop in hops:
        if is_exo_frontend(hop.by):
            return hop, False
        if not is_exo_internal(hop.by):
            return None, False
        if hop.from_name and not is_exo_internal(hop.from_name):
            return None, False
    return None, bool(hops)


def analyse_hops(
    msg: ParsedMessage, trust: Trust, *, country_of: Callable[[str], str | None] | None = None
) -> HopAnalysis:
    """The trusted hop and the envelope rebuilt from it. ``country_of``, when given, fills
    the envelope's country from the client IP where the receiver's stamps name none."""
    hops = _LazyHops(msg.received_fields)
    is_internal = _internal_for(tuple(trust.internal_networks))
    notes: list[str] = []

    boundary: ReceivedHop | None = None
    profile = "none"
    if trust.microsoft365 and len(hops):
        frontend, all_internal = _exo_boundary(hops)
        if frontend is not None:
            boundary, profile = frontend, "microsoft365"
        elif all_internal:
            profile = "microsoft365-internal"
    if profile == "none" and trust.receivers:
        for hop in hops:
            if not _matches_any(hop.by, trust.receivers):
                break
            if is_internal(hop.from_ip) or _matches_any(hop.from_name, trust.receivers):
                continue
            boundary, profile = hop, "configured"
            break
        if boundary is None:
            notes.append(
                "none of the configured [trust] receivers wrote a Received line; hop inferred"
            )
    if profile == "none":
        for hop in hops:
            if not is_internal(hop.from_ip):
                boundary, profile = hop, "inferred"
                break

    # Which authserv-ids are the organisation's.
    trusted_ids = {a.lower() for a in trust.authserv_ids}
    if boundary is not None and profile != "microsoft365":
        for hop in hops:
            if hop.index > boundary.index:
                break
            if hop.by:
                trusted_ids.add(hop.by)
    boundary_index = boundary.index if boundary is not None else -1
    trusted: list[AuthResultsHeader] = []
    untrusted: list[AuthResultsHeader] = []
    impersonating: list[AuthResultsHeader] = []

    def is_ours(ar: AuthResultsHeader) -> bool:
        if ar.authserv_id is None:
            return profile == "microsoft365"
        aid = ar.authserv_id
        if aid in trusted_ids or _matches_any(aid, trust.receivers):
            return True
        # "contoso.com" as authserv-id for a receiver named mx1.contoso.com.
        return (
            profile == "inferred"
            and boundary is not None
            and bool(boundary.by)
            and (aid == org_domain(boundary.by or ""))
        )

    # Stamps a receiver writes directly below its own Received line (Gmail does; RFC 8601
    # section 5 has it delete incoming copies that use its authserv-id, so the topmost one in
    # this zone is its own when none sits above the boundary).
    zone_end = boundary_index
    if boundary is not None and profile != "microsoft365":
        zone_end = boundary_index + 1
        while zone_end < len(msg.headers) and msg.headers[zone_end].key in _RECEIVER_ZONE:
            zone_end += 1
    below_ok = True
    headers = msg.headers
    for i in msg.auth_results_positions:
        ar = parse_authentication_results(headers[i].value, i)
        if (i < boundary_index and is_ours(ar)) or (
            below_ok and boundary_index < i < zone_end and is_ours(ar)
        ):
            trusted.append(ar)
            below_ok = False
        else:
            untrusted.append(ar)
            if (
                i > boundary_index
                and ar.authserv_id is not None
                and (ar.authserv_id in trusted_ids or _matches_any(ar.authserv_id, trust.receivers))
            ):
                impersonating.append(ar)

    received_spf = None
    for i in msg.received_spf_positions:
        if i < boundary_index or boundary_index < i < zone_end:
            received_spf = parse_received_spf(headers[i].value)
            break

    exo, forged = _exo_stamps(msg, profile, boundary)
    envelope = _build_envelope(msg, profile, boundary, trusted, received_spf, exo, country_of)
    return HopAnalysis(
        envelope=envelope,
        profile=profile,
        hops=hops.parsed(),
        boundary=boundary,
        trusted_results=tuple(trusted),
        untrusted_results=tuple(untrusted),
        impersonating_results=tuple(impersonating),
        received_spf=received_spf,
        exo=exo,
        trusted_ids=frozenset(trusted_ids),
        forged_stamps=tuple(forged),
        notes=tuple(notes),
    )


def _exo_stamps(
    msg: ParsedMessage, profile: str, boundary: ReceivedHop | None
) -> tuple[ExoStamps | None, list[str]]:
    xfar_headers = msg.get_all("x-forefront-antispam-report")
    if profile not in ("microsoft365", "microsoft365-internal"):
        forged = []
        first_org = _first_org_stamp(msg)
        if first_org is not None:
            forged.append(f"{first_org.name}: {first_org.value[:80]}")
        return None, forged
    forged = []

    def one(key: str) -> str | None:
        found = msg.get_all(key)
        if len(found) < 2:  # the usual case: one stamp or none, nothing can conflict
            return found[0].value.strip() if found else None
        values = [h.value.strip() for h in found]
        if len(set(v.lower() for v in values)) > 1:
            forged.append(f"conflicting {key} values: {', '.join(values[:3])}")
            # The conservative reading: anonymous beats any claim of being internal.
            for v in values:
                if v.lower() == "anonymous":
                    return v
        return values[0]

    forefront: dict[str, str] = {}
    if xfar_headers:
        parsed = [parse_forefront(h.value) for h in xfar_headers]
        cip = boundary.from_ip if boundary else None
        matching = [p for p in parsed if cip and p.get("CIP") == cip]
        inbound = [p for p in (matching or parsed) if p.get("DIR", "").upper() == "INB"]
        chosen = (inbound or matching or parsed)[-1]  # Exchange appends its stamps
        forefront = chosen
        if cip and chosen.get("CIP") and chosen.get("CIP") != cip:
            forged.append(
                f"X-Forefront-Antispam-Report CIP {chosen.get('CIP')} differs from the connecting IP {cip}"
            )
        if len(matching) > 1 and len({tuple(sorted(p.items())) for p in matching}) > 1:
            forged.append("several X-Forefront-Antispam-Report stamps for the same connection")
    stamps = ExoStamps(
        auth_as=one("x-ms-exchange-organization-authas"),
        auth_source=one("x-ms-exchange-organization-authsource"),
        auth_mechanism=one("x-ms-exchange-organization-authmechanism"),
        directionality=one("x-ms-exchange-organization-messagedirectionality"),
        scl=one("x-ms-exchange-organization-scl") or forefront.get("SCL"),
        from_entity=one("x-ms-exchange-crosstenant-fromentityheader"),
        forefront=forefront,
    )
    return stamps, forged


def _build_envelope(
    msg: ParsedMessage,
    profile: str,
    boundary: ReceivedHop | None,
    trusted: list[AuthResultsHeader],
    received_spf: tuple[str | None, dict[str, str]] | None,
    exo: ExoStamps | None,
    country_of: Callable[[str], str | None] | None,
) -> Envelope:
    evidence: list[str] = []
    if profile == "none" or (boundary is None and profile != "microsoft365-internal"):
        return Envelope(
            origin=EnvelopeOrigin.NONE,
            rcpt_to=msg.recipients,
            evidence=("no receiving hop found; recipients from To/Cc",),
        )
    origin = EnvelopeOrigin.INFERRED if profile == "inferred" else EnvelopeOrigin.HEADERS
    client_ip = helo = rdns = receiver = auth_user = None
    if boundary is not None:
        client_ip, helo, rdns, receiver = (
            boundary.from_ip,
            boundary.from_name,
            boundary.from_rdns,
            boundary.by,
        )
        auth_user = boundary.auth_user if boundary.authenticated else None
        if boundary.authenticated and auth_user is None:
            auth_user = "(authenticated)"
        evidence.append(f"Received: {boundary.raw[:200]}")
    if exo and exo.forefront.get("H") and not helo:
        helo = exo.forefront["H"]

    # P1: the receiver's own statement of MAIL FROM.
    mail_from: str | None = None
    mailfrom_prop = None
    for ar in trusted:
        for res in ar.results:
            if res.method == "spf" and res.prop("smtp.mailfrom"):
                mailfrom_prop = res.prop("smtp.mailfrom")
                break
        if mailfrom_prop:
            break
    return_paths = msg.get_all("return-path")
    if profile in ("microsoft365", "microsoft365-internal"):
        rp = return_paths[-1].value if return_paths else None  # Exchange appends at delivery
    else:
        rp = (
            return_paths[0].value
            if return_paths
            and (boundary is None or _position(msg, return_paths[0]) < boundary.index)
            else None
        )
    rp_addr = parse_path(rp) if rp is not None else None
    if rp_addr == "":
        mail_from = ""
        evidence.append("Return-Path: <>")
    elif mailfrom_prop:
        if "@" in mailfrom_prop:
            mail_from = mailfrom_prop
        elif rp_addr and domain_of(rp_addr) == mailfrom_prop.lower():
            mail_from = rp_addr
        else:
            mail_from = "@" + mailfrom_prop.lower()  # domain known, local part not
        evidence.append(f"smtp.mailfrom={mailfrom_prop}")
    elif rp_addr:
        mail_from = rp_addr
        evidence.append(f"Return-Path: {rp}")
    elif received_spf is not None:
        env = received_spf[1].get("envelope-from") or received_spf[1].get("smtp.mailfrom")
        if env:
            mail_from = parse_path(env) or env
            evidence.append(f"Received-SPF envelope-from={env}")
    if mail_from is None and boundary is not None:
        m = _ENVELOPE_FROM_COMMENT.search(boundary.raw)
        if m:
            mail_from = m.group(1)

    rcpts: list[str] = []
    if boundary is not None and boundary.for_addr:
        rcpts.append(boundary.for_addr)
    for key in ("x-original-to", "delivered-to"):
        for h in msg.get_all(key)[:1]:
            if boundary is None or _position(msg, h) < boundary.index:
                addr = parse_path(h.value)
                if addr:
                    rcpts.append(addr)
    if not rcpts:
        rcpts.extend(msg.recipients)
    country = (exo.forefront.get("CTRY") or None) if exo else None
    if country is None and client_ip and country_of is not None:
        country = country_of(client_ip)
    return Envelope(
        origin=origin,
        client_ip=client_ip,
        client_hostname=rdns,
        helo=helo,
        mail_from=mail_from,
        rcpt_to=tuple(dict.fromkeys(rcpts)),
        auth_user=auth_user,
        country=country,
        receiver=receiver,
        stamped_auth_as=exo.auth_as if exo else None,
        stamped_connector=None,
        evidence=tuple(evidence),
    )
