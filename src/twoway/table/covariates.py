"""Covariates in the mean: the design matrix of a formula's right-hand side over a table's cells.

The mean of cell (r, i, j) is ``intercept + row_effect[i] + col_effect[j] + X[c] @ coef``, where
``X`` (n_obs, p) encodes covariate columns of the long table through a model formula such as
``"dose + C(site) + dose:C(site)"``. This module parses such a formula, builds ``X`` over the
observed cells of a :class:`~twoway.table.data.TwoWayData` and checks that it can be estimated next
to the intercept: no constant term, no factor with a single level, no collinear terms. It also
says where each term lives (constant within rows, within columns, or varying by cell), which the
plan needs to tell a covariate from a fixed row or column effect.

Formulas are handled by `formulaic <https://matthewwardrop.github.io/formulaic/>`_: it is
maintained, works on pandas frames directly, keeps the state of stateful transforms
(``center(x)``, ``scale(x)``, spline knots of ``bs(x, df=3)`` and ``cr(x, df=3)``) and the
levels of factors in a ``ModelSpec``, so new cells (predictions) are encoded exactly as the
fitted table was, and it codes factors with treatment contrasts (reference level first, or
``C(g, Treatment("b"))`` / ``C(g, contr.treatment(base="b"))`` to choose it). The model has its
own intercept: the formula is built with formulaic's intercept (so that treatment coding drops
the reference level), which is then removed; an intercept written by the user (``1 + x``,
``0 + x``, ``x - 1``) is refused.

Numbers: a covariate column is numeric (float64) when every value reads as a number and text
otherwise (see :class:`~twoway.table.data.TwoWayData`); a text column is a factor. A numeric
column wrapped in ``C()`` is a factor too; when its values are whole numbers its levels are
written without decimals (``C(dose)[T.2]``).

formulaic and pandas are imported inside the functions that use them, so ``import twoway``
stays light.
"""

from __future__ import annotations

import ast
import difflib
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from twoway.errors import DataError, ModelError
from twoway.table.io._common import list_names as _list_names
from twoway.table.io._common import quote as _q

if TYPE_CHECKING:
    from twoway.table.data import TwoWayData

__all__ = ["LEVELS", "CovariateDesign", "FactorLevels", "covariate_design", "required_variables"]

#: Where a term lives: constant within every row, within every column, or neither.
LEVELS = ("row", "col", "cell")

_LEVEL_TEXT = {
    "row": "constant within each row",
    "col": "constant within each column",
    "cell": "varies by cell",
}

# relative tolerances: a column whose spread is below _CONSTANT * its largest size is constant; a
# design whose smallest singular value (unit-RMS columns) is below _COLLINEAR * the largest is collinear
_CONSTANT = 1e-9
_COLLINEAR = 1e-9

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_INTERCEPT_OPERATORS = frozenset({"+", "-", "+-", "~", "|"})


# --------------------------------------------------------------------------
# parsing the formula
# --------------------------------------------------------------------------


def _transforms() -> frozenset[str]:
    """Names formulaic provides in a formula's namespace (``C``, ``np``, ``center``, ``bs``, ...)."""
    from formulaic.transforms import TRANSFORMS

    return frozenset(TRANSFORMS)


def _syntax_message(formula: str, exc: Exception) -> str:
    """One line for a formulaic parsing error, marking where it is."""
    text = str(exc)
    message, _, context = text.partition("\n\n")
    message = " ".join(message.split()).rstrip(".")
    context = _ANSI.sub("", context).strip()
    where = ""
    if "\u29db" in context:  # formulaic marks the culprit with ⧛ ... ⧚ in the formula's text
        start = context.index("\u29db")
        marked = context.replace("\u29db", "\u00bb").replace("\u29da", "\u00ab")
        where = f" at character {start + 1} ({marked})"
    return (
        f"The covariates formula {_q(formula)} is not valid{where}: {message[:1].lower()}{message[1:]}; "
        "write it as a sum of terms such as 'x + C(g) + x:C(g)'."
    )


