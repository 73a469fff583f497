"""Render an inventory document: a terminal table, JSON, CSV (one row per source) or HTML.

The document (``InventoryBuilder.document``) is the JSON output itself and what ``dsguard m365
plan`` reads, so every renderer works from the same dict.

SECURITY: subjects, HELO names and addresses are attacker-written. Text: every value goes
through ``one_line`` (no control characters, no ANSI escapes) and into ``rich.text.Text``
objects, never parsed as markup. CSV: ``safe_cell`` (no spreadsheet formulas). HTML: Jinja2 with
autoescaping forced on, control and bidi characters shown as escapes, URLs in subjects defanged
(``hxxps://evil[.]example``), no links, no script, a Content-Security-Policy that forbids scripts
and every remote fetch; the chart is an inline SVG drawn here from numbers only.
"""

from __future__ import annotations

import csv
import json
import math
import re
from datetime import date, timedelta
from functools import lru_cache
from typing import Any, TextIO

from jinja2 import Environment, PackageLoader, StrictUndefined, Template
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dsguard.m365.inventory import (
    CLASSES,
    DEVICE,
    FORWARDING,
    MALICIOUS,
    SUSPICIOUS,
    THIRD_PARTY,
)
from dsguard.report.csvout import safe_cell
from dsguard.report.html import visible
from dsguard.report.serialize import defang, one_line

FORMATS = ("text", "json", "csv", "html")

CLASS_LABELS = {
    DEVICE: "device or application",
    THIRD_PARTY: "third-party service",
    FORWARDING: "forwarding without SRS",
    SUSPICIOUS: "suspicious",
    MALICIOUS: "malicious",
}
# Colour-blind-safe (Okabe-Ito) fills for the chart and tags; fixed, never from data.
CLASS_COLOURS = {
    DEVICE: "#0072B2",
    THIRD_PARTY: "#56B4E9",
    FORWARDING: "#009E73",
    SUSPICIOUS: "#E69F00",
    MALICIOUS: "#D55E00",
}
_TEXT_STYLE = {
    DEVICE: "blue",
    THIRD_PARTY: "cyan",
    FORWARDING: "green",
    SUSPICIOUS: "yellow",
    MALICIOUS: "bold red",
}
_URL = re.compile(r"(?i)\b(?:https?|hxxps?|ftp)://[^\s<>\"']+")


def render(doc: dict[str, Any], fmt: str, out: TextIO, *, color: bool = False) -> None:
    if fmt == "json":
        render_json(doc, out)
    elif fmt == "csv":
        render_csv(doc, out)
    elif fmt == "html":
        render_html(doc, out)
    elif fmt == "text":
        render_text(doc, out, color=color)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def render_json(doc: dict[str, Any], out: TextIO) -> None:
    json.dump(doc, out, indent=2, ensure_ascii=False)
    out.write("\n")


# -- text ------------------------------------------------------------------------------------


def _t(value: object, limit: int = 80, style: str = "") -> Text:
    return Text(one_line(value, limit), style=style)


