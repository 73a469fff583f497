"""The Direct Send probe: do what the attacker does, harmlessly, and report what the server said.

The campaign's whole attack is one anonymous SMTP session to the organisation's MX endpoint
(``Send-MailMessage -SmtpServer contoso-com.mail.protection.outlook.com -From joe@contoso.com
-To joe@contoso.com``): no AUTH, TLS only if offered, an envelope sender in an accepted domain.
:func:`run_probe` does the same with a plainly labelled test message (subject
``PROBE_SUBJECT``, header ``X-Dsguard-Probe: 1``, a body saying what it is and who sent it, a
unique Message-ID) and classifies the outcome:

- ``protected``: refused with ``5.7.68`` (RejectDirectSend, Microsoft's
  ``550 5.7.68 TenantInboundAttribution; Direct Send not allowed ...``), or with ``5.7.51``
  (a Partner inbound connector restricted to the organisation's gateway: the answer to the
  "Ghost-Sender" bypass of a tenant behind a third-party MX);
- ``exposed``: the message was accepted (250 after the data);
- ``refused``: refused for another reason, which says nothing about Direct Send (unknown
  recipient, relay denied because the domain is not hosted there, the probing IP blocked, a
  temporary 4xx) - named so the user can fix the probe rather than believe they are safe;
- ``error``: no SMTP conversation could be completed.

The server is the one the user points at: ``--server``, the ``--to`` domain's MX (looked up
through dsguard's :class:`~dsguard.auth.resolver.Resolver`), or, on request, the domain's
Exchange Online tenant endpoint. Nothing else is contacted; ``--dry-run`` contacts nothing at
all, not even DNS.

SECURITY: the server's replies are hostile input. A reply line is capped at ``MAX_LINE``
octets and a reply at ``MAX_REPLY_LINES`` lines, every socket operation is bounded by the step
timeout and the whole session by a deadline, the transcript keeps printable text only. The
probe never authenticates, so the transcript holds no secret. The addresses and the operator
text that go into the message are validated (no CR/LF, printable ASCII) so they cannot add
headers or commands.
"""

from __future__ import annotations

import contextlib
import email.policy
import email.utils
import getpass
import ipaddress
import re
import secrets
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from dsguard.auth.resolver import DnsPermError, DnsTempError, Resolver
from dsguard.errors import DsguardError
from dsguard.m365.posture import normalise_domain, tenant_endpoint

SCHEMA = "dsguard.probe/1"
PROBE_SUBJECT = "dsguard Direct Send probe — safe to delete"
PROBE_HEADER = "X-Dsguard-Probe"
RDS_CODE = "5.7.68"  # RejectDirectSend (Exchange Team blog 4408790)
RESTRICTED_CONNECTOR_CODE = "5.7.51"  # Partner connector with RestrictDomainsTo* set
DEFAULT_PORT = 25
DEFAULT_TIMEOUT = 30.0
MAX_LINE = 4096  # RFC 5321 section 4.5.3.1.5 says 512; real servers send longer text
MAX_REPLY_LINES = 100
MAX_ADDRESSES = 10
MAX_ADDRESS = 254  # RFC 5321 section 4.5.3.1.3 (a path of 256 octets with the brackets)

VERDICTS = ("protected", "exposed", "refused", "error")
EXIT_STATUS = {"protected": 0, "exposed": 1, "refused": 2, "error": 2}

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*$")
_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class ProbeError(DsguardError):
    """The probe cannot run (bad option, DNS failure, no server reachable); one line."""


# -- the plan: what would be sent, and where -------------------------------------------------


def parse_address(value: str, option: str) -> str:
    """An ASCII ``local@domain`` address, or :class:`ProbeError` naming the option."""
    text = value.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    local, sep, domain_text = text.rpartition("@")
    if not sep or not local or len(text) > MAX_ADDRESS or not text.isascii():
        raise ProbeError(f"{option}: {value!r} is not an address like user@contoso.com")
    if not _LOCAL.match(local):
        raise ProbeError(f"{option}: {value!r}: unsupported local part (use a plain address)")
    domain = normalise_domain(domain_text)
    if domain is None:
        raise ProbeError(f"{option}: {value!r}: {domain_text!r} is not a domain name")
    return f"{local}@{domain}"