def _check_intercept_tokens(formula: str) -> None:
    """Raise ModelError if the formula writes an intercept term (``1 +``, ``0 +``, ``- 1``, ``+ 0``)."""
    from formulaic.parser import DefaultFormulaParser

    tokens = [t for t in DefaultFormulaParser(include_intercept=False).get_tokens(formula)
              if t.kind.name != "CONTEXT"]
    for k, token in enumerate(tokens):
        if token.kind.name != "VALUE":
            continue
        try:
            number = float(str(token.token))
        except ValueError:
            continue
        if number not in (0.0, 1.0):
            continue
        before = tokens[k - 1] if k > 0 else None
        after = tokens[k + 1] if k + 1 < len(tokens) else None
        alone_before = before is None or (before.kind.name == "OPERATOR" and str(before.token) in _INTERCEPT_OPERATORS)
        alone_after = after is None or (after.kind.name == "OPERATOR" and str(after.token) in _INTERCEPT_OPERATORS)
        if alone_before and alone_after:
            raise ModelError(
                f"The covariates formula {_q(formula)} must have no intercept term in the formula (the model "
                "has its own); remove '1 +', '0 +', '- 1' or '+ 0' from it."
            )


def _parse(formula: Any):
    """The formulaic Formula of a covariates formula's right-hand side.

    Raises
    ------
    twoway.errors.ModelError
        For a formula that is not a string, is empty, has a syntax error (showing
        where), a left-hand side or several parts, or writes an intercept.
    """
    from formulaic import Formula
    from formulaic.errors import FormulaicError

    if not isinstance(formula, str):
        raise ModelError(f"The covariates formula must be a string such as 'x + C(g)'; got {type(formula).__name__}.")
    text = formula.strip()
    if text.startswith("~"):
        text = text[1:].strip()
    if not text:
        raise ModelError("The covariates formula must have at least one term; got an empty formula.")
    try:
        parsed = Formula(text)
        _check_intercept_tokens(text)
    except FormulaicError as exc:
        raise ModelError(_syntax_message(text, exc)) from None
    except SyntaxError as exc:  # a Python term that is not Python
        raise ModelError(f"The covariates formula {_q(text)} is not valid: {exc.msg}.") from None
    if type(parsed).__name__ != "SimpleFormula":
        raise ModelError(
            f"The covariates formula {_q(text)} must be a right-hand side only (no 'y ~' and no '|'); "
            "the response is the table's value column."
        )
    if not [t for t in parsed if str(t) != "1"]:
        raise ModelError(f"The covariates formula {_q(text)} must have at least one term besides the intercept.")
    return parsed


def _factor_variables(expr: str, method: str) -> tuple[list[str], list[str], list[str]]:
    """The data columns one formulaic factor reads.

    Returns
    -------
    (variables, wrapped, plain) : three lists of str
        All columns read, in order; those read as ``C(column, ...)``; those read otherwise.
    """
    if method == "LOOKUP":
        return [expr], [], [expr]
    if method != "PYTHON":
        return [], [], []
    from formulaic.utils.code import sanitize_variable_names

    aliases: dict[str, str] = {}
    code = sanitize_variable_names(expr, {}, aliases)
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        return [], [], []
    transforms = _transforms()
    found: list[str] = []
    wrapped: list[str] = []
    plain: list[str] = []

    def add(name: str, bucket: list[str]) -> None:
        name = aliases.get(name, name)
        found.append(name)
        bucket.append(name)

    def root(node: ast.AST) -> str | None:
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else None
            if name == "Q" and node.args and isinstance(node.args[0], ast.Constant):
                add(str(node.args[0].value), plain)
                return
            if name == "C" and node.args and isinstance(node.args[0], ast.Name):
                add(node.args[0].id, wrapped)
                for arg in [*node.args[1:], *(k.value for k in node.keywords)]:
                    visit(arg)
                return
            if isinstance(func, ast.Attribute):
                base = root(func)
                if base is None:  # (x + 1).clip(0): the columns inside
                    visit(func.value)
                elif base not in transforms:  # x.fillna(0): the column x
                    add(base, plain)
            elif not isinstance(func, ast.Name):
                visit(func)
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                visit(arg)
            return
        if isinstance(node, ast.Attribute):
            base = root(node)
            if base is not None and base not in transforms:
                add(base, plain)
            return
        if isinstance(node, ast.Name):
            if node.id not in transforms:
                add(node.id, plain)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found, wrapped, plain