def render_text(doc: dict[str, Any], out: TextIO, *, color: bool = False) -> None:
    console = Console(
        file=out, force_terminal=color, no_color=not color, color_system="standard" if color
        else None, markup=False, highlight=False, emoji=False, width=200 if not color else None,
        soft_wrap=False,
    )
    org = doc["organization"]
    totals = doc["totals"]
    console.print(Text("Direct Send inventory", style="bold"))
    domains = ", ".join(org["accepted_domains"]) or "none"
    console.print(_t(f"accepted domains: {domains}"
                     f"{' (inferred from recipients)' if org['accepted_domains_inferred'] else ''}",
                     200))
    console.print(_t(
        f"{totals['rows']} records, {totals['messages']} messages; Direct Send: "
        f"{totals['direct_send_messages']} messages from {totals['sources']} sources "
        f"({totals['rds_blocked_messages']} with an accepted-domain envelope sender, "
        f"{totals['p2_only_messages']} with only the header From)", 300))
    counts = ", ".join(f"{totals['sources_by_class'][c]} {CLASS_LABELS[c]}" for c in CLASSES)
    console.print(_t(f"sources: {counts}", 300))

    console.print()
    console.print(Text("What enabling RejectDirectSend would block (legitimate: fix these first)",
                       style="bold"))
    if not doc["would_block"]:
        console.print(_t("  no legitimate source found", 200))
    for w in doc["would_block"]:
        line = Text("  ")
        line.append(_t(CLASS_LABELS[w["class"]], 30, _TEXT_STYLE[w["class"]]))
        line.append("  ")
        line.append(_t(f"{_where(w['ips'], w['helos'])}"
                       f"{' - ' + w['service'] if w['service'] else ''} - {w['messages']} "
                       "messages - " + ", ".join(s["address"] for s in w["senders"]), 200))
        console.print(line)
        fix = Text("      fix: ")
        fix.append(_t(w["fix"]["summary"], 300))
        console.print(fix)
    if doc["review"]:
        console.print()
        console.print(Text("Also blocked, needs review (suspicious: never allow-listed)",
                           style="bold"))
        for r in doc["review"]:
            line = Text("  ")
            line.append(_t(f"{', '.join(r['ips'])} ({r['messages']} messages): "
                           + "; ".join(r["reasons"]), 400))
            console.print(line)

    console.print()
    console.print(Text("Sources", style="bold"))
    table = Table(box=None, pad_edge=False)
    for column in ("class", "source", "msgs", "days", "first seen", "last seen", "top sender",
                   "SPF", "DKIM", "DMARC", "country"):
        table.add_column(column, no_wrap=True, overflow="ellipsis", min_width=len(column))
    for s in doc["sources"]:
        table.add_row(
            _t(s["class"], 20, _TEXT_STYLE[s["class"]]),
            _t(_where(s["ips"], s["helos"]), 60),
            _t(s["messages"]), _t(s["days_active"]),
            _t((s["first_seen"] or "")[:10]), _t((s["last_seen"] or "")[:10]),
            _t(s["senders"][0]["address"] if s["senders"] else "", 32),
            _t(_auth_cell(s["auth"]["spf"]), 14), _t(_auth_cell(s["auth"]["dkim"]), 14),
            _t(_auth_cell(s["auth"]["dmarc"]), 14),
            _t(", ".join(s["countries"]), 12),
        )
    console.print(table)
    console.print()
    console.print(Text("Why", style="bold"))
    for s in doc["sources"]:
        line = Text("  ")
        line.append(_t(s["id"], 80, _TEXT_STYLE[s["class"]]))
        line.append(_t(f": {'; '.join(s['reasons'])}", 600))
        console.print(line)
    _text_footer(console, doc)


def _text_footer(console: Console, doc: dict[str, Any]) -> None:
    console.print()
    console.print(Text("Inputs", style="bold"))
    for i in doc["inputs"]:
        state = f"ERROR: {i['error']}" if i["error"] else f"{i['records']} records"
        line = Text("  ")
        line.append(_t(f"{i['path']}: {i['format'] or 'unknown'} {i['detail']} "
                       f"{i['encoding']} - {state}", 600))
        console.print(line)
    for note in doc["notes"]:
        console.print(_t(f"note: {note}", 300))


def _where(ips: list[str], helos: list[str]) -> str:
    return ", ".join(ips) + (f" ({helos[0]})" if helos else "")


def _auth_cell(counts: dict[str, int]) -> str:
    if not counts:
        return "-"
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:2])


# -- CSV -------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "source", "class", "ips", "helos", "service", "countries", "messages", "recipients",
    "first_seen", "last_seen", "days_active", "p1_domains", "p2_domains", "top_senders",
    "sample_subjects", "spf", "dkim", "dmarc", "compauth", "self_addressed_messages",
    "lure_messages", "rds_blocks", "fix", "fix_detail", "reasons",
)