def parse_server(value: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``192.0.2.1:25``, ``[2001:db8::1]:25`` or a bare IPv6 address."""
    text = value.strip()
    port_text = ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ProbeError(f"--server: {value!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _sep, port_text = text.partition(":")
    else:
        host = text
    host = host.strip().rstrip(".")
    if not host:
        raise ProbeError(f"--server: {value!r}: no host")
    if not _is_ip(host) and normalise_domain(host) is None:
        raise ProbeError(f"--server: {value!r}: {host!r} is not a host name or IP address")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ProbeError(f"--server: {value!r}: port must be 1-65535")
        port = int(port_text)
    return host, port


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _printable(text: str, limit: int) -> str:
    return _UNPRINTABLE.sub("?", text)[:limit]


def default_operator() -> str:
    """``user@host`` of whoever runs the probe (no network: the host name only)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown user"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class ProbePlan:
    rcpt_to: str
    mail_from: str
    via: str  # "server", "mx", "tenant-endpoint"
    host: str  # the server, or the --to domain when via == "mx"
    port: int
    helo: str  # "" = decided after connecting (host name, else an address literal)
    message: bytes
    message_id: str
    probe_id: str
    operator: str

    @property
    def domain(self) -> str:
        return self.rcpt_to.rpartition("@")[2]

    def source(self) -> str:
        """Where the server came from: the user's --server, the MX, the tenant endpoint."""
        if self.via == "mx":
            return f"MX of {self.host}"
        return "--server" if self.via == "server" else f"tenant endpoint of {self.domain}"

    def describe_server(self) -> str:
        if self.via == "mx":
            return f"the MX of {self.host}, port {self.port}"
        where = f"[{self.host}]" if ":" in self.host else self.host
        label = "--server" if self.via == "server" else f"tenant endpoint of {self.domain}"
        return f"{where}:{self.port} ({label})"


def _body(plan_to: str, plan_from: str, operator: str, probe_id: str, when: str) -> str:
    domain = plan_to.rpartition("@")[2]
    return "\n".join([
        "This is a harmless test message sent by dsguard probe. You can delete it.",
        "",
        f"It was sent on purpose by {operator} on {when}",
        f"to check whether the mail server of {domain} accepts anonymous mail",
        f'("Direct Send") that claims to come from {plan_from}, the way attackers',
        "send phishing that looks as if it came from inside the organisation.",
        "It contains no links and no attachments and asks you to do nothing.",
        "",
        "If it reached a mailbox, the server accepted the anonymous message.",
        "Exchange Online administrators can refuse such mail with",
        "Set-OrganizationConfig -RejectDirectSend $true (after checking which",
        "devices and services send this way), and verify with dsguard probe.",
        "",
        f"Probe id: {probe_id}",
        "",
    ])


def build_message(
    rcpt_to: str, mail_from: str, operator: str, probe_id: str, now: datetime
) -> tuple[bytes, str]:
    """The labelled test message (CRLF line ends, 7-bit) and its Message-ID."""
    from_domain = mail_from.rpartition("@")[2]
    message_id = f"<dsguard-probe.{probe_id}@{from_domain}>"
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = mail_from
    msg["To"] = rcpt_to
    msg["Subject"] = PROBE_SUBJECT
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = message_id
    msg[PROBE_HEADER] = "1"
    when = now.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    msg.set_content(_body(rcpt_to, mail_from, operator, probe_id, when))
    return msg.as_bytes(), message_id


def make_plan(
    rcpt_to: str,
    mail_from: str | None = None,
    *,
    server: str | None = None,
    port: int | None = None,
    use_tenant_endpoint: bool = False,
    helo: str | None = None,
    operator: str | None = None,
    now: datetime | None = None,
) -> ProbePlan:
    """Validate the options and build the message. Contacts nothing."""
    to = parse_address(rcpt_to, "--to")
    sender = parse_address(mail_from, "--from") if mail_from else to  # the campaign: From = To
    if port is not None and not 0 < port < 65536:
        raise ProbeError(f"--port: {port} is not 1-65535")
    if server and use_tenant_endpoint:
        raise ProbeError("--server and --tenant-endpoint both name the server: give one")
    if server:
        host, server_port = parse_server(server)
        if server_port is not None and port is not None and server_port != port:
            raise ProbeError("--server HOST:PORT and --port disagree: give the port once")
        via, final_port = "server", server_port or port or DEFAULT_PORT
    elif use_tenant_endpoint:
        host = tenant_endpoint(to.rpartition("@")[2])
        via, final_port = "tenant-endpoint", port or DEFAULT_PORT
    else:
        host = to.rpartition("@")[2]
        via, final_port = "mx", port or DEFAULT_PORT
    helo_name = ""
    if helo:
        helo_name = helo.strip()
        if not (normalise_domain(helo_name) or re.fullmatch(r"\[[0-9A-Fa-f.:IPv6]+\]", helo_name)):
            raise ProbeError(f"--helo: {helo!r} is not a host name or [address literal]")
    who = _printable(operator.strip(), 120) if operator else _printable(default_operator(), 120)
    probe_id = secrets.token_hex(8)
    message, message_id = build_message(to, sender, who, probe_id, now or datetime.now(UTC))
    return ProbePlan(to, sender, via, host, final_port, helo_name, message, message_id,
                     probe_id, who)


# -- where to connect ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str  # the name (MX host, --server name) or the address itself
    address: str
    port: int

    def __str__(self) -> str:
        addr = f"[{self.address}]" if ":" in self.address else self.address
        if self.host == self.address:
            return f"{addr}:{self.port}"
        return f"{self.host} ({addr}):{self.port}"


def _addresses(name: str, resolver: Resolver) -> list[str]:
    try:
        found = resolver.a(name) + resolver.aaaa(name)
    except (DnsTempError, DnsPermError) as exc:
        raise ProbeError(f"DNS lookup of {name} failed: {exc}") from exc
    return found


def resolve_endpoints(plan: ProbePlan, resolver: Resolver) -> list[Endpoint]:
    """The addresses to try, in order: the server's, or those of the MX hosts by preference."""
    if plan.via != "mx":
        if _is_ip(plan.host):
            return [Endpoint(plan.host, plan.host, plan.port)]
        found = _addresses(plan.host, resolver)
        if not found:
            raise ProbeError(f"{plan.host} has no address (A/AAAA) record")
        return [Endpoint(plan.host, a, plan.port) for a in found[:MAX_ADDRESSES]]
    try:
        mx = resolver.mx(plan.host)
    except (DnsTempError, DnsPermError) as exc:
        raise ProbeError(f"MX lookup of {plan.host} failed: {exc}") from exc
    hosts = [host for _pref, host in mx if host]
    if not hosts:
        if mx:
            raise ProbeError(f"{plan.host} publishes a null MX (RFC 7505): it accepts no mail")
        raise ProbeError(f"{plan.host} has no MX record: pass --server HOST[:PORT]")
    endpoints: list[Endpoint] = []
    for host in hosts:
        for address in _addresses(host, resolver):
            endpoints.append(Endpoint(host, address, plan.port))
            if len(endpoints) >= MAX_ADDRESSES:
                return endpoints
    if not endpoints:
        raise ProbeError(f"no MX host of {plan.host} has an address: {', '.join(hosts)}")
    return endpoints


# -- the SMTP conversation -----------------------------------------------------------------------


@dataclass(slots=True)
class ProbeResult:
    verdict: str
    stage: str  # CONNECT, GREETING, EHLO, STARTTLS, MAIL, RCPT, DATA, END-OF-DATA
    reply: str  # the deciding reply, one line per reply line
    reason: str
    endpoint: str = ""
    helo: str = ""
    tls: dict[str, Any] | None = None
    transcript: list[tuple[str, str]] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)  # endpoints that could not be reached


