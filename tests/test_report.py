"""The verification report a person reads: `shapedsde verify`'s output, report.html
(`shapedsde.verification.html`) and the files written beside it.

One tiny run (`--tiny`: the same checks with small samples, no every-block and depth
checks) is shared by the module; the rest are unit tests of the renderer and the CLI.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _shared import assert_one_line_error, run

import shapedsde.cli as cli
from shapedsde.verification import html as html_mod
from shapedsde.verification.html import render_html, split_verdict, tally
from shapedsde.verification.report import (
    MACHINE_KEYS,
    STAGES,
    _write_report,
    strip_machine_fields,
)

CHROMIUM = Path("/usr/bin/chromium")
# A valid 1 x 1 PNG, for renderer tests that need image bytes but no figure.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQD"
                       "wAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`shapedsde verify --tiny --out DIR` in process: exit status, stdout, stderr, files."""
    out = tmp_path_factory.mktemp("verify")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["verify", "--tiny", "--out", str(out)])
    return {"code": code, "out": stdout.getvalue(), "err": stderr.getvalue(), "dir": out,
            "report": json.loads((out / "report.json").read_text())}


def _figures(folder: Path, report: dict) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in report["figures"]}


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


# ----------------------------------------------------------------------------
# What `shapedsde verify` prints and writes


def test_verify_prints_each_verdict_once_then_a_tally_naming_the_html(tiny_run):
    lines = tiny_run["out"].splitlines()
    rep = tiny_run["report"]
    assert lines[:-1] == rep["verdicts"] and len(rep["verdicts"]) >= 9
    s = rep["summary"]
    assert sum(s.values()) == len(rep["verdicts"])
    assert lines[-1] == (f"verdicts: {s['PASS']} PASS, {s['FAIL']} FAIL, {s['NO POWER']} NO "
                         f"POWER; report {tiny_run['dir'] / 'report.html'} (numbers in "
                         "report.json, figures beside)")
    assert tiny_run["code"] == (1 if s["FAIL"] else 0)


def test_verify_announces_every_stage_on_stderr(tiny_run):
    stages = [k for k in STAGES
              if k not in ("every_block", "depth", "tangent", "normalised", "spectrum")]
    announced = re.findall(r"^\[(\d+)/(\d+)\] (.+)$", tiny_run["err"], flags=re.M)
    assert announced == [(str(i), str(len(stages)), STAGES[k]) for i, k in enumerate(stages, 1)]
    assert "Traceback" not in tiny_run["err"]


def test_verify_writes_exactly_the_report_files(tiny_run):
    rep = tiny_run["report"]
    names = {p.name for p in tiny_run["dir"].iterdir()}
    assert names == {"report.json", "report.html", *rep["figures"]}  # no .partial left
    assert {"one_step_error.png", "law_distance_0.png", "law_ecdf_0.png"} <= set(rep["figures"])
    for name in rep["figures"]:
        assert _png_size((tiny_run["dir"] / name).read_bytes())[0] > 50


def test_written_html_is_the_render_of_the_written_json(tiny_run):
    d, rep = tiny_run["dir"], tiny_run["report"]
    assert (d / "report.html").read_text() == render_html(rep, _figures(d, rep))


def test_run_report_records_command_settings_and_run_times(tiny_run):
    rep = tiny_run["report"]
    assert rep["command"] == f"shapedsde verify --tiny --seed 0 --out {tiny_run['dir']}"
    assert rep["settings"]["mode"] == "tiny" and rep["settings"]["seed"] == 0
    assert rep["settings"]["every_block"] is False and rep["settings"]["depth"] is False
    assert rep["seconds"]["total"] > 0 and "platform" in rep["versions"]


def test_html_holds_verdicts_figures_settings_and_command(tiny_run):
    page = (tiny_run["dir"] / "report.html").read_text()
    rep = tiny_run["report"]
    srcs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [name for name, _ in srcs] == rep["figures"]
    for name, data in srcs:  # every figure embedded, byte for byte
        assert base64.b64decode(data) == (tiny_run["dir"] / name).read_bytes()
    assert page.count('<td class="verdict ') == len(rep["verdicts"])
    assert rep["command"] in page and tally(rep) in page
    assert "one_step_pairs" in page and "torch" in page
    assert "src=\"http" not in page and "href=" not in page  # self-contained


def test_strip_machine_fields_leaves_none(tiny_run):
    stripped = strip_machine_fields(tiny_run["report"])
    keys = _all_keys(stripped)
    assert keys & MACHINE_KEYS == set()
    assert _all_keys(tiny_run["report"]) & MACHINE_KEYS >= {"seconds", "wall_s", "platform"}
    assert stripped["verdicts"] == tiny_run["report"]["verdicts"]


def _all_keys(x: Any) -> set[str]:
    if isinstance(x, dict):
        return set(x).union(*(_all_keys(v) for v in x.values()))
    if isinstance(x, list):
        return set().union(*(_all_keys(v) for v in x))
    return set()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (/usr/bin/chromium)")
