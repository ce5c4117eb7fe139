"""`xreg add-domain` on real and malformed Amazon data: summaries, and one clear error."""

from __future__ import annotations

import pytest

from conftest import require_shared_data

EXPECTED = {  # domain: items, test users, train+valid users, interactions
    "Toys": (10_457, 4_269, 17_073, 131_485),
    "Sports": (10_036, 3_849, 15_395, 120_122),
    "Tools": (5_820, 2_193, 8_769, 66_164),
}


@pytest.mark.realdata
@pytest.mark.parametrize("domain", sorted(EXPECTED))
def test_add_domain_reports_readme_counts(xreg, domain):
    path = require_shared_data(domain)
    result = xreg("add-domain", domain.lower(), "--plugin", "amazon", "--data", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()["summary"]
    items, test_users, train_valid_users, interactions = EXPECTED[domain]
    assert summary["items"] == items
    assert summary["users"]["test"] == test_users
    assert summary["users"]["train"] + summary["users"]["valid"] == train_valid_users
    assert summary["interactions"] == interactions
    shown = xreg("show", domain.lower(), "--json").json()
    assert shown["summary"] == summary


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "train.json").write_text('{"0": [0, 1'), "train.json"),
    (lambda f: (f / "test.json").write_text('{"10": [0, 99]}'), "test.json"),
    (lambda f: (f / "smap.json").write_text(""), "smap.json"),
    (lambda f: (f / "meta_data.json").unlink(), "meta_data.json"),
])
def test_malformed_data_is_one_error_naming_the_file(xreg, tmp_path, damage, message):
    from test_amazon_plugin import _write_recformer

    folder = _write_recformer(tmp_path / "Toys")
    damage(folder)
    result = xreg("add-domain", "toys", "--plugin", "amazon", "--data", str(folder))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert xreg("domains", "--json").json() == []


def test_nan_titles_load_with_a_placeholder(xreg, tmp_path):
    from test_amazon_plugin import _write_recformer

    folder = _write_recformer(tmp_path / "Toys")
    result = xreg("add-domain", "toys", "--plugin", "amazon", "--data", str(folder), "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["summary"]["items"] == 6
