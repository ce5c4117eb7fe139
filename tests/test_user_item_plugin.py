"""The built-in ``user-item`` plugin (ID-only ``user item`` lines, SASRec's file format):
parsing, the contract through the plugin kit, leave-one-out through the CLI, malformed
input, and the real Video Games file when it is beside the project."""

from __future__ import annotations

from pathlib import Path

import pytest

import xreg_user_item
from xcross_registry.data import render_prompts
from xcross_registry.errors import DataError
from xcross_registry.testing import domain_types

VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sasrec-video" / "Video.txt"
LINES = """1 10
2 3
1 2
1 10
2 7
3 5

2 10
1 4
4 3
5 1
5 2
5 3
"""


@pytest.fixture
def lines(tmp_path) -> Path:
    path = tmp_path / "log.txt"
    path.write_text(LINES + "".join(f"{u} {i}\n" for u in range(6, 20) for i in (u % 9 + 1, u % 5 + 1, 10)))
    return path


def test_sequences_follow_file_order_and_short_users_are_dropped(lines):
    data = xreg_user_item.load(str(lines))
    ids = [item.id for item in data.items]
    assert ids == sorted(ids, key=int) and ids[:3] == ["1", "2", "3"]  # numeric, not text order
    users = {seq.user: [ids[i] for i in seq.items] for split in ("train", "valid", "test")
             for seq in data.split(split)}
    assert users["1"] == ["10", "2", "10", "4"] and users["2"] == ["3", "7", "10"]
    assert "3" not in users and "4" not in users  # one interaction each: no sequence
    assert data.items[0].title == "1" and data.fingerprint() == xreg_user_item.load(str(lines)).fingerprint()
    domain_type = domain_types(xreg_user_item)["user-item"]
    cross, _, _ = render_prompts(domain_type, domain_type.default_template, data, "test", data.test[0])
    assert cross.startswith("Interacted with: item ")
    assert len(xreg_user_item.load(f"{lines}?min_len=4").train + xreg_user_item.load(f"{lines}?min_len=4").valid
               + xreg_user_item.load(f"{lines}?min_len=4").test) == 1


@pytest.mark.parametrize("content, message", [
    ("1 2\n1 2 3\n", "line 2 has 3 field(s); expected 'user item', got '1 2 3'"),
    ("\n\n", "file holds no interactions"),
    ("1 2\n2 3\n", "no user has 2 or more interactions"),
])
def test_malformed_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(DataError) as error:
        xreg_user_item.load(str(path))
    assert str(error.value) == f"{path}: {message}"


def test_leave_one_out_through_the_cli(xreg, lines):
    result = xreg("add-domain", "log", "--plugin", "user-item", "--data", str(lines), "--split",
                  "leave-one-out", "--json")
    assert result.exit_code == 0, result.stderr
    users = result.json()["summary"]["users"]
    # 17 users with 3+ items are validated and tested; only user 1 (4 items) keeps 2 to train on
    assert users == {"train": 1, "valid": 17, "test": 17}
    refused = xreg("add-domain", "log-t", "--plugin", "user-item", "--data", str(lines), "--split", "temporal")
    assert refused.exit_code == 1 and "split temporal needs timestamps, but plugin 'user-item' gave none" \
        in refused.stderr


@pytest.mark.realdata
def test_the_sasrec_video_file():
    if not VIDEO.is_file():
        pytest.skip(f"real data not available: {VIDEO} is absent (it lives beside the project)")
    data = xreg_user_item.load(str(VIDEO))
    # 31,013 users and 23,715 items in the README; 30 users with one interaction are dropped
    assert len(data.items) == 23715
    assert sum(len(data.split(s)) for s in ("train", "valid", "test")) == 31013 - 30
    assert sum(len(seq.items) for s in ("train", "valid", "test") for seq in data.split(s)) == 287107 - 30
