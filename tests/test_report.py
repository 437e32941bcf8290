"""Tests of the HTML report (src/twoway/report/) and ``twoway report``.

One model is compiled and sampled twice (two fits of one table, shared by
every test through module-scoped fixtures); the one-fit and the two-fit
reports are rendered once each. The browser test opens the two-fit report in
headless Chromium (Debian's package at /usr/bin/chromium, installed by
``scripts/ensure-chromium.sh``, which ``make test`` runs first) through
Playwright, checks that every section renders with its images loaded and no
console errors, and keeps a screenshot at ``test-artifacts/report.png``.
"""

from __future__ import annotations

import base64
import html
import os
import re
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import twoway
from twoway.app.cli import main
from twoway.errors import FitError
from twoway.fit import Fit, compile_model
from twoway.app.report import render_report, write_report

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("TWOWAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PER_FIT = ("model", "fitted", "effects", "scales", "covariance", "traces", "diagnostics", "checks", "recovery")


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim():
    return twoway.simulate("additive", 5, 6, 2, seed=4, missing=0.1,
                           row_labels=[f"T{i}" for i in range(1, 6)], col_labels=[f"G{j}" for j in range(1, 7)])


@pytest.fixture(scope="module")
def fits(sim):
    compiled = compile_model("additive", sim.data, progress=False)
    return [compiled.sample(chains=2, draws=200, tune=200, seed=s, progress=False) for s in (1, 2)]


@pytest.fixture(scope="module")
def one_html(fits, sim):
    return render_report(fits[0], truth=sim.truth_dict())


@pytest.fixture(scope="module")
def two_report(fits, sim, tmp_path_factory):
    """The report of two fits, the second given made-up covariance matrices (see :func:`_with_matrices`)."""
    path = tmp_path_factory.mktemp("report") / "two.html"
    write_report([fits[0], _with_matrices(fits[1])], path, names=["first", "second"], truth=sim.truth_dict())
    return path


class _Collect(HTMLParser):
    """Every tag with its attributes, and the id of each <section>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(text: str) -> list[tuple[str, dict]]:
    p = _Collect()
    p.feed(text)
    return p.tags


def section(text: str, sid: str) -> str:
    m = re.search(rf'<section id="{re.escape(sid)}">(.*?)</section>', text, re.S)
    assert m, f"no section {sid!r}"
    return m.group(1)


# ---------------------------------------------------------------------------
# the HTML file
# ---------------------------------------------------------------------------


def test_one_self_contained_file(one_html):
    tags = parse(one_html)
    assert not [t for t, _ in tags if t in ("script", "iframe", "object", "embed")]
    assert not [a for t, a in tags if t == "link"]  # no external stylesheet, icon or font
    for tag, attrs in tags:
        for key in ("src", "href", "srcset", "poster", "data"):
            value = attrs.get(key)
            if value is None:
                continue
            assert not re.match(r"\s*(https?:)?//", value, re.I), f"<{tag} {key}={value[:60]!r}> reaches the network"
            if key == "href":
                assert value.startswith("#"), value
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", one_html, re.I)
    assert not re.search(r"@import", one_html)
    images = [a["src"] for t, a in tags if t == "img"]
    assert len(images) >= 6
    for src in images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == PNG_SIGNATURE and len(png) > 1000


def test_every_section_present(one_html):
    ids = [a["id"] for t, a in parse(one_html) if t == "section"]
    assert len(ids) == len(set(ids))
    for sid in ("overview", "data") + PER_FIT:
        assert sid in ids, sid
    assert "comparison" not in ids  # one fit: nothing to compare
    assert ids.index("data") < ids.index("fitted") < ids.index("diagnostics")
    assert '<a href="#effects">' in one_html  # the table of contents links every section


def test_sections_hold_what_they_promise(one_html, fits):
    assert "<img" in section(one_html, "data") and "missing" in section(one_html, "data")
    assert section(one_html, "fitted").count("<img") == 2
    for sid in ("effects", "scales", "traces", "checks"):
        assert "<img" in section(one_html, sid), sid
    diag = section(one_html, "diagnostics")
    assert "max R-hat" in diag and "divergent transitions" in diag
    for warning in fits[0].summary().warnings:
        assert html.escape(warning.split(":")[0]) in diag
    checks = section(one_html, "checks")
    assert "row_var[T1]" in checks and "p_value" in checks
    rec = section(one_html, "recovery")
    assert "row_sd[T1]" in rec and re.search(r"\d+ of \d+ true values", rec)
    assert "additive" in section(one_html, "overview")


def test_covariance_section_skipped_without_a_matrix(one_html, fits):
    assert not any(n in fits[0].posterior for n in ("row_cov", "col_cov", "row_corr", "col_corr"))
    cov = section(one_html, "covariance")
    assert "<img" not in cov
    assert "no row or column covariance matrix" in cov


def _with_matrices(fit: Fit) -> Fit:
    """The fit with a made-up row covariance and column correlation per draw."""
    post = fit.posterior
    n_c, n_d, n, k = post.sizes["chain"], post.sizes["draw"], post.sizes["row"], post.sizes["col"]
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n_c, n_d, n, n))
    cov = a @ np.swapaxes(a, -1, -2) / n + np.eye(n)
    corr = np.broadcast_to(0.5 ** np.abs(np.subtract.outer(np.arange(k), np.arange(k))), (n_c, n_d, k, k))
    post = post.assign(row_cov=(("chain", "draw", "row", "row_bis"), cov),
                       col_corr=(("chain", "draw", "col", "col_bis"), corr.copy()))
    post = post.assign_coords(row_bis=post["row"].values, col_bis=post["col"].values)
    tree = fit.tree.copy()
    tree["posterior"] = xr.DataTree(post)
    return Fit(tree)


def test_covariance_section_shows_posterior_mean_matrices(two_report):
    cov = section(two_report.read_text(encoding="utf-8"), "covariance-2")
    assert cov.count("<img") == 2
    assert "row_cov" in cov and "col_corr" in cov


def test_two_fits_are_compared(two_report):
    text = two_report.read_text(encoding="utf-8")
    ids = [a["id"] for t, a in parse(text) if t == "section"]
    assert len(ids) == len(set(ids))
    assert "comparison" in ids
    for sid in PER_FIT:
        assert sid in ids and f"{sid}-2" in ids, sid
    comp = section(text, "comparison")
    assert "elpd" in comp and "first" in comp and "second" in comp
    assert "is preferred over" in comp


def test_bad_input_is_refused(fits, tmp_path):
    with pytest.raises(FitError, match="needs a fit"):
        write_report([], tmp_path / "r.html")
    with pytest.raises(FitError, match="Fit objects"):
        write_report(["fit.nc"], tmp_path / "r.html")
    with pytest.raises(FitError, match="one non-empty name per fit"):
        write_report(fits, tmp_path / "r.html", names=["only-one"])
    with pytest.raises(FitError, match="does not exist"):
        write_report(fits[0], tmp_path / "missing" / "r.html")


def test_cli_report(fits, sim, tmp_path, capsys):
    fit_path = fits[0].save(tmp_path / "additive.nc")
    sim.write_truth(tmp_path / "truth.json")
    out = tmp_path / "report.html"
    status = main(["report", str(fit_path), "-o", str(out), "--truth", str(tmp_path / "truth.json")])
    stdout, err = capsys.readouterr()
    assert status == 0, err
    assert str(out) in stdout
    text = out.read_text(encoding="utf-8")
    assert '<section id="recovery">' in text and "additive" in text
    status = main(["report", str(fit_path), "-o", str(out), "--names", "a,b"])
    _, err = capsys.readouterr()
    assert status == 2 and err.startswith("twoway: error: ") and "--names" in err and "Traceback" not in err
    status = main(["report", str(tmp_path / "truth.json"), "-o", str(out)])
    _, err = capsys.readouterr()
    assert status == 2 and "not a twoway fit" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------
# in a browser
# ---------------------------------------------------------------------------


def _browser():
    """Playwright's sync API, or a test failure that says what is missing."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}; run scripts/ensure-chromium.sh "
                    "(as root it installs Debian's chromium package; 'make test' runs it first).")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is not installed; run: .venv/bin/pip install -e '.[test]' "
                    "(never 'playwright install': the test uses the system Chromium).")
    return sync_playwright