class _SessionError(Exception):
    """The server closed the connection or broke the protocol."""


class _Session:
    """A minimal SMTP client over one socket that keeps a transcript (RFC 5321)."""

    def __init__(self, sock: socket.socket, timeout: float, deadline: float,
                 transcript: list[tuple[str, str]]) -> None:
        self.sock: socket.socket = sock
        self.timeout = timeout
        self.deadline = deadline
        self.transcript = transcript
        self._buffer = b""

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the probe's overall time limit ran out")
        self.sock.settimeout(min(self.timeout, left))

    def _line(self) -> bytes:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise _SessionError(f"reply line longer than {MAX_LINE} octets")
            self._arm()
            chunk = self.sock.recv(8192)
            if not chunk:
                raise _SessionError("the server closed the connection")
            self._buffer += chunk
        line, _sep, self._buffer = self._buffer.partition(b"\n")
        if len(line) > MAX_LINE:
            raise _SessionError(f"reply line longer than {MAX_LINE} octets")
        return line.rstrip(b"\r")

    def reply(self) -> tuple[int, list[str]]:
        lines: list[str] = []
        code = 0
        while True:
            raw = self._line()
            text = _printable(raw.decode("utf-8", "replace"), MAX_LINE)
            self.transcript.append(("S", text))
            if len(text) < 3 or not text[:3].isdigit() or (len(text) > 3 and text[3] not in " -"):
                raise _SessionError(f"not an SMTP reply: {text[:80]!r}")
            code = code or int(text[:3])
            lines.append(text)
            if len(text) == 3 or text[3] == " ":
                return code, lines
            if len(lines) >= MAX_REPLY_LINES:
                raise _SessionError(f"reply longer than {MAX_REPLY_LINES} lines")

    def send(self, line: str, *, shown: str | None = None) -> None:
        self.transcript.append(("C", shown if shown is not None else line))
        self._arm()
        self.sock.sendall(line.encode("ascii") + b"\r\n")

    def command(self, line: str) -> tuple[int, list[str]]:
        self.send(line)
        return self.reply()

    def send_data(self, message: bytes) -> None:
        """The message, dot-stuffed (RFC 5321 section 4.5.2), then the final ".". """
        lines = message.replace(b"\r\n", b"\n").split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        out = bytearray()
        for raw in lines:
            stuffed = b"." + raw if raw.startswith(b".") else raw
            self.transcript.append(("C", _printable(stuffed.decode("ascii", "replace"), MAX_LINE)))
            out += stuffed + b"\r\n"
        out += b".\r\n"
        self.transcript.append(("C", "."))
        self._arm()
        self.sock.sendall(bytes(out))

    def starttls(self, server_hostname: str | None) -> dict[str, Any]:
        # Opportunistic TLS, as MTAs and the campaign's Send-MailMessage use it (RFC 3207,
        # RFC 7435): encrypt if offered, without authenticating the server, so a probe of a
        # server with a self-signed or mismatched certificate still runs.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self._arm()
        wrapped = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.sock = wrapped
        self._buffer = b""
        cipher = wrapped.cipher()
        return {
            "version": wrapped.version(),
            "cipher": cipher[0] if cipher else None,
            "certificate_verified": False,
        }

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def enhanced_code(lines: Sequence[str]) -> str:
    """The RFC 3463 enhanced status code of a reply (``5.7.68``), or ""."""
    for line in lines:
        match = _ENHANCED.search(line[4:] if len(line) > 4 else "")
        if match:
            return ".".join(match.groups())
    return ""


