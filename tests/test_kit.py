"""The kit for system authors: check_system catches each breach of the contract, and a
"default" profile entry serves profiles a system does not list."""

from __future__ import annotations

import numpy as np
import pytest

from bench.api import System
from bench.reference import Pop, Random
from bench.testing import ContractError, check_system, toy_domain


class _Constant(System):
    name = "Constant"

    def fit(self, data, valid):
        pass

    def score(self, requests):
        return np.zeros((len(requests), len(requests[0].candidates)))


class _PeeksAtLabels(_Constant):
    name = "PeeksAtLabels"

    def fit(self, data, valid):
        self.valid = valid

    def score(self, requests):
        positives = set(self.valid.positives)  # labels kept from fit, read while scoring
        return np.array([[float(c in positives) for c in r.candidates] for r in requests])


class _Unseeded(_Constant):
    name = "Unseeded"

    def score(self, requests):
        return np.random.default_rng().random((len(requests), len(requests[0].candidates)))


class _HalfNaN(_Constant):
    name = "HalfNaN"

    def score(self, requests):
        s = super().score(requests)
        s[0, :3] = np.nan
        return s


class _Abstains(_Constant):
    name = "Abstains"

    def score(self, requests):
        s = super().score(requests)
        s[::2] = np.nan  # whole rows: abstentions, allowed
        return s


class _WrongShape(_Constant):
    name = "WrongShape"

    def score(self, requests):
        return np.zeros((len(requests), 29))


class _NoProfiles(_Constant):
    name = "NoProfiles"
    profiles = {"smoke": {}, "cpu": {}}


class _BadConfig(_Constant):
    name = "BadConfig"
    profiles = {"default": {"fn": len}}


class _BadGroup(_Constant):
    name = "BadGroup"
    group = "Baseline"


@pytest.mark.parametrize("cls, match", [
    (_PeeksAtLabels, "read the validation labels"),
    (_Unseeded, "scored differently"),
    (_HalfNaN, "non-finite"),
    (_WrongShape, r"shape \(24, 29\), expected \(24, 30\)"),
    (_NoProfiles, "no settings for profile 'paper'"),
    (_BadConfig, "not JSON data"),
    (_BadGroup, "group 'Baseline'"),
])
def test_each_breach_is_named(cls, match):
    with pytest.raises(ContractError, match=match):
        check_system(cls)


def test_abstentions_and_constant_scores_pass_and_the_default_profile_serves_all():
    assert np.isnan(check_system(_Abstains).scores[::2]).all()
    assert _Constant.config_for("any-new-profile") == {}
    assert not _NoProfiles.has_config("paper") and _NoProfiles.has_config("cpu")


@pytest.mark.parametrize("cls", [Random, Pop])
def test_reference_rows_pass(cls):
    data, valid, test = toy_domain(n_candidates=20)
    checked = check_system(cls, domain=(data, valid, test))
    assert checked.scores.shape == (len(test), 20) and checked.system.name == cls.name
