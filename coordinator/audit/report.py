"""A self-contained HTML audit report: verdict, sites, an epsilon plot of every site, releases table.

Everything is inline (CSS in a ``<style>`` block, plots as base64 PNG ``data:`` URIs), so the file
opens offline, can be mailed to an ethics board, and never fetches anything. All text from the
ledger is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Mapping

from coordinator.audit.verify import AuditResult, EntryRow, Severity
from protocols.atomic_files import write_text_atomic

MAX_TABLE_ROWS = 2000  # a 100,000-entry ledger would make an unreadable page; the newest rows are shown

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
.verdict{padding:1em;border-radius:6px;font-size:1.3em;font-weight:bold}
.ok{background:#e3f6e3;border:2px solid #2e7d32}.fail{background:#fdeaea;border:2px solid #c62828}
.unverified{background:#fff6e0;border:2px solid #b26a00}
table{border-collapse:collapse;font-size:.85em;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.warn{color:#b26a00}.err{color:#c62828}
img{max-width:100%}
"""


def _fmt(eps: float) -> str:
    return "&infin;" if eps == math.inf else f"{eps:.4g}"


def _epsilon_plot(rows: list[EntryRow], budgets: Mapping[str, float | None]) -> str:
    """Base64 PNG of every site's cumulative epsilon per dataset, one line each, against the round.

    One plot for the consortium, so sites that spend alike are seen to (separate plots looked
    identical); markers and dash styles differ so overlapping lines stay distinguishable.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 3.8), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    # Rounds are the natural axis; with several runs (rounds restart) fall back to ledger order.
    by_round = len({r.run_id for r in rows}) == 1

    def x(r: EntryRow) -> int:
        return r.round if by_round else r.seq

    datasets = sorted({r.dataset for r in rows})
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("x", "--")]
    line = 0
    for site in sorted({r.site for r in rows}):
        for dataset in datasets:
            pts = [r for r in rows if r.site == site and r.dataset == dataset and r.mechanism == "dp-sgd"]
            if pts:
                marker, dash = styles[line % len(styles)]
                ax.step([x(r) for r in pts], [r.cumulative_epsilon for r in pts], where="post", marker=marker,
                        linestyle=dash, markersize=4, alpha=0.85,
                        label=site if len(datasets) == 1 else f"{site} / {dataset}")
                line += 1
    for r in rows:
        if r.mechanism == "none":
            ax.axvline(x(r), color="#c62828", linestyle=":", linewidth=1)
    by_budget: dict[float, list[str]] = {}
    for site, budget in sorted(budgets.items()):
        if budget is not None:
            by_budget.setdefault(budget, []).append(site)
    for i, (budget, holders) in enumerate(sorted(by_budget.items())):
        who = "all sites" if len(holders) == len(budgets) else ", ".join(holders)
        ax.axhline(budget, color=("#c62828", "#8e24aa", "#ef6c00")[i % 3], linestyle="--", linewidth=1,
                   label=f"budget {budget:g} ({who})")
    ax.set_xlabel("round" if by_round else "ledger entry (several runs)")
    ax.set_ylabel("cumulative epsilon (DP-SGD)")
    ax.set_ylim(bottom=0)  # a budget is read against zero spend, not against the first round
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_report(
    result: AuditResult | None,
    rows: list[EntryRow],
    *,
    budgets: Mapping[str, float] | None = None,
    default_budget: float | None = None,
    title: str = "anonfed privacy ledger audit",
) -> str:
    """The report as one HTML string.

    ``result`` is None when no keys were given (the page then says NOT VERIFIED); ``rows`` are
    the ledger's entries; ``budgets`` maps site ids to their epsilon budget, ``default_budget``
    applies to the others.
    """
    e = html.escape
    budgets = dict(budgets or {})
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    if result is None:
        out.append("<div id='verdict' class='verdict unverified'>NOT VERIFIED: no public keys were given</div>")
    elif result.ok:
        out.append(f"<div id='verdict' class='verdict ok'>VERIFIED: {result.entries} entries, chain intact, "
                   "every entry signed by its site and countersigned, epsilon recomputed within tolerance</div>")
    else:
        first = result.first_error
        where = "the ledger" if first.seq is None else f"entry {first.seq}" + (f" (site {first.site})" if first.site else "")
        out.append(f"<div id='verdict' class='verdict fail'>FAILED: first bad entry is {e(where)}: "
                   f"{e(first.error.__name__)}: {e(first.message)}</div>")
    if result is not None and result.findings:
        out.append("<h2>Findings</h2><ul id='findings'>")
        for f in result.findings:
            cls = "err" if f.severity is Severity.ERROR else "warn"
            out.append(f"<li class='{cls}'>{e(f.describe())}</li>")
        out.append("</ul>")

    sites = sorted({r.site for r in rows})
    out.append("<h2>Sites</h2><table id='sites'><tr><th class='l'>site</th><th>entries</th>"
               "<th class='l'>cumulative epsilon (DP-SGD, per dataset)</th><th>k-anonymous releases</th>"
               "<th class='l'>released without DP</th><th>budget</th></tr>")
    for site in sites:
        srows = [r for r in rows if r.site == site]
        last: dict[str, float] = {}
        for r in srows:
            if r.mechanism == "dp-sgd":
                last[r.dataset] = r.cumulative_epsilon
        eps = ", ".join(f"{e(d)}: {_fmt(v)}" for d, v in sorted(last.items())) or "none"
        nodp = sorted({r.dataset for r in srows if r.mechanism == "none"})
        budget = budgets.get(site, default_budget)
        out.append(f"<tr id='site-{e(site)}'><td class='l site'>{e(site)}</td><td>{len(srows)}</td><td class='l'>{eps}</td>"
                   f"<td>{sum(r.k is not None for r in srows)}</td>"
                   f"<td class='l'>{e(', '.join(nodp)) + ' (epsilon = &infin;)' if nodp else 'no'}</td>"
                   f"<td>{'' if budget is None else f'{budget:g}'}</td></tr>")
    out.append("</table>")
    consortium: dict[str, float] = {}
    for r in rows:
        if r.mechanism in ("dp-sgd", "none"):
            consortium[r.dataset] = max(consortium.get(r.dataset, 0.0), r.cumulative_epsilon)
    if consortium:
        figures = ", ".join(f"{e(d)}: {_fmt(v)}" for d, v in sorted(consortium.items()))
        out.append(f"<p id='consortium'>Consortium epsilon per dataset (maximum over sites; sites hold disjoint "
                   f"patients, so their releases compose in parallel): {figures}</p>")

    if rows:
        png = _epsilon_plot(rows, {site: budgets.get(site, default_budget) for site in sites})
        out.append("<h3 id='epsilon-plot'>Cumulative epsilon per site</h3>"
                   f"<img alt='cumulative epsilon of every site against the round' src='data:image/png;base64,{png}'>")

    shown = rows[-MAX_TABLE_ROWS:]
    out.append(f"<h2>Releases</h2><p>{len(rows)} entries" +
               (f"; the newest {len(shown)} are listed" if len(shown) < len(rows) else "") + ".</p>")
    out.append("<table id='releases'><tr><th>entry</th><th class='l'>site</th><th class='l'>run</th><th>round</th>"
               "<th class='l'>task</th><th class='l'>dataset</th><th class='l'>guarantee</th><th>epsilon</th>"
               "<th>cumulative</th><th>k (min)</th><th>clusters</th><th>artifacts</th><th class='l'>started from</th>"
               "<th class='l'>time</th></tr>")
    for r in shown:
        guarantee = {"dp-sgd": "DP-SGD", "none": "NONE (no DP)", "k-anonymity": "k-anonymity",
                     "post-processing": "post-processing"}.get(r.mechanism, r.mechanism)
        kcol = "" if r.k is None else f"{r.k} ({r.min_k})"
        clusters = "" if not r.cluster_sizes else f"{len(r.cluster_sizes)} (min {min(r.cluster_sizes)})"
        start = "" if r.start_weights_sha256 is None else \
            f"<span title='{e(r.start_weights_sha256)}'>{e(r.start_weights_sha256[:12])}</span>"
        out.append(f"<tr><td>{r.seq}</td><td class='l'>{e(r.site)}</td><td class='l'>{e(r.run_id)}</td><td>{r.round}</td>"
                   f"<td class='l'>{e(r.task)}</td><td class='l'>{e(r.dataset)}</td><td class='l'>{e(guarantee)}</td>"
                   f"<td>{_fmt(r.epsilon) if r.mechanism in ('dp-sgd', 'none') else 'n/a'}</td>"
                   f"<td>{_fmt(r.cumulative_epsilon)}</td><td>{kcol}</td><td>{clusters}</td>"
                   f"<td>{r.artifacts}</td><td class='l'>{start}</td><td class='l'>{e(r.time)}</td></tr>")
    out.append("</table><p>Epsilon is recomputed by the auditor with Google's dp-accounting (RDP, and PLD for "
               "figures below the RDP bound); see coordinator/audit/recompute.py for the tolerance rule.</p>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(path: Path, text: str) -> None:
    """Write the report atomically (temp file in the same folder, fsync, rename)."""
    write_text_atomic(Path(path), text, mode=0o644)