def test_report_renders_in_chromium(two_report):
    sync_playwright = _browser()
    text = two_report.read_text(encoding="utf-8")
    expected = [a["id"] for t, a in parse(text) if t == "section"]
    console: list[str] = []
    failed: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: console.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: failed.append(r.url[:80]))
            page.goto(two_report.as_uri(), wait_until="load")
            state = page.evaluate("""() => ({
                images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]),
                sections: Array.from(document.querySelectorAll('section')).map(s => {
                    const r = s.getBoundingClientRect();
                    return [s.id, r.width, r.height, s.querySelector('h2') ? s.querySelector('h2').innerText : ''];
                }),
                title: document.title,
            })""")
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            context.close()
    assert not console, console
    assert not failed, failed
    assert state["title"].startswith("twoway report")
    assert [s[0] for s in state["sections"]] == expected
    for sid, width, height, heading in state["sections"]:
        assert width > 300 and height > 40 and heading, (sid, width, height, heading)
    assert len(state["images"]) == text.count("<img ")
    for complete, width, alt in state["images"]:
        assert complete and width > 0, f"image {alt!r} did not load"
    shot = (ARTIFACTS / "report.png").read_bytes()
    assert shot[:8] == PNG_SIGNATURE and len(shot) > 50_000


# ---------------------------------------------------------------------------
# contrasts, alt text, predictive-check bars
# ---------------------------------------------------------------------------

