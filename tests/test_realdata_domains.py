"""`xreg add-domain` on the real Amazon 2018 domains reports the data README's numbers."""

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