def classify_refusal(stage: str, code: int, lines: Sequence[str], plan: ProbePlan) -> tuple[str, str]:
    """``(verdict, reason)`` for a refusal at ``stage``."""
    text = " ".join(lines)
    lower = text.lower()
    enhanced = enhanced_code(lines)
    if enhanced == RDS_CODE or "direct send not allowed" in lower:
        return "protected", (
            f"RejectDirectSend refused the anonymous sender {plan.mail_from} at {stage}"
        )
    if enhanced == RESTRICTED_CONNECTOR_CODE:
        return "protected", (
            f"a restricted Partner inbound connector refused the message at {stage}: the "
            "tenant accepts mail only from its own gateway"
        )
    if 400 <= code < 500:
        return "refused", (
            f"temporary refusal at {stage} (throttling, greylisting or a busy server): retry "
            "later; this says nothing about Direct Send"
        )
    if enhanced == "5.4.1" or "recipient address rejected" in lower or enhanced == "5.1.1":
        return "refused", (
            f"the recipient {plan.rcpt_to} was refused (unknown mailbox; Exchange Online's "
            "Directory-Based Edge Blocking): probe an existing mailbox; this is not Direct "
            "Send protection"
        )
    if "relay" in lower or enhanced == "5.7.64":
        return "refused", (
            f"relaying denied: this server does not take mail for {plan.domain} (wrong --to "
            "domain or --server); this is not Direct Send protection"
        )
    if enhanced.startswith("5.7.") and enhanced[4:].isdigit() and 606 <= int(enhanced[4:]) <= 649:
        return "refused", (
            "the server blocks the probing IP address (5.7.606-649): probe from another "
            "network; this is not Direct Send protection"
        )
    return "refused", (
        f"refused at {stage} for another reason; read the reply: this is not the RejectDirectSend "
        "refusal (5.7.68)"
    )