NMA_LINES = ["s1,A,0.0,0.2", "s1,B,1.0,0.2", "s2,A,0.5,0.25", "s2,C,2.5,0.25", "s3,B,1.2,0.3", "s3,C,2.1,0.3",
             "s4,A,-0.2,0.2", "s4,B,0.9,0.2", "s4,C,2.0,0.2"]


@pytest.fixture(scope="module")
def nma_fit(tmp_path_factory):
    """A small network meta-analysis (studies x treatments, known se) fitted through the CLI with common-effect."""
    folder = tmp_path_factory.mktemp("nma")
    table = folder / "nma.csv"
    table.write_text("row,col,value,se\n" + "\n".join(NMA_LINES) + "\n", encoding="utf-8")
    fit_path = folder / "nma.nc"
    assert main(["fit", str(table), "--model", "common-effect", "--chains", "2", "--draws", "200", "--seed", "1",
                 "--no-progress", "--quiet", "--out", str(fit_path)]) == 0
    return fit_path


def _contrast_rows(text: str) -> dict[str, list[str]]:
    """The contrasts section's table rows: name -> the cells' texts."""
    body = section(text, "contrasts")
    rows = re.findall(r"<tr[^>]*><td>(.*?)</td>(.*?)</tr>", body, re.S)
    return {html.unescape(name): re.findall(r"<td>(.*?)</td>", cells) for name, cells in rows}


def test_cli_report_of_a_network_shows_contrasts_against_the_first_treatment(nma_fit, tmp_path, capsys):
    out = tmp_path / "nma.html"
    status = main(["report", str(nma_fit), "-o", str(out)])
    _, err = capsys.readouterr()
    assert status == 0, err
    text = out.read_text(encoding="utf-8")
    assert '<a href="#contrasts">' in text
    rows = _contrast_rows(text)
    assert list(rows) == ["B - A", "C - A"]
    fit = Fit.load(nma_fit)
    expected = fit.contrasts(col="A").summary
    for name, cells in rows.items():
        difference, _sd, low, high, positive = (float(c) for c in cells)
        assert difference == pytest.approx(float(expected.loc[name, "mean"]), abs=1e-3)
        assert low < difference < high
        assert 0 <= positive <= 1
    assert float(rows["C - A"][0]) > 1.5 and float(rows["C - A"][4]) > 0.99  # C is clearly above A
    assert "each column mean minus the mean of column A" in section(text, "contrasts")


def test_cli_report_takes_contrasts_once_each_and_refuses_an_unknown_level(nma_fit, tmp_path, capsys):
    out = tmp_path / "nma.html"
    status = main(["report", str(nma_fit), "-o", str(out), "--contrast", "col=B", "--contrast", "row=s1",
                   "--contrast", "col=B"])
    _, err = capsys.readouterr()
    assert status == 0, err
    body = section(out.read_text(encoding="utf-8"), "contrasts")
    assert body.count("<h3>") == 2
    assert body.index("mean of column B") < body.index("mean of row s1")
    assert "A - B" in body and "s2 - s1" in body and "B - A" not in body
    status = main(["report", str(nma_fit), "-o", str(tmp_path / "bad.html"), "--contrast", "col=Z"])
    _, err = capsys.readouterr()
    assert status == 2 and len(err.strip().splitlines()) == 1 and "col=Z" in err and "A, B, C" in err
    assert not (tmp_path / "bad.html").exists()


def test_no_contrasts_section_by_default_for_random_effects(one_html):
    ids = [a["id"] for t, a in parse(one_html) if t == "section"]
    assert "contrasts" not in ids


def test_every_image_has_a_meaningful_alt(one_html, two_report):
    for text in (one_html, two_report.read_text(encoding="utf-8")):
        images = [a for t, a in parse(text) if t == "img"]
        assert images
        for attrs in images:
            alt = (attrs.get("alt") or "").strip()
            assert len(alt.split()) >= 3, attrs.get("alt")


def test_variance_bars_of_the_predictive_checks_stop_at_zero(fits, monkeypatch):
    from twoway.app.report import figures

    low, high = figures.check_intervals({"rep_mean": [1.0, 5.0], "rep_sd": [2.0, 1.0], "nonnegative": True})
    assert low.tolist() == [0.0, 3.0] and high.tolist() == [5.0, 7.0]
    low, _ = figures.check_intervals({"rep_mean": [1.0], "rep_sd": [2.0]})  # a mean may go below 0
    assert low.tolist() == [-3.0]

    seen = []
    real = figures.checks_png

    def spy(panels):
        seen.extend(panels)
        return real(panels)

    monkeypatch.setattr(figures, "checks_png", spy)
    render_report(fits[0])
    by_title = {p["title"]: p for p in seen}
    assert by_title["row variances"]["nonnegative"] and by_title["column variances"]["nonnegative"]
    assert not by_title["row means"].get("nonnegative", False)
    for p in seen:
        if p["title"].endswith("variances"):
            assert (figures.check_intervals(p)[0] >= 0).all()
