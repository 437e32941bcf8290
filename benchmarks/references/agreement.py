"""Agreement of twoway's covariate coefficients with lme4 and metafor on three published data sets, in one run.

* **InstEval** (lme4's ``InstEval``: 73,421 ratings of 1,128 lecturers by 2,972
  students): ``y ~ service + studage + (1|s) + (1|d)``; ``service`` (0/1) varies
  by cell, ``studage`` (4 levels) is constant within a student (a row-level
  factor next to random rows). twoway: ``twoway fit insteval.csv --row s --col d
  --value y --model crossed --covariates "service + C(studage)"``.
* **Oats** (nlme's ``Oats``, Yates 1935, the split-plot trial of Pinheiro and
  Bates 2000): ``yield ~ nitro + Variety + (1|Block) + (1|Block:Variety)``;
  twoway: rows = blocks, columns = varieties (fixed), one replicate per
  nitrogen sub-plot, random cell effect = whole plots, ``covariates = "nitro"``
  (``benchmarks/references/oats.toml``).
* **BCG** (metafor's ``dat.bcg``, Colditz et al. 1994: 13 trials of the BCG
  vaccine), a meta-regression: metafor's ``rma(yi, vi, mods = ~ ablat)`` of the
  log odds ratios on absolute latitude; twoway fits the arms' log odds with
  their known se (``src/twoway/examples/bcg.csv``): fixed trial and arm effects,
  heterogeneity ``sigma`` on each arm, ``covariates = "vaccinated:ablat"``
  (``benchmarks/references/bcg.toml``). With fixed trial effects the arm-level
  model is metafor's contrast-level one with ``tau^2 = 2 sigma^2``; the
  coefficient of ``vaccinated:ablat`` is metafor's ``ablat``.

lme4's and metafor's REML estimates and standard errors come from
``benchmarks/references/reference_fits.R`` run here (R and lme4 from Debian,
installed by ``benchmarks/peers/setup-lme4.sh``). The check: every
coefficient's posterior mean within half of the reference's standard error; the
variance components' posterior means are printed beside lme4's.

Run: ``.venv/bin/python benchmarks/references/agreement.py [--seed 1] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: lme4's names of the terms -> twoway's.
TERMS = {"insteval": {"service1": "service", "studage4": "C(studage)[T.4]", "studage6": "C(studage)[T.6]",
                      "studage8": "C(studage)[T.8]"},
         "oats": {"nitro": "nitro"},
         "bcg": {"ablat": "vaccinated:ablat"}}
#: lme4's variance components -> twoway's parameters.
SDS = {"insteval": {"sd:s": "row_effect_sd", "sd:d": "col_effect_sd", "sd:Residual": "sigma"},
       "oats": {"sd:Block": "row_effect_sd", "sd:Block:Variety": "cell_sd", "sd:Residual": "sigma"},
       "bcg": {"sd:tau": "tau"}}


def lme4_reference(work: Path) -> pd.DataFrame:
    """Install R and lme4 if needed, export the data sets and fit them with lme4 (``lme4.csv``)."""
    subprocess.run(["bash", str(ROOT / "benchmarks" / "peers" / "setup-lme4.sh")], check=True)
    subprocess.run(["Rscript", str(HERE / "reference_fits.R"), str(work)], check=True, capture_output=True)
    return pd.read_csv(work / "lme4.csv")


def twoway_fit(args: list[str], out: Path) -> tuple[float, object]:
    """``twoway fit ARGS --out OUT`` as a process; its wall seconds and the fit."""
    from twoway import Fit

    exe = Path(sys.executable).with_name("twoway")
    t0 = time.perf_counter()
    done = subprocess.run([str(exe), "fit", *args, "--out", str(out), "--quiet", "--no-progress"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"twoway fit {' '.join(args)} failed: {done.stderr.strip()}")
    return wall, Fit.load(out)


def compare(name: str, fit, ref: pd.DataFrame, wall: float) -> dict:
    """Coefficients and sds of ``fit`` against lme4's rows of ``ref`` for data set ``name``."""
    post = fit.posterior
    rows = ref[ref["dataset"] == name]
    out = {"wall_twoway": wall, "wall_reference": float(rows["seconds"].iloc[0]), "engine": fit.info.get("engine"),
           "path": fit.info.get("likelihood_path"), "coef": {}, "sd": {}}
    print(f"\n## {name}: twoway {wall:.1f} s ({out['engine']}, path {out['path']}), "
          f"reference fit {out['wall_reference']:.1f} s\n")
    print("| term | reference estimate | reference se | twoway mean | twoway sd | difference / reference se | within 0.5 se |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for lme4_name, term in TERMS[name].items():
        r = rows[rows["term"] == lme4_name].iloc[0]
        v = post["coef"].sel(term=term).values.ravel()
        z = (v.mean() - r["estimate"]) / r["se"]
        ok = bool(abs(z) <= 0.5)
        out["coef"][term] = {"reference": float(r["estimate"]), "reference_se": float(r["se"]), "mean": float(v.mean()),
                             "sd": float(v.std()), "z": float(z), "ok": ok}
        print(f"| {term} | {r['estimate']:.4f} | {r['se']:.4f} | {v.mean():.4f} | {v.std():.4f} | {z:+.3f} | "
              f"{'yes' if ok else 'NO'} |")
    print("\n| variance component | reference (REML) | twoway posterior mean | 94% interval |")
    print("|---|---:|---:|---|")
    for lme4_name, param in SDS[name].items():
        r = rows[rows["term"] == lme4_name].iloc[0]
        # bcg: metafor's tau is the log odds ratio's heterogeneity, twoway's sigma each arm's: tau = sqrt(2) sigma
        v = (np.sqrt(2.0) * post["sigma"] if param == "tau" else post[param]).values.ravel()
        lo, hi = np.quantile(v, [0.03, 0.97])
        out["sd"][param] = {"reference": float(r["estimate"]), "mean": float(v.mean()), "lo": float(lo), "hi": float(hi)}
        print(f"| {param} | {r['estimate']:.4f} | {v.mean():.4f} | [{lo:.4f}, {hi:.4f}] |")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="twoway-agreement-"))
    ref = lme4_reference(work)
    print(f"lme4 {ref['lme4'].iloc[0]}, metafor {ref['metafor'].iloc[0]} on R {ref['R'].iloc[0]}; data and fits in {work}")
    oats = pd.read_csv(work / "oats.csv")
    oats["subplot"] = "N" + oats["nitro"].map(lambda x: f"{x:.1f}")
    oats.to_csv(work / "oats-long.csv", index=False)
    seed = ["--seed", str(args.seed)]
    figures = {}
    wall, fit = twoway_fit([str(work / "insteval.csv"), "--row", "s", "--col", "d", "--value", "y",
                            "--model", "crossed", "--covariates", "service + C(studage)", *seed],
                           work / "insteval.nc")
    figures["insteval"] = compare("insteval", fit, ref, wall)
    wall, fit = twoway_fit([str(work / "oats-long.csv"), "--row", "Block", "--col", "Variety", "--value", "yield",
                            "--replicate", "subplot", "--model", str(HERE / "oats.toml"), *seed],
                           work / "oats.nc")
    figures["oats"] = compare("oats", fit, ref, wall)
    wall, fit = twoway_fit([str(ROOT / "src" / "twoway" / "examples" / "bcg.csv"), "--row", "trial", "--col", "arm",
                            "--value", "logodds", "--se", "se", "--model", str(HERE / "bcg.toml"), *seed],
                           work / "bcg.nc")
    figures["bcg"] = compare("bcg", fit, ref, wall)
    every = all(c["ok"] for f in figures.values() for c in f["coef"].values())
    print(f"\n{'PASS' if every else 'FAIL'}: every coefficient's posterior mean within half of the reference's standard error")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
