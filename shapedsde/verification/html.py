"""`render_html`: a verification report as one self-contained HTML page.

The page holds the verdict table, every figure (embedded as base64 PNG data URIs, so
the file can be mailed or archived alone), the command and seed that reproduce the
run, its settings and the library versions. It is a pure function of the report's
JSON and the figures' bytes: the same inputs give the same page, byte for byte, which
is what lets a test compare a checked-in page with a re-rendered one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from html import escape
from typing import Any

from .figures import caption

VERDICTS = ("PASS", "FAIL", "NO POWER")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #1f2328;
       line-height: 1.4; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; }
td.numbers, pre, code { font-family: ui-monospace, monospace; font-size: 0.85em; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; white-space: pre-wrap; }
.verdict { font-weight: bold; white-space: nowrap; }
.PASS { background: #dafbe1; color: #116329; }
.FAIL { background: #ffebe9; color: #a40e26; }
.NO-POWER { background: #fff8c5; color: #7d4e00; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 0.9em; color: #57606a; }
""".strip()


def render_html(report: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """The HTML page of `report` (as written to report.json) with its PNG `figures`
    (file name -> bytes). Every name in report["figures"] must be in `figures`."""
    names = list(report.get("figures", []))
    missing = [n for n in names if n not in figures]
    if missing:
        raise ValueError(f"no image data for the report's figures {missing}")
    settings = report.get("settings", {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        "<title>shapedsde verification report</title>",
        f"<style>\n{_CSS}\n</style></head>",
        "<body>",
        "<h1>shapedsde verification report</h1>",
        f"<p class=\"tally\">{escape(tally(report))}</p>",
        _reproduce(report),
        "<h2>Verdicts</h2>",
        _verdict_table(report.get("verdicts", [])),
        "<h2>Figures</h2>",
        *(_figure(n, figures[n]) for n in names),
        "<h2>Settings</h2>",
        _table({k: v for k, v in settings.items() if k != "config"}),
        "<h3>Sizes (config)</h3>",
        _table(settings.get("config", {})),
        "<h2>Versions</h2>",
        _table(report.get("versions", {})),
    ]
    if report.get("seconds"):
        parts += ["<h2>Run time (seconds)</h2>",
                  _table({k: f"{v:.1f}" for k, v in report["seconds"].items()})]
    parts += ["<h2>Seeds</h2>",
              f"<details><summary>{len(report.get('seeds', {}))} seeds, one per check label"
              "</summary>", _table(report.get("seeds", {})), "</details>",
              "<p>Every number is in <code>report.json</code> beside this page; "
              "verify/README.md explains each check.</p>",
              "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def tally(report: Mapping[str, Any]) -> str:
    """'12 PASS, 0 FAIL, 1 NO POWER' from the report's summary."""
    summary = report.get("summary", {})
    return ", ".join(f"{summary.get(v, 0)} {v}" for v in VERDICTS)


def split_verdict(line: str) -> tuple[str, str, str]:
    """(verdict, check, numbers) of a verdict line 'VERDICT check: numbers'.

    The check ends at the first ': ' outside brackets (a parameter dict's colons stay
    in the check); a line without one is all check."""
    verdict = next((v for v in VERDICTS if line.startswith(v + " ")), "")
    rest = line[len(verdict):].strip()
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0 and rest.startswith(": ", i):
            return verdict, rest[:i], rest[i + 2:]
    return verdict, rest, ""


def _reproduce(report: Mapping[str, Any]) -> str:
    settings = report.get("settings", {})
    return ("<h2>Reproduce</h2>\n"
            f"<pre class=\"command\">{escape(str(report.get('command', '')))}</pre>\n"
            f"<p>Root seed <code>{escape(str(settings.get('seed', '')))}</code> "
            f"(mode <code>{escape(str(settings.get('mode', '')))}</code>, device "
            f"<code>{escape(str(settings.get('device', '')))}</code>); every check draws "
            "from its own seed derived from it (table below), so the command reproduces "
            "every number.</p>")


def _verdict_table(lines: list[str]) -> str:
    rows = ["<table class=\"verdicts\">",
            "<tr><th>#</th><th>verdict</th><th>check</th><th>key numbers</th></tr>"]
    for i, line in enumerate(lines, 1):
        verdict, check, numbers = split_verdict(line)
        cls = verdict.replace(" ", "-") or "none"
        rows.append(f"<tr><td>{i}</td><td class=\"verdict {cls}\">{escape(verdict)}</td>"
                    f"<td>{escape(check)}</td><td class=\"numbers\">{escape(numbers)}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _figure(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    text = caption(name)
    return (f"<figure id=\"{escape(name)}\"><img alt=\"{escape(name)}\" "
            f"src=\"data:image/png;base64,{data}\">\n"
            f"<figcaption><code>{escape(name)}</code>{': ' if text else ''}{escape(text)}"
            "</figcaption></figure>")


def _table(items: Mapping[str, Any]) -> str:
    rows = ["<table>"]
    for k, v in items.items():
        shown = v if isinstance(v, str) else json.dumps(v)
        rows.append(f"<tr><th>{escape(str(k))}</th><td><code>{escape(shown)}</code></td></tr>")
    rows.append("</table>")
    return "\n".join(rows)
