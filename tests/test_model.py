"""Model specs, presets, TOML model files and degrees of freedom."""

import json

import pytest

from twoway import ModelError, ModelSpec, Prior, degrees_of_freedom, load_model, preset


def test_presets_match_the_question_and_the_seed():
    additive = preset("additive")
    assert (additive.combine, additive.row_effect, additive.row_scale, additive.sigma) == (
        "variance", "random", "hetero", False)
    seed = preset("additive-sd")
    assert (seed.combine, seed.col_effect, seed.col_scale, seed.sigma) == ("sd", "random", "hetero", True)


def test_unknown_preset_and_bad_option_are_clear():
    with pytest.raises(ModelError, match="additive-sd"):
        load_model("crossedd")
    with pytest.raises(ModelError, match="'combine' option must be one of variance, sd; got 'product'"):
        ModelSpec(combine="product")
    with pytest.raises(ModelError, match="row_effect"):
        ModelSpec(row_effect="mixed")


def test_toml_model_file_overrides_a_preset(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('preset = "additive"\nrow_effect = "fixed"\ncol_scale = "homo"\n\n'
                    '[priors]\ncol_sd = { dist = "halfnormal", sigma = 0.5 }\n')
    spec = load_model(str(path))
    assert spec.row_effect == "fixed" and spec.col_scale == "homo" and spec.combine == "variance"
    assert spec.prior_overrides["col_sd"] == Prior.make("halfnormal", sigma=0.5)
    assert spec.name == "additive"
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec


@pytest.mark.parametrize("body, match", [
    ("colour = 'red'\n", "colour"),
    ("[priors]\nsigma = { dist = 'cauchy', sigma = 1 }\n", "family must be one of"),
    ("[priors]\nsigma = { dist = 'halfnormal', sigma = -1 }\n", "must be positive"),
    ("[priors]\nrow_effect_sd = { dist = 'halfnormal' }\n", "needs parameters"),
    ("[priors]\nrow_rho = { dist = 'normal', mu = 0, sigma = 1 }\n", "row_rho"),
    ("row_effect = \n", "not valid TOML"),
    ("preset = 'nope'\n", "preset"),
    ("", r"must set a preset or model options \(for example preset = \"crossed\"\); it sets nothing"),
    ("# nothing but a comment\n", "it sets nothing"),
])
def test_bad_model_files_name_the_problem(tmp_path, body, match):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ModelError, match=match):
        load_model(str(path))


def test_missing_model_file_and_wrong_suffix(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "none.toml"))
    with pytest.raises(ModelError, match=r"\.toml model file"):
        load_model(str(tmp_path / "model.yaml"))


def test_positive_parameters_refuse_real_line_priors():
    from twoway.spec.priors import resolve_priors

    with pytest.raises(ModelError, match="positive family"):
        resolve_priors(("sigma",), 0.0, 1.0, {"sigma": Prior.make("normal", mu=0, sigma=1)})


def test_degrees_of_freedom_counts_every_parameter():
    # additive on 8 x 12: intercept 1, row effects 8 + sd 1, col effects 12 + sd 1,
    # row sds 8 + 2 hyper, col sds 12 + 2 hyper; no sigma.
    dof = degrees_of_freedom(preset("additive"), 8, 12)
    assert dof.n_cells == 96 and dof.n_parameters == 1 + 9 + 13 + 10 + 14
    assert dof.remaining == 96 - dof.n_parameters
    seed = degrees_of_freedom(preset("additive-sd"), 8, 12, 3)
    assert seed.n_cells == 288 and seed.n_parameters == dof.n_parameters + 1
    fixed = degrees_of_freedom(ModelSpec(row_effect="fixed", col_effect="fixed", row_scale="homo",
                                         col_scale="none", sigma=False), 8, 12)
    # fixed effects lose one level to the sum-to-zero constraint
    assert dict(fixed.parameters) == {"intercept": 1, "row_effect": 7, "col_effect": 11, "row_sd": 1}
    assert json.loads(json.dumps(fixed.to_dict()))["used"] == 20


def test_degrees_of_freedom_warns_when_overparameterised():
    dof = degrees_of_freedom(preset("additive"), 2, 2)
    assert dof.overparameterised
    assert "WARNING" in dof.format()
    with pytest.raises(ModelError, match="at least 2 rows"):
        degrees_of_freedom(preset("additive"), 1, 5)


def test_shipped_example_model_file_loads():
    from importlib.resources import files

    spec = load_model(str(files("twoway") / "examples" / "model.toml"))
    assert (spec.row_effect, spec.col_scale, spec.combine) == ("fixed", "homo", "variance")
    assert spec.prior_overrides["col_sd"].kwargs == {"sigma": 1.0}