def _helo_name(plan: ProbePlan, sock: socket.socket) -> str:
    if plan.helo:
        return plan.helo
    name = socket.gethostname().strip().rstrip(".")
    if normalise_domain(name) and not name.startswith("localhost"):
        return name
    local = str(sock.getsockname()[0])
    return f"[IPv6:{local}]" if ":" in local else f"[{local}]"


def _connect(endpoints: Sequence[Endpoint], timeout: float) -> tuple[socket.socket, Endpoint,
                                                                      list[str]]:
    attempts: list[str] = []
    for endpoint in endpoints:
        try:
            sock = socket.create_connection((endpoint.address, endpoint.port), timeout=timeout)
        except OSError as exc:
            why = exc.strerror or str(exc) or type(exc).__name__
            attempts.append(f"{endpoint}: {why}")
            continue
        return sock, endpoint, attempts
    raise ProbeError("cannot connect: " + "; ".join(attempts))


def run_probe(
    plan: ProbePlan,
    endpoints: Sequence[Endpoint],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    starttls: bool = True,
) -> ProbeResult:
    """Connect to the first reachable endpoint and run the anonymous session.

    Raises :class:`ProbeError` when no endpoint accepts a TCP connection; every later problem
    is a result (verdict ``error``) with the transcript so far.
    """
    if not endpoints:
        raise ProbeError("no server to connect to")
    sock, endpoint, attempts = _connect(endpoints, timeout)
    transcript: list[tuple[str, str]] = []
    session = _Session(sock, timeout, time.monotonic() + timeout * 8, transcript)
    result = ProbeResult("error", "GREETING", "", "", str(endpoint), "", None, transcript,
                         attempts)
    try:
        _converse(session, plan, endpoint, result, starttls)
    except (_SessionError, OSError, ssl.SSLError, UnicodeEncodeError) as exc:
        result.verdict = "error"
        why = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError) and str(exc) in ("", "timed out"):
            why = f"no reply within {timeout:g} s"
        result.reason = f"{why} (at {result.stage})"
    finally:
        if result.verdict != "error":
            with contextlib.suppress(_SessionError, OSError, ssl.SSLError):
                session.command("QUIT")
        session.close()
    return result


def _decide(result: ProbeResult, stage: str, code: int, lines: list[str], plan: ProbePlan) -> bool:
    """Record a refusal; True when the session is over."""
    result.stage = stage
    if code < 400:
        return False
    result.reply = "\n".join(lines)
    result.verdict, result.reason = classify_refusal(stage, code, lines, plan)
    return True


def _converse(session: _Session, plan: ProbePlan, endpoint: Endpoint, result: ProbeResult,
              starttls: bool) -> None:
    code, lines = session.reply()
    if _decide(result, "GREETING", code, lines, plan):
        return
    helo = _helo_name(plan, session.sock)
    result.helo = helo
    result.stage = "EHLO"
    code, lines = session.command(f"EHLO {helo}")
    extended = code == 250
    if not extended:
        code, lines = session.command(f"HELO {helo}")
        if _decide(result, "HELO", code, lines, plan):
            return
    keywords = {line[4:].split(" ", 1)[0].upper() for line in lines[1:]} if extended else set()
    result.tls = {"offered": "STARTTLS" in keywords, "used": False}
    if starttls and "STARTTLS" in keywords:
        result.stage = "STARTTLS"
        code, lines = session.command("STARTTLS")
        if code == 220:
            name = None if _is_ip(endpoint.host) else endpoint.host
            result.tls.update(session.starttls(name), used=True)
            session.transcript.append(("-", f"TLS established: {result.tls['version']}"))
            result.stage = "EHLO"
            code, lines = session.command(f"EHLO {helo}")
            if _decide(result, "EHLO", code, lines, plan):
                return
    code, lines = session.command(f"MAIL FROM:<{plan.mail_from}>")
    if _decide(result, "MAIL", code, lines, plan):
        return
    code, lines = session.command(f"RCPT TO:<{plan.rcpt_to}>")
    if _decide(result, "RCPT", code, lines, plan):
        return
    code, lines = session.command("DATA")
    if code != 354:
        if not _decide(result, "DATA", code, lines, plan):
            raise _SessionError(f"unexpected reply to DATA: {lines[0][:80]!r}")
        return
    result.stage = "END-OF-DATA"
    session.send_data(plan.message)
    code, lines = session.reply()
    if _decide(result, "END-OF-DATA", code, lines, plan):
        return
    result.verdict = "exposed"
    result.reply = "\n".join(lines)
    result.reason = _accepted_reason(plan)