def render_csv(doc: dict[str, Any], out: TextIO) -> None:
    """One row per source. Write to a stream opened with ``newline=""``."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for s in doc["sources"]:
        fix = s["fix"] or {}
        cells: dict[str, object] = {
            "source": s["id"], "class": s["class"], "ips": ";".join(s["ips"]),
            "helos": ";".join(s["helos"]), "service": s["service"] or "",
            "countries": ";".join(s["countries"]), "messages": s["messages"],
            "recipients": s["recipients"], "first_seen": s["first_seen"] or "",
            "last_seen": s["last_seen"] or "", "days_active": s["days_active"],
            "p1_domains": ";".join(s["p1_domains"]), "p2_domains": ";".join(s["p2_domains"]),
            "top_senders": ";".join(f"{x['address']} ({x['messages']})" for x in s["senders"]),
            "sample_subjects": " | ".join(x["subject"] for x in s["subjects"]),
            "spf": _auth_cell(s["auth"]["spf"]), "dkim": _auth_cell(s["auth"]["dkim"]),
            "dmarc": _auth_cell(s["auth"]["dmarc"]), "compauth": _auth_cell(s["auth"]["compauth"]),
            "self_addressed_messages": s["self_addressed_messages"],
            "lure_messages": s["lure_messages"], "rds_blocks": "yes" if s["rds_blocks"] else "no",
            "fix": fix.get("kind", ""), "fix_detail": fix.get("summary", ""),
            "reasons": " | ".join(s["reasons"]),
        }
        writer.writerow([
            v if isinstance(v, int) else safe_cell(str(v)) for v in
            (cells[c] for c in CSV_COLUMNS)
        ])


# -- HTML ------------------------------------------------------------------------------------


def safe_text(value: object, limit: int = 500) -> str:
    """Display text for HTML: invisible characters escaped, URLs defanged, length capped.
    (Escaping of <, >, & and quotes is Jinja2's autoescape.)"""
    text = visible(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _URL.sub(lambda m: defang(m.group(0)), text)


def _nice_max(value: int) -> int:
    if value <= 5:
        return 5
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        top = int(step * exponent)
        if top >= value:
            return top
    return value


def chart_data(daily: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Stacked bars of Direct Send messages per day (per week past 120 days) by class.

    Only numbers, dates and the fixed class names/colours go into the SVG.
    """
    width, height = 900, 300
    left, right, top, bottom = 56, 16, 16, 48
    buckets: dict[str, dict[str, int]] = {}
    days = sorted(daily)
    weekly = len(days) > 120
    for day in days:
        key = day
        if weekly:
            try:
                d = date.fromisoformat(day)
            except ValueError:
                continue
            key = (d - timedelta(days=d.weekday())).isoformat()
        bucket = buckets.setdefault(key, {c: 0 for c in CLASSES})
        for cls in CLASSES:
            bucket[cls] += int(daily[day].get(cls, 0))
    keys = sorted(buckets)
    n = max(len(keys), 1)
    peak = max((sum(b.values()) for b in buckets.values()), default=0)
    y_max = _nice_max(peak)
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / n
    bar_w = max(min(slot * 0.8, 48), 1)
    bars = []
    for i, key in enumerate(keys):
        x = left + i * slot + (slot - bar_w) / 2
        y: float = top + plot_h
        for cls in CLASSES:
            count = buckets[key][cls]
            if not count:
                continue
            h = plot_h * count / y_max
            y -= h
            bars.append({"x": round(x, 1), "y": round(y, 1), "w": round(bar_w, 1),
                         "h": round(h, 1), "fill": CLASS_COLOURS[cls],
                         "title": f"{'week of ' if weekly else ''}{key}: {count} "
                                  f"{CLASS_LABELS[cls]}"})
    every = max(1, math.ceil(n / 12))
    xlabels = [{"x": round(left + i * slot + slot / 2, 1), "y": height - bottom + 18,
                "text": key[5:] if not weekly else f"wk {key[5:]}"}
               for i, key in enumerate(keys) if i % every == 0]
    # _nice_max gives 5, 10, 20, 25, 50, 100 ...: five equal integer steps.
    yticks = [{"y": round(top + plot_h - plot_h * v / y_max, 1), "text": str(v)}
              for v in (y_max * k // 5 for k in range(6))]
    return {
        "width": width, "height": height, "left": left, "right": width - right,
        "top": top, "bottom": top + plot_h, "bars": bars, "xlabels": xlabels,
        "yticks": yticks, "weekly": weekly, "empty": not bars,
        "legend": [{"label": CLASS_LABELS[c], "fill": CLASS_COLOURS[c]} for c in CLASSES],
        "table": [{"day": k, "counts": [buckets[k][c] for c in CLASSES],
                   "total": sum(buckets[k].values())} for k in keys],
    }


def _view_source(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": safe_text(s["id"], 200),
        "cls": s["class"],
        "label": CLASS_LABELS[s["class"]],
        "where": safe_text(_where(s["ips"], s["helos"]), 200),
        "service": safe_text(s["service"] or "", 100),
        "messages": s["messages"],
        "days": s["days_active"],
        "first": safe_text((s["first_seen"] or "")[:16].replace("T", " ")),
        "last": safe_text((s["last_seen"] or "")[:16].replace("T", " ")),
        "countries": safe_text(", ".join(s["countries"])),
        "p1": safe_text(", ".join(s["p1_domains"][:5]), 200),
        "p2": safe_text(", ".join(s["p2_domains"][:5]), 200),
        "senders": [safe_text(f"{x['address']} ({x['messages']})", 200) for x in s["senders"]],
        "subjects": [safe_text(f"{x['subject']} ({x['messages']})", 300) for x in s["subjects"]],
        "spf": safe_text(_auth_cell(s["auth"]["spf"])),
        "dkim": safe_text(_auth_cell(s["auth"]["dkim"])),
        "dmarc": safe_text(_auth_cell(s["auth"]["dmarc"])),
        "reasons": [safe_text(r, 600) for r in s["reasons"]],
        "fix": safe_text(s["fix"]["summary"], 600) if s["fix"] else "",
        "fix_kind": s["fix"]["kind"] if s["fix"] else "",
        "rds_blocks": bool(s["rds_blocks"]),
        "recipients": s["recipients"],
    }


def render_html(doc: dict[str, Any], out: TextIO) -> None:
    sources = [_view_source(s) for s in doc["sources"]]
    legit_ids = {w["id"] for w in doc["would_block"]}
    review_ids = {r["id"] for r in doc["review"]}
    org = doc["organization"]
    context = {
        "title": "dsguard - Direct Send inventory",
        "version": safe_text(doc["dsguard_version"]),
        "generated_at": safe_text(doc["generated_at"]),
        "domains": [safe_text(d) for d in org["accepted_domains"]],
        "inferred": bool(org["accepted_domains_inferred"]),
        "totals": doc["totals"],
        "classes": [{"key": c, "label": CLASS_LABELS[c], "fill": CLASS_COLOURS[c],
                     "sources": doc["totals"]["sources_by_class"][c],
                     "messages": doc["totals"]["messages_by_class"][c]} for c in CLASSES],
        "chart": chart_data(doc["daily"]),
        "would_block": [s for s, raw in zip(sources, doc["sources"], strict=True)
                        if raw["id"] in legit_ids],
        "review": [s for s, raw in zip(sources, doc["sources"], strict=True)
                   if raw["id"] in review_ids],
        "sources": sources,
        "inputs": [{"path": safe_text(i["path"], 300), "format": safe_text(i["format"] or ""),
                    "detail": safe_text(i["detail"]), "encoding": safe_text(i["encoding"]),
                    "records": i["records"], "rows": i["rows"],
                    "error": safe_text(i["error"], 600) if i["error"] else ""}
                   for i in doc["inputs"]],
        "notes": [safe_text(n, 600) for n in doc["notes"]],
        "class_labels": [CLASS_LABELS[c] for c in CLASSES],
    }
    for chunk in _template().generate(**context):
        out.write(chunk)
    out.flush()


@lru_cache(maxsize=1)
def _template() -> Template:
    env = Environment(
        loader=PackageLoader("dsguard.m365", "templates"),
        autoescape=True,  # forced: the .html.j2 suffix would not switch it on
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("inventory.html.j2")