def test_html_report_renders_every_figure_in_headless_chromium(tiny_run, tmp_path):
    """Load the page in headless Chromium; a probe script marks each image with its
    decoded size, which must be the PNG's own size (0 x 0: not rendered)."""
    d, rep = tiny_run["dir"], tiny_run["report"]
    probe = ("<script>window.addEventListener('load', () => { for (const i of document.images)"
             " i.setAttribute('data-rendered', i.naturalWidth + 'x' + i.naturalHeight);"
             " document.body.setAttribute('data-probe', 'done'); });</script>")
    page = tmp_path / "probe.html"
    page.write_text((d / "report.html").read_text().replace("</body>", probe + "</body>"))
    res = subprocess.run([str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                          "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert 'data-probe="done"' in res.stdout, res.stderr[-2000:]
    got = re.findall(r'<img alt="([^"]+)"[^>]*data-rendered="(\d+)x(\d+)"', res.stdout)
    assert [name for name, _, _ in got] == rep["figures"]
    for name, w, h in got:
        assert (int(w), int(h)) == _png_size((d / name).read_bytes()), name


# ----------------------------------------------------------------------------
# The renderer


def _report(**extra: Any) -> dict:
    return {"command": "shapedsde verify --tiny --seed 3", "settings": {"seed": 3, "mode": "tiny",
            "config": {"law_nets": 400}}, "versions": {"torch": "2.x"}, "seeds": {"a": 1},
            "verdicts": ["PASS one-step a <b> & c: z 1.0",
                         "FAIL depth attention {'gamma': 0.9} T=1: P(exit) 0.3",
                         "NO POWER law-at-T rho01 n=32: KS D=0.04"],
            "summary": {"PASS": 1, "FAIL": 1, "NO POWER": 1}, "figures": ["one_step_error.png"],
            **extra}


def test_render_html_escapes_text_and_colours_verdicts():
    page = render_html(_report(command="run <script>alert(1)</script>"),
                       {"one_step_error.png": PNG})
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "one-step a &lt;b&gt; &amp; c" in page
    for cls, verdict in (("PASS", "PASS"), ("FAIL", "FAIL"), ("NO-POWER", "NO POWER")):
        assert f'<td class="verdict {cls}">{verdict}</td>' in page
    assert "depth attention {&#x27;gamma&#x27;: 0.9} T=1</td>" in page  # dict colons kept
    assert "1 PASS, 1 FAIL, 1 NO POWER" in page
    assert base64.b64encode(PNG).decode() in page
    assert html_mod.caption("one_step_error.png") in page


def test_render_html_is_deterministic_and_shows_run_times_only_when_present():
    a = render_html(_report(), {"one_step_error.png": PNG})
    assert a == render_html(_report(), {"one_step_error.png": PNG})
    assert "Run time" not in a
    assert "Run time" in render_html(_report(seconds={"total": 2.5}), {"one_step_error.png": PNG})


def test_render_html_refuses_a_missing_figure():
    with pytest.raises(ValueError, match="one_step_error.png"):
        render_html(_report(), {})


@pytest.mark.parametrize("line, parts", [
    ("PASS closed form n=8: max|z| 1", ("PASS", "closed form n=8", "max|z| 1")),
    ("NO POWER depth x {'a': 1}: p 0.1: q", ("NO POWER", "depth x {'a': 1}", "p 0.1: q")),
    ("no verdict here", ("", "no verdict here", "")),
])
def test_split_verdict(line, parts):
    assert split_verdict(line) == parts


def test_reference_write_removes_files_of_an_older_report(tmp_path):
    for name in ("blowup_tails.json", "law_ecdf_7.png", "report.html", "notes.txt"):
        (tmp_path / name).write_text("old")
    _write_report(tmp_path, _report(), {"one_step_error.png": PNG}, clean=True)
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.html", "notes.txt",
                                                   "one_step_error.png"}
    rep = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.html").read_text() == render_html(rep, {"one_step_error.png": PNG})


# ----------------------------------------------------------------------------
# The verify command's arguments


@pytest.mark.parametrize("argv, needle", [
    (["--reference", "--out", "x"], "takes no --out"),
    (["--tiny", "--full"], "not allowed with"),
    (["--workers", "0"], "--workers"),
    (["--seed", "-1"], "--seed"),
])
def test_verify_rejects_bad_arguments(argv, needle, capsys):
    assert_one_line_error(*run(["verify", *argv], capsys)[::2], needle)


def test_verify_refuses_an_output_folder_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("")
    assert_one_line_error(*run(["verify", "--tiny", "--out", str(f)], capsys)[::2], "is a file")


def test_verify_reference_writes_the_source_tree_report(monkeypatch, capsys, tmp_path):
    """--reference: verify/out/ of this checkout, the reference flag, and the command."""
    import shapedsde.verification as verification

    got: dict[str, Any] = {}

    def fake(**kwargs: Any) -> dict:
        got.update(kwargs)
        return {"summary": {"PASS": 3, "FAIL": 0, "NO POWER": 1}}

    monkeypatch.setattr(verification, "run_verification", fake)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    code, out, _ = run(["verify", "--quick", "--reference"], capsys)
    assert code == 0
    assert got["out_dir"] == cli.reference_dir() == Path.cwd() / "verify" / "out"
    assert got["reference"] is True and got["quick"] is True and got["seed"] == 0
    assert got["command"] == "shapedsde verify --quick --seed 0 --reference"
    assert out.strip() == ("verdicts: 3 PASS, 0 FAIL, 1 NO POWER; report verify/out/report.html "
                           "(numbers in report.json, figures beside)")


def test_write_files_changes_nothing_when_one_file_cannot_be_staged(tmp_path):
    from shapedsde._io import write_files

    (tmp_path / "report.json").write_text("old")
    (tmp_path / "no").write_text("")  # a file where the second one's folder must go
    with pytest.raises((OSError, ValueError)):
        write_files({tmp_path / "report.json": b"new", tmp_path / "no" / "such.png": b"x"})
    (tmp_path / "no").unlink()
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no .partial left
    assert (tmp_path / "report.json").read_text() == "old"