def _accepted_reason(plan: ProbePlan) -> str:
    accepted = f"the server accepted anonymous mail from {plan.mail_from} to {plan.rcpt_to}"
    sender_domain = plan.mail_from.rpartition("@")[2]
    if sender_domain == plan.domain:
        return (f"{accepted}: RejectDirectSend is not on for this sender (spoofs like this are "
                "delivered, often to Junk)")
    if plan.via == "mx":
        return (f"{accepted}: if {sender_domain} is one of your accepted domains, "
                "RejectDirectSend is not on for it (from an outside domain this is ordinary "
                "inbound mail)")
    return (f"{accepted} at this endpoint directly: if your MX is a gateway, anyone can bypass "
            f"it (Ghost-Sender); if {sender_domain} is one of your accepted domains, "
            "RejectDirectSend is not on for it")


# -- reports ----------------------------------------------------------------------------------------


def result_doc(plan: ProbePlan, result: ProbeResult | None, *, dry_run: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "dry_run": dry_run,
        "server": plan.describe_server(),
        "envelope": {"mail_from": plan.mail_from, "rcpt_to": plan.rcpt_to},
        "message_id": plan.message_id,
        "probe_id": plan.probe_id,
    }
    if dry_run or result is None:
        doc["helo"] = plan.helo or None
        doc["message"] = plan.message.decode("ascii", "replace")
        return doc
    doc.update({
        "verdict": result.verdict,
        "stage": result.stage,
        "reply": result.reply,
        "reason": result.reason,
        "endpoint": result.endpoint,
        "helo": result.helo,
        "tls": result.tls,
        "attempts": list(result.attempts),
        "transcript": [{"from": {"C": "client", "S": "server"}.get(who, "note"), "line": line}
                       for who, line in result.transcript],
    })
    return doc


def headline(result: ProbeResult) -> str:
    first = result.reply.splitlines()[0] if result.reply else ""
    if result.verdict == "exposed":
        return f"exposed: accepted ({first})"
    if result.verdict == "error":
        return f"error: {result.reason}"
    return f"{result.verdict}: {first}"


def render_result(plan: ProbePlan, result: ProbeResult) -> str:
    lines = [headline(result)]
    if result.verdict != "error":
        lines.append(f"  {result.reason}")
    lines.append(f"  server:   {result.endpoint} ({plan.source()})")
    for attempt in result.attempts:
        lines.append(f"  (could not connect to {attempt})")
    lines.append(f"  envelope: MAIL FROM:<{plan.mail_from}> RCPT TO:<{plan.rcpt_to}>")
    lines.append(f"  message:  {plan.message_id}")
    tls = result.tls
    if tls is None:
        lines.append("  tls:      -")
    elif tls.get("used"):
        lines.append(f"  tls:      {tls['version']} ({tls['cipher']}), STARTTLS, certificate "
                     "not verified (opportunistic)")
    else:
        lines.append("  tls:      " + ("offered, not used" if tls.get("offered")
                                       else "not offered: plain text"))
    lines.append("transcript:")
    mark = {"C": "C:", "S": "S:"}
    lines.extend(f"  {mark.get(who, '--')} {line}" for who, line in result.transcript)
    return "\n".join(lines) + "\n"


def render_plan(plan: ProbePlan) -> str:
    helo = plan.helo or "<this host's name, or its address as [literal]>"
    lines = [
        "dry run: nothing sent, no connection made, no DNS lookup",
        f"server:   {plan.describe_server()}",
        f"session:  EHLO {helo}; STARTTLS if offered; no AUTH",
        f"envelope: MAIL FROM:<{plan.mail_from}>",
        f"          RCPT TO:<{plan.rcpt_to}>",
        "message:",
    ]
    text = plan.message.decode("ascii", "replace").replace("\r\n", "\n").rstrip("\n")
    lines.extend(f"  {line}" for line in text.split("\n"))
    return "\n".join(lines) + "\n"