def _variables(parsed) -> tuple[tuple[str, ...], frozenset[str]]:
    """The columns a parsed formula reads (in order of appearance) and those read only through ``C()``."""
    found: list[str] = []
    wrapped: set[str] = set()
    plain: set[str] = set()
    for term in parsed:
        for factor in term.factors:
            names, w, p = _factor_variables(str(factor.expr), factor.eval_method.name)
            found.extend(names)
            wrapped.update(w)
            plain.update(p)
    ordered = tuple(dict.fromkeys(found))
    return ordered, frozenset(wrapped - plain)


def required_variables(formula: str) -> tuple[str, ...]:
    """The table columns a covariates formula reads.

    Parameters
    ----------
    formula : str
        The right-hand side of a model formula, e.g. ``"dose + C(site) + np.log(area)"``;
        a leading ``~`` is allowed.

    Returns
    -------
    tuple of str
        Column names in order of first appearance; names of functions and of
        formulaic's transforms (``C``, ``np``, ``center``, ``bs``, ``Treatment``, ...)
        are not columns.

    Raises
    ------
    twoway.errors.ModelError
        On a syntax error (saying where), an intercept term written in the
        formula (``1 +``, ``0 +``, ``- 1``, ``+ 0``), a left-hand side, or no term.
    """
    return _variables(_parse(formula))[0]


# --------------------------------------------------------------------------
# the design
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FactorLevels:
    """The levels of one factor covariate and the terms that code them.

    Attributes
    ----------
    levels : tuple of str
        The factor's levels seen over the observed cells, in coding order.
    reference : str
        The reference level (coded by zeros in treatment coding): the first level
        unless the formula chooses another.
    terms : dict of str -> str
        Non-reference level -> name of the design column of its main effect (its
        coefficient is the difference from the reference level). Empty when the
        factor appears only inside interactions.
    """

    levels: tuple[str, ...]
    reference: str
    terms: dict[str, str]


