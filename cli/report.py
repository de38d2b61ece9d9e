"""The credits report: what the analytics functions return, as tables and as one self-contained
HTML page with inline SVG charts (no script, no stylesheet or font from the network)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from cli.output import table
from mycelium_client import CreditConfig, CreditSummary, DailyStats, MyceliumClient, TopUser


@dataclass(frozen=True)
class ReportData:
    config: CreditConfig
    summary: CreditSummary
    days: list[DailyStats]
    top_spenders: list[TopUser]

    def as_json(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(mode="json"),
            "summary": self.summary.model_dump(mode="json"),
            "days": [day.model_dump(mode="json") for day in self.days],
            "top_spenders": [user.model_dump(mode="json") for user in self.top_spenders],
        }


def collect(client: MyceliumClient, first: date | None, last: date | None, top: int) -> ReportData:
    return ReportData(
        client.credits.config(),
        client.admin.credit_summary(),
        client.admin.daily_stats(first, last),
        client.admin.top_users("spenders", first, last, top),
    )


@dataclass(frozen=True)
class Section:
    """One table of the report, the same in the terminal and in the HTML page."""

    title: str
    columns: list[str]
    rows: list[tuple[object, ...]]


def sections(data: ReportData) -> tuple[Section, Section, Section]:
    summary, config = data.summary, data.config
    now = Section(
        f"Credits now ({config.credit_symbol}; 1 {config.credit_symbol} = {config.tfc_to_usd_rate} USD)",
        [
            "in circulation",
            "held",
            "accounts",
            "issued",
            "spent",
            "expired",
            "platform revenue",
            "revenue in USD",
        ],
        [
            (
                summary.circulation,
                summary.held,
                summary.user_accounts,
                summary.issued,
                summary.spent,
                summary.expired,
                summary.platform_revenue,
                summary.platform_revenue * config.tfc_to_usd_rate,
            )
        ],
    )
    per_day = Section(
        "Per day (UTC)",
        [
            "day",
            "issued",
            "purchased",
            "granted",
            "transferred",
            "spent",
            "expired",
            "revenue",
            "circulation",
        ],
        [
            (
                d.day,
                d.issued,
                d.purchased,
                d.granted,
                d.transferred,
                d.spent,
                d.expired,
                d.platform_revenue,
                d.circulation,
            )
            for d in data.days
        ],
    )
    top = Section(
        "Top spenders",
        ["user", "spent or sent", "movements"],
        [(user.email or user.user_id, user.total, user.movements) for user in data.top_spenders],
    )
    return now, per_day, top


def print_tables(data: ReportData) -> None:
    for section in sections(data):
        table(section.title, section.columns, section.rows)


# -- HTML ---------------------------------------------------------------------------------------
WIDTH, HEIGHT, MARGIN = 720, 240, 40
SERIES_COLOURS = ("#2f7ed8", "#d9534f", "#8c8c8c", "#5cb85c")


def _coordinate(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.1'))}"


def _scale(values: Sequence[Decimal]) -> Decimal:
    largest = max((abs(v) for v in values), default=Decimal(0))
    return largest if largest > 0 else Decimal(1)


def line_chart(title: str, days: Sequence[date], series: dict[str, Sequence[Decimal]]) -> str:
    """One polyline per series over the days, with a legend; exact Decimal scaling."""
    top = _scale([v for values in series.values() for v in values])
    inner_w, inner_h = Decimal(WIDTH - 2 * MARGIN), Decimal(HEIGHT - 2 * MARGIN)
    step = inner_w / max(len(days) - 1, 1)
    parts = [
        f'<svg role="img" aria-label="{html.escape(title)}" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">',
        f'<text x="{MARGIN}" y="20" font-weight="bold">{html.escape(title)}</text>',
        f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - MARGIN}" '
        'stroke="#999"/>',
        f'<text x="4" y="{MARGIN + 4}" font-size="10">{top:,}</text>',
    ]
    for index, (name, values) in enumerate(series.items()):
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        points = " ".join(
            f"{_coordinate(MARGIN + step * i)},{_coordinate(HEIGHT - MARGIN - inner_h * v / top)}"
            for i, v in enumerate(values)
        )
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        parts.append(
            f'<text x="{WIDTH - MARGIN - 120}" y="{20 + 14 * index}" fill="{colour}" font-size="12">'
            f"{html.escape(name)}</text>"
        )
    if days:
        parts.append(f'<text x="{MARGIN}" y="{HEIGHT - 10}" font-size="10">{days[0]}</text>')
        parts.append(f'<text x="{WIDTH - MARGIN - 60}" y="{HEIGHT - 10}" font-size="10">{days[-1]}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart(title: str, labels: Sequence[str], values: Sequence[Decimal]) -> str:
    """Horizontal bars, one per label."""
    bar_h, label_w = 22, 240
    height = MARGIN + bar_h * max(len(values), 1) + 10
    top = _scale(values)
    inner_w = Decimal(WIDTH - label_w - MARGIN)
    parts = [
        f'<svg role="img" aria-label="{html.escape(title)}" '
        f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">',
        f'<text x="4" y="20" font-weight="bold">{html.escape(title)}</text>',
    ]
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = MARGIN + bar_h * index
        parts.append(f'<text x="4" y="{y + 15}" font-size="12">{html.escape(label)}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{_coordinate(inner_w * value / top)}" height="{bar_h - 6}" '
            f'fill="{SERIES_COLOURS[0]}"/>'
        )
        parts.append(f'<text x="{label_w + 4}" y="{y + 13}" font-size="11" fill="#fff">{value:,}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _html_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape('' if cell is None else str(cell))}</td>" for cell in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; }
svg { display: block; margin: 1.5em 0; }
"""


def render_html(data: ReportData) -> str:
    days = [d.day for d in data.days]
    symbol = data.config.credit_symbol
    now, per_day, top = sections(data)
    period = f"{days[0]} to {days[-1]}" if days else "no days"
    parts = [
        f"<h1>{html.escape(data.config.credit_display_name)} report</h1>",
        f"<p>{period} (UTC); 1 {html.escape(symbol)} = {data.config.tfc_to_usd_rate} USD.</p>",
        f"<h2>{html.escape(now.title)}</h2>",
        _html_table(now.columns, now.rows),
        f"<h2>{html.escape(per_day.title)}</h2>",
        line_chart(
            f"Credits issued, spent and expired per day ({symbol})",
            days,
            {
                "issued": [d.issued for d in data.days],
                "spent": [d.spent for d in data.days],
                "expired": [d.expired for d in data.days],
            },
        ),
        line_chart(
            f"Platform revenue per day ({symbol})", days, {"revenue": [d.platform_revenue for d in data.days]}
        ),
        _html_table(per_day.columns, per_day.rows),
        f"<h2>{html.escape(top.title)}</h2>",
        bar_chart(
            f"Top spenders ({symbol})",
            [str(user.email or user.user_id) for user in data.top_spenders],
            [user.total for user in data.top_spenders],
        ),
        _html_table(top.columns, top.rows),
    ]
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(data.config.credit_display_name)} report</title><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
