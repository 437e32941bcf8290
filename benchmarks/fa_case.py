"""Fit a table written by `twoway simulate` with a Kronecker model and compare with its truth file.

Prints the largest R-hat and smallest bulk ESS over all parameters, the 94% interval coverage of each
structure parameter, the coverage of factor loadings up to the sign of the factor (k = 1), and of the
covariance matrices' distinct entries. The case in README.md's "Calibration" section:

    .venv/bin/twoway simulate --rows 30 --cols 6 --replicates 3 --model kronecker --row-structure fa:1 \\
        --col-structure cs --seed 21 --out t.csv --truth t.json
    .venv/bin/python benchmarks/fa_case.py t.csv t.json fa:1 cs t_fit.nc
"""
import json, subprocess, sys, numpy as np
from twoway.fit import Fit
from twoway.results.diagnostics import rhat, ess_bulk
csv, truth_path, rs, cs, out = sys.argv[1:6]
subprocess.run([".venv/bin/twoway", "fit", csv, "--model", "kronecker", "--row-structure", rs, "--col-structure", cs,
                "--seed", "1", "--out", out, "--quiet"], check=True)
f = Fit.load(out); po = f.posterior
truth = json.load(open(truth_path))["truth"]
wr, we = 0, 1e9
for n in po.data_vars:
    x = po[n].values; x = x.reshape(x.shape[0], x.shape[1], -1)
    r, e = rhat(x), ess_bulk(x)
    if np.isfinite(r).any():
        wr, we = max(wr, np.nanmax(r)), min(we, np.nanmin(e))
print(f"max R-hat {wr:.3f}, min bulk ESS {we:.0f}")
hit = tot = 0
for n in po.data_vars:
    if n not in truth or n.endswith("_cov") or n in ("row_mean", "col_mean", "row_effect", "col_effect", "intercept"):
        continue
    tv = truth[n]; tv = np.asarray(list(tv.values()) if isinstance(tv, dict) else tv, dtype=float)
    x = po[n].values.reshape(-1, *po[n].shape[2:]); lo, hi = np.quantile(x, [0.03, 0.97], axis=0)
    c = (lo <= tv) & (tv <= hi); hit += c.sum(); tot += c.size
    print(f"{n}: 94% interval covers {c.sum()} of {c.size} (truth above {(tv > hi).sum()}, below {(tv < lo).sum()})")
print(f"structure parameters covered: {hit} of {tot}")
for side in ("row", "col"):
    n = f"{side}_loadings"
    if n in po and n in truth and po[n].shape[-1] == 1:
        x = po[n].values.reshape(-1, po[n].shape[2]); tv = np.asarray(truth[n], dtype=float)[:, 0]
        x = x * np.sign(x @ tv)[:, None]
        lo, hi = np.quantile(x, [0.03, 0.97], axis=0); c = (lo <= tv) & (tv <= hi)
        print(f"{n} up to the sign of the factor: covers {c.sum()} of {c.size}")
    n = f"{side}_cov"
    if n in po and n in truth:
        x = po[n].values.reshape(-1, *po[n].shape[2:]); tv = np.asarray(truth[n], dtype=float)
        iu = np.triu_indices(tv.shape[0]); lo, hi = np.quantile(x, [0.03, 0.97], axis=0)
        c = ((lo <= tv) & (tv <= hi))[iu]
        print(f"{n} (upper triangle with diagonal): covers {c.sum()} of {c.size} ({100 * c.mean():.0f}%)")