@dataclass(frozen=True, eq=False)
class CovariateDesign:
    """The design matrix of a covariates formula over a table's observed cells.

    Build one with :func:`covariate_design`.

    Attributes
    ----------
    formula : str
        The formula as given (stripped).
    terms : tuple of str, length p
        Design column names, formulaic's (``x``, ``C(g)[T.b]``, ``np.log(x)``, ``a:b``).
    X : numpy.ndarray, shape (n_obs, p), float64
        The design over the observed cells in ``data.observed_index()`` order (C order
        over (replicate, row, col)); the formula's intercept removed. Read-only.
    level : tuple of str, length p
        Where each term lives: ``"row"`` (constant within every row over its observed
        cells and replicates), ``"col"`` (constant within every column) or ``"cell"``.
    scale : numpy.ndarray, shape (p,), float64
        Standard deviation of each column of ``X`` over the observed cells (> 0).
    variables : tuple of str
        The data columns the formula reads.
    factors : dict of str -> FactorLevels
        Factor covariates (text columns, or columns in ``C()``) by column name.
    """

    formula: str
    terms: tuple[str, ...]
    X: np.ndarray
    level: tuple[str, ...]
    scale: np.ndarray
    variables: tuple[str, ...]
    factors: dict[str, FactorLevels]
    _spec: Any = field(default=None, repr=False)
    _kinds: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def n_terms(self) -> int:
        """int: number of design columns p."""
        return len(self.terms)

    def describe(self) -> list[str]:
        """One line per term: its name and where it lives.

        Returns
        -------
        list of str, length p
            E.g. ``"dose: varies by cell"``, ``"C(site)[T.b]: constant within each row"``.
        """
        return [f"{term}: {_LEVEL_TEXT[level]}" for term, level in zip(self.terms, self.level, strict=True)]

    def design_for(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Encode new cells as the fitted table was encoded.

        Factor levels, the reference level and the state of stateful transforms
        (``center``, ``scale``, spline knots) are those of the table the design was
        built on.

        Parameters
        ----------
        columns : mapping of str -> array_like, or pandas.DataFrame
            One entry per column in :attr:`variables`, each of length n (other
            entries are ignored).

        Returns
        -------
        numpy.ndarray, shape (n, p), float64

        Raises
        ------
        twoway.errors.DataError
            For a missing column (suggesting the closest name), columns of different
            lengths, a missing value (naming the data row, counted from 1), a factor
            level the table did not have, a non-numeric value in a numeric column, or
            a term that is not finite or cannot be evaluated at the new cells.
        """
        pd = _pd()
        if not isinstance(columns, Mapping | pd.DataFrame):
            raise DataError(f"The new cells must be a mapping of column name -> values; got {type(columns).__name__}.")
        available = [str(c) for c in columns]
        for name in self.variables:
            if name not in columns:
                raise DataError(_missing_column_message(name, available, "the new cells", self.formula))
        arrays = {}
        for name in self.variables:
            values = columns[name]
            values = values.to_numpy() if isinstance(values, pd.Series | pd.Index) else np.asarray(values, dtype=object)
            if values.ndim == 0:  # one new cell given as a scalar
                values = values.reshape(1)
            if values.ndim != 1:
                raise DataError(f"The new cells' column {_q(name)} must be 1-D; got shape {values.shape}.")
            arrays[name] = values
        lengths = {len(v) for v in arrays.values()}
        if len(lengths) > 1:
            raise DataError(
                "The new cells' columns must have the same length; got "
                + ", ".join(f"{_q(n)}: {len(v)}" for n, v in arrays.items()) + "."
            )
        n = lengths.pop() if lengths else 0
        frame = {}
        for name, values in arrays.items():
            frame[name] = _new_column(name, values, self._kinds.get(name, "float"))
        frame = pd.DataFrame(frame, index=pd.RangeIndex(n))
        self._check_levels(frame)
        X, names, _ = _materialize(self._spec, frame, self.formula, at="new")
        keep = [k for k, term in enumerate(names) if term != "Intercept"]
        X = np.ascontiguousarray(X[:, keep])
        bad = ~np.isfinite(X)
        if bad.any():
            pos, col = (int(k) for k in np.argwhere(bad)[0])
            raise DataError(
                f"The covariate term {_q(self.terms[col])} is {X[pos, col]} at data row {pos + 1} of the new cells; "
                "give values where its transform is defined."
            )
        return X

    def _check_levels(self, frame) -> None:
        """Raise DataError at the first value of a factor column that the fitted table did not have."""
        for name, info in self.factors.items():
            if name not in frame:
                continue
            text = np.asarray([_level_text(v) for v in frame[name].tolist()], dtype=object)
            unseen = ~np.isin(text, np.asarray(info.levels, dtype=object))
            if unseen.any():
                pos = int(np.argmax(unseen))
                raise DataError(
                    f"The factor {_q(name)} has the level {_q(text[pos])} at data row {pos + 1} of the new cells, "
                    f"which the fitted table did not have; its levels are {_list_names(info.levels)}."
                )


def _pd():
    """pandas, imported on first use."""
    import pandas

    return pandas


def _level_text(x: Any) -> str:
    """A factor level as text: whole numbers without decimals (2.0 -> '2')."""
    if isinstance(x, bool | np.bool_):
        return str(bool(x))
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        v = float(x)
        return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)
    return str(x).strip()


def _missing_column_message(name: str, available: list[str], where: str, formula: str) -> str:
    """A message for a column the formula reads that ``where`` does not have, suggesting the closest name."""
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in available}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    if available:
        have = f"its columns are {_list_names(available)}"
    else:
        have = "it has no covariate columns (read them with covariates=[...] or --covariates)"
    hint = f"; did you mean {_q(close[0])}?" if close else "."
    return f"The covariates formula {_q(formula)} reads the column {_q(name)}, which is not in {where}; {have}{hint}"


def _new_column(name: str, values: np.ndarray, kind: str) -> np.ndarray:
    """One column of new cells, read as the fitted table's column was; DataError at a missing value."""
    from twoway.table.io.tables import is_missing_value, parse_number

    missing = np.fromiter((is_missing_value(v) for v in values.tolist()), dtype=bool, count=len(values))
    if missing.any():
        pos = int(np.argmax(missing))
        raise DataError(
            f"The new cells' column {_q(name)} must have a value on every data row; data row {pos + 1} has none."
        )
    if kind == "text":
        return np.asarray([_level_text(v) for v in values.tolist()], dtype=object)
    out = np.empty(len(values), dtype=np.float64)
    for pos, v in enumerate(values.tolist()):
        number = parse_number(v)
        if number is None:
            shown = _q(v) if isinstance(v, str) else repr(v)
            raise DataError(f"The new cells' column {_q(name)} must be numeric; data row {pos + 1} has {shown}.")
        out[pos] = number
    if kind == "int" and np.all(np.isfinite(out)) and np.all(out == np.round(out)) and np.all(np.abs(out) < 2**53):
        return out.astype(np.int64)
    return out


def _materialize(spec, frame, formula: str, *, at: str) -> tuple[np.ndarray, list[str], Any]:
    """The model matrix of ``frame``, with formulaic's intercept column.

    Parameters
    ----------
    spec : formulaic.Formula or formulaic.ModelSpec
        The formula (building the design) or the fitted design's ModelSpec (new cells).
    frame : pandas.DataFrame, n lines
    formula : str
        For messages.
    at : {"table", "new"}
        Whose cells these are: errors are ModelError for the table, DataError for new cells.

    Returns
    -------
    X : numpy.ndarray, shape (n, p + 1), float64
    names : list of str, length p + 1
    model_spec : formulaic.ModelSpec
    """
    from formulaic.errors import FormulaicError

    error = ModelError if at == "table" else DataError
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        try:
            matrix = spec.get_model_matrix(frame, na_action="ignore", context={})
        except FormulaicError as exc:
            raise error(f"The covariates formula {_q(formula)} cannot be evaluated on the {_where(at)}: "
                        f"{_one_line(exc)}.") from None
        except (ValueError, TypeError, NameError, KeyError, AttributeError, ZeroDivisionError) as exc:
            raise error(f"The covariates formula {_q(formula)} cannot be evaluated on the {_where(at)}: "
                        f"{type(exc).__name__}: {_one_line(exc)}.") from None
    for warning in caught:
        text = str(warning.message)
        if "categories outside of the nominated levels" in text:
            raise DataError(f"The new cells have a factor level the fitted table did not have: {_one_line(text)}.")
    return np.asarray(matrix.to_numpy(dtype=np.float64), dtype=np.float64), list(matrix.model_spec.column_names), \
        matrix.model_spec


def _where(at: str) -> str:
    return "table's cells" if at == "table" else "new cells"


def _one_line(exc: Any) -> str:
    """An exception's message on one line, without formulaic's colour codes."""
    return " ".join(_ANSI.sub("", str(exc)).split()).rstrip(".")


# --------------------------------------------------------------------------
# building the design over a table
# --------------------------------------------------------------------------


def covariate_design(formula: str, data: TwoWayData, *, intercept: bool = True) -> CovariateDesign:
    """The design of a covariates formula over a table's observed cells.

    Parameters
    ----------
    formula : str
        Right-hand side of a model formula over the table's covariate columns
        (``data.covariates``), e.g. ``"dose + C(site, Treatment('b')) + np.log(area)"``.
        Factors use treatment coding; no intercept term may be written (the model has its own).
    data : TwoWayData
        The table, with covariate columns for every observed cell.
    intercept : bool
        Whether the model has an intercept: collinearity is then checked with it.

    Returns
    -------
    CovariateDesign
        ``X`` has shape (data.n_observed, p), rows in ``data.observed_index()`` order.

    Raises
    ------
    twoway.errors.ModelError
        For a syntax error (saying where), an intercept term, a factor with a single level,
        a constant term, a factor not in treatment coding, a term that cannot be evaluated,
        or collinear terms (naming them and the relation between them).
    twoway.errors.DataError
        For a column the table does not have (suggesting the closest name), or a term that
        is not finite at some cell (naming the cell).
    """
    pd = _pd()
    parsed = _parse(formula)
    text = formula.strip()
    variables, wrapped_only = _variables(parsed)
    covariates = data.covariates or {}
    for name in variables:
        if name not in covariates:
            raise DataError(_missing_column_message(name, list(covariates), "the table", text))
    frame, kinds = {}, {}
    for name in variables:
        column = covariates[name]
        if column.dtype.kind != "f":
            kinds[name], frame[name] = "text", np.asarray(column, dtype=object)
        elif name in wrapped_only and np.all(column == np.round(column)) and np.all(np.abs(column) < 2**53):
            kinds[name], frame[name] = "int", column.astype(np.int64)
        else:
            kinds[name], frame[name] = "float", np.asarray(column, dtype=np.float64)
    frame = pd.DataFrame(frame, index=pd.RangeIndex(data.n_observed))
    full, names, spec = _materialize(parsed, frame, text, at="table")
    factors = _factor_levels(spec, variables, text)
    keep = [k for k, name in enumerate(names) if name != "Intercept"]
    X = np.ascontiguousarray(full[:, keep])
    terms = tuple(names[k] for k in keep)
    if not terms:
        raise ModelError(f"The covariates formula {_q(text)} gives no design column over the observed cells.")
    index = data.observed_index()
    _check_finite(X, terms, index, data)
    _check_constant(X, terms, intercept)
    _check_collinear(X, terms, intercept)
    level = _term_levels(X, index, data.n_rows, data.n_cols)
    X.setflags(write=False)
    scale = X.std(axis=0)
    scale.setflags(write=False)
    return CovariateDesign(
        formula=text, terms=terms, X=X, level=level, scale=scale, variables=variables, factors=factors,
        _spec=spec, _kinds=kinds,
    )


def _factor_levels(spec, variables: tuple[str, ...], formula: str) -> dict[str, FactorLevels]:
    """The factors of a fitted formulaic ModelSpec by data column; ModelError at a single level or non-treatment coding."""
    out: dict[str, FactorLevels] = {}
    main_terms = {str(term): [spec.column_names[k] for k in idx] for term, idx in spec.term_indices.items()}
    for expr, (kind, state) in spec.encoder_state.items():
        if getattr(kind, "name", str(kind)) != "CATEGORICAL":
            continue
        name = expr if expr in variables else next(iter(_factor_variables(expr, "PYTHON")[1]), None)
        levels = tuple(_level_text(v) for v in state.get("categories", ()))
        shown = _q(name if name is not None else expr)
        if len(levels) < 2:
            got = f"a single level {_q(levels[0])}" if levels else "no level"
            raise ModelError(
                f"The factor {shown} has {got} over the observed cells, so it cannot be told from the intercept; "
                f"drop it from the covariates formula {_q(formula)}."
            )
        contrasts = getattr(state.get("contrasts"), "contrasts", None)
        if contrasts is not None and type(contrasts).__name__ != "TreatmentContrasts":
            raise ModelError(
                f"The factor {shown} must use treatment coding (the default, or C(g, Treatment('b')) to choose "
                f"the reference level); got {type(contrasts).__name__}."
            )
        base = getattr(contrasts, "base", None)
        raw = list(state.get("categories", ()))
        reference = levels[raw.index(base)] if base is not None and base in raw else levels[0]
        columns = main_terms.get(expr, [])
        terms = {}
        for value, level in zip(raw, levels, strict=True):  # formulaic names a column by str(level as it was)
            hit = [c for c in columns if c.endswith(f"[T.{value}]")]
            if level != reference and hit:
                terms[level] = hit[0]
        if name is None or (name in out and out[name].terms and not terms):
            continue
        if name not in out or (terms and not out[name].terms):
            out[name] = FactorLevels(levels=levels, reference=reference, terms=terms)
    return out


def _check_finite(X: np.ndarray, terms: tuple[str, ...], index: tuple, data: TwoWayData) -> None:
    """Raise DataError at the first cell where a term is not finite (a transform outside its domain)."""
    bad = ~np.isfinite(X)
    if not bad.any():
        return
    pos, col = (int(k) for k in np.argwhere(bad)[0])
    from twoway.table.data import _cell_text

    r, i, j = (int(a[pos]) for a in index)
    cell = _cell_text(r, i, j, data.replicate_labels, data.row_labels, data.col_labels)
    raise DataError(
        f"The covariate term {_q(terms[col])} is {X[pos, col]} at {cell}; its transform is not defined there "
        "(e.g. the log of a value <= 0): change the formula or the value."
    )


def _tolerance(X: np.ndarray) -> np.ndarray:
    """(p,) absolute tolerance for 'constant': relative to each column's largest size."""
    size = np.max(np.abs(X), axis=0) if X.shape[0] else np.zeros(X.shape[1])
    return _CONSTANT * np.maximum(size, np.finfo(float).tiny)


def _check_constant(X: np.ndarray, terms: tuple[str, ...], intercept: bool) -> None:
    """Raise ModelError naming the first term that is constant over the observed cells."""
    spread = np.ptp(X, axis=0) if X.shape[0] else np.zeros(X.shape[1])
    constant = spread <= _tolerance(X)
    if constant.any():
        k = int(np.argmax(constant))
        value = float(X[0, k]) + 0.0 if X.shape[0] else 0.0  # + 0.0: no '-0'
        why = "the intercept already covers it" if intercept else "it has no spread to scale its prior by"
        raise ModelError(
            f"The covariate term {_q(terms[k])} is constant ({value:.6g}) over the observed cells, so {why}; "
            "drop it from the covariates formula."
        )


def _number(a: float) -> str:
    """A coefficient of a linear relation for messages: 2, 0.5, 1.25e+03."""
    return f"{a:.4g}"


def _relation(coef: np.ndarray, names: list[str], dependent: int) -> str:
    """``names[dependent] = sum_k a_k names[k] (+ constant)`` from ``sum_k coef_k column_k = 0``; "1" names the intercept."""
    parts = []
    constant = None
    for k, c in enumerate(coef):
        if k == dependent or c == 0.0:
            continue
        a = -c / coef[dependent]
        if names[k] == "1":
            constant = a
            continue
        size = abs(a)
        parts.append(("-" if a < 0 else "+", names[k] if np.isclose(size, 1.0) else f"{_number(size)} {names[k]}"))
    if constant is not None:
        parts.append(("-" if constant < 0 else "+", _number(abs(constant))))
    if not parts:
        return f"{names[dependent]} = 0"
    sign, first = parts[0]
    text = ("-" if sign == "-" else "") + first
    for sign, item in parts[1:]:
        text += f" {sign} {item}"
    return f"{names[dependent]} = {text}"


def _check_collinear(X: np.ndarray, terms: tuple[str, ...], intercept: bool) -> None:
    """Raise ModelError naming terms that are linearly dependent (with the intercept when there is one).

    The null vector of the SVD of [1, X] (columns scaled to unit root mean square) names the
    dependent columns and the relation between them.
    """
    n = X.shape[0]
    A = np.column_stack([np.ones(n), X]) if intercept else X
    names = (["1"] if intercept else []) + list(terms)
    norms = np.sqrt(np.mean(A * A, axis=0)) if n else np.ones(A.shape[1])
    norms = np.where(norms > 0, norms, 1.0)
    B = A / norms
    m = B.shape[1]
    if B.shape[0] < m:
        B = np.vstack([B, np.zeros((m - B.shape[0], m))])
    _, s, vt = np.linalg.svd(B, full_matrices=False)
    if s[-1] > _COLLINEAR * s[0]:
        return
    v = vt[-1]
    involved = np.abs(v) > 1e-6 * np.max(np.abs(v))
    coef = np.where(involved, v / norms, 0.0)
    listed = [k for k in np.flatnonzero(involved) if names[k] != "1"]
    dependent = int(listed[-1])
    shown = [_q(names[k]) for k in listed]
    with_intercept = bool(intercept and involved[0])
    if len(shown) == 1:
        subject = f"The covariate term {shown[0]} and the intercept are" if with_intercept else \
            f"The covariate term {shown[0]} is"
    else:
        listed_text = ", ".join(shown[:-1]) + (", " if with_intercept else " and ") + shown[-1]
        subject = f"The covariate terms {listed_text}" + (" and the intercept" if with_intercept else "") + " are"
    raise ModelError(
        f"{subject} collinear over the observed cells ({_relation(coef, names, dependent)}), so their "
        "coefficients cannot be told apart; drop one of them from the covariates formula."
    )


def _term_levels(X: np.ndarray, index: tuple, n_rows: int, n_cols: int) -> tuple[str, ...]:
    """Where each column of X lives: "row" (constant within rows), "col" (within columns) or "cell"."""
    _, i, j = index
    tol = _tolerance(X)

    def constant_within(groups: np.ndarray) -> np.ndarray:
        order = np.argsort(groups, kind="stable")
        sorted_groups = groups[order]
        starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
        Xs = X[order]
        spread = np.maximum.reduceat(Xs, starts, axis=0) - np.minimum.reduceat(Xs, starts, axis=0)
        return np.max(spread, axis=0) <= tol

    by_row = constant_within(i)
    by_col = constant_within(j)
    return tuple("row" if r else "col" if c else "cell" for r, c in zip(by_row, by_col, strict=True))
