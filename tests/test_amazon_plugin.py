"""The built-in ``amazon`` plugin: both layouts, malformed input, and the real files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pluggy
import pytest

import xreg_amazon
from xcross_registry import hookspecs
from xcross_registry.data import MISSING_TITLE, DomainType
from xcross_registry.errors import DataError

AMAZON18 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon18"


# ---------------------------------------------------------------- Recformer layout

def _write_recformer(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    asins = ["A0", "A1", "A2", "A3", "A4", "A5"]
    files = {
        # NaN is what the real Sports meta_data.json holds for three items; A5 has no entry.
        "meta_data.json": '{"A0": "Red Kite", "A1": NaN, "A2": "Blue Ball", "A3": "Yo-Yo", "A4": "Drum"}',
        "smap.json": json.dumps({asin: index for index, asin in enumerate(asins)}),
        "umap.json": json.dumps({f"R{u}": u for u in range(12)}),
        "train.json": json.dumps({str(u): [u % 6, (u + 1) % 6, (u + 2) % 6] for u in range(10)}),
        "test.json": json.dumps({"10": [0, 1, 5], "11": [2, 2, 3, 4]}),
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_recformer_layout(tmp_path):
    data = xreg_amazon.load(str(_write_recformer(tmp_path / "Toys")))
    assert [item.id for item in data.items] == ["A0", "A1", "A2", "A3", "A4", "A5"]
    assert [item.title for item in data.items] == ["Red Kite", MISSING_TITLE, "Blue Ball", "Yo-Yo",
                                                  "Drum", MISSING_TITLE]
    assert [(seq.user, seq.items) for seq in data.test] == [("R10", (0, 1, 5)), ("R11", (2, 2, 3, 4))]
    # one of ten train users (10%) is carved out for validation, by a seeded hash
    assert len(data.valid) == 1 and len(data.train) == 9
    assert {seq.user for seq in data.train + data.valid} == {f"R{u}" for u in range(10)}
    for seq in data.train + data.valid:
        u = int(seq.user[1:])
        assert seq.items == (u % 6, (u + 1) % 6, (u + 2) % 6)
    again = xreg_amazon.load(str(tmp_path / "Toys"))
    assert again.fingerprint() == data.fingerprint()
    bigger = xreg_amazon.load(str(tmp_path / "Toys") + "?valid=0.5&seed=4")
    assert len(bigger.valid) == 5


@pytest.mark.parametrize("name, content, message", [
    ("train.json", '{"0": [0, 1, 2], "1": [3, 4', "train.json: not valid JSON"),
    ("test.json", '{"10": [0, 1, 99]}', "test.json: user 10 has item index 99, which smap.json does not define"),
    ("smap.json", "", "smap.json: file is empty"),
    ("umap.json", None, "umap.json: missing file"),
    ("train.json", '{"0": "A0"}', "train.json: user 0 must map to a non-empty list"),
    ("train.json", '{"77": [0, 1]}', "train.json: user index '77' is not in umap.json"),
    ("smap.json", '{"A0": 0, "A1": 0}', "smap.json: item 'A1' has index 0"),
    ("meta_data.json", "[1, 2]", "meta_data.json: expected a JSON object"),
])
def test_recformer_malformed_names_the_file(tmp_path, name, content, message):
    folder = _write_recformer(tmp_path / "Toys")
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_text(content)
    with pytest.raises(DataError) as error:
        xreg_amazon.load(str(folder))
    assert message in str(error.value)
    assert str(folder / name) in str(error.value)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- raw 2018 download

def _gzip_lines(path: Path, records: list) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as stream:
        for record in records:
            stream.write((record if isinstance(record, str) else json.dumps(record)) + "\n")


def _review(user: str, asin: str, time: int) -> dict:
    return {"overall": 5.0, "verified": True, "reviewTime": "01 1, 2016", "reviewerID": user,
            "asin": asin, "reviewerName": "x", "reviewText": "fine", "unixReviewTime": time}


def _write_raw(folder: Path, category: str = "Toys_and_Games") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    reviews = []
    # 20 users with 5..7 reviews; times out of file order, with ties kept in file order.
    for u in range(20):
        length = 5 + u % 3
        for k in range(length):
            reviews.append(_review(f"U{u:02d}", f"B{(u + 3 * k) % 30:03d}", 1000 + 10 * (length - k)))
    reviews.append(_review("U00", "B099", 1000 + 10))  # same time as U00's 5th review, later in file
    reviews += [_review("SHORT", f"B{k:03d}", k) for k in range(4)]  # too few: dropped
    reviews += [_review("LONG", f"B{k:03d}", k) for k in range(16)]  # too many: dropped
    _gzip_lines(folder / f"{category}_5.json.gz", reviews)
    meta = [{"asin": f"B{k:03d}", "title": f"Product {k}", "brand": "b"} for k in range(30) if k != 7]
    meta[3]["title"] = ""  # B003 empty title → placeholder; B007 absent → placeholder
    meta.append({"asin": "B001", "title": "A later duplicate record"})
    meta.append({"asin": "B099", "title": "Late item", "description": ["has \"asin\": \"B001\" inside"]})
    meta.append({"asin": "UNUSED", "title": "never reviewed"})
    _gzip_lines(folder / f"meta_{category}.json.gz", meta)
    return folder


def test_raw_layout_sequences_order_and_splits(tmp_path):
    data = xreg_amazon.load(str(_write_raw(tmp_path / "raw")))
    asins = [item.id for item in data.items]
    assert asins == sorted(asins) and "UNUSED" not in asins and len(asins) == 31
    titles = {item.id: item.title for item in data.items}
    assert titles["B001"] == "Product 1"  # first record wins
    assert titles["B003"] == MISSING_TITLE and titles["B007"] == MISSING_TITLE
    assert titles["B099"] == "Late item"

    users = {seq.user: [asins[i] for i in seq.items] for split in ("train", "valid", "test")
             for seq in data.split(split)}
    assert set(users) == {f"U{u:02d}" for u in range(20)}  # SHORT and LONG dropped
    # U01 wrote 6 reviews at decreasing times: oldest first means reverse file order.
    assert users["U01"] == [f"B{(1 + 3 * k) % 30:03d}" for k in reversed(range(6))]
    # U00: 5 reviews reversed, then the tie at time 1010 keeps file order (B012 before B099).
    assert users["U00"] == ["B012", "B099", "B009", "B006", "B003", "B000"]
    assert (len(data.train), len(data.valid), len(data.test)) == (14, 2, 4)
    for split in ("train", "valid", "test"):
        names = [seq.user for seq in data.split(split)]
        assert names == sorted(names)

    same = xreg_amazon.load(str(tmp_path / "raw"))
    assert same.fingerprint() == data.fingerprint()
    other = xreg_amazon.load(str(tmp_path / "raw") + "?seed=1")
    assert {s.user for s in other.test} != {s.user for s in data.test}


def test_raw_length_options(tmp_path):
    folder = _write_raw(tmp_path / "raw")
    data = xreg_amazon.load(f"{folder}?min_len=4&max_len=16&valid=0&test=0.5")
    users = {seq.user for split in ("train", "valid", "test") for seq in data.split(split)}
    assert {"SHORT", "LONG"} <= users and len(users) == 22
    assert len(data.valid) == 0 and len(data.test) == 11


def test_raw_several_categories_need_a_choice(tmp_path):
    folder = _write_raw(tmp_path / "raw")
    _write_raw(folder, category="Sports_and_Outdoors")
    with pytest.raises(DataError, match="several review files"):
        xreg_amazon.load(str(folder))
    assert len(xreg_amazon.load(f"{folder}?category=Sports_and_Outdoors").items) == 31


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-30])


@pytest.mark.parametrize("target, damage, message", [
    ("Toys_and_Games_5.json.gz", _truncate, "unreadable gzip"),
    ("Toys_and_Games_5.json.gz", lambda p: _gzip_lines(p, [_review("U", "B", 1), '{"reviewerID": "U", "as']),
     "line 2 is not valid JSON"),
    ("Toys_and_Games_5.json.gz", lambda p: p.write_bytes(b""), "file is empty"),
    ("Toys_and_Games_5.json.gz", lambda p: _gzip_lines(p, []), "file is empty"),
    ("Toys_and_Games_5.json.gz", lambda p: _gzip_lines(p, [{"reviewerID": "U", "asin": "B"}]),
     "line 1 needs string reviewerID and asin and an integer unixReviewTime"),
    ("meta_Toys_and_Games.json.gz", Path.unlink, "missing file"),
    ("meta_Toys_and_Games.json.gz", lambda p: _gzip_lines(p, ['{"asin": "B000", "title": "cut']),
     "line 1 is not valid JSON"),
])
def test_raw_malformed_names_the_file(tmp_path, target, damage, message):
    folder = _write_raw(tmp_path / "raw")
    damage(folder / target)
    with pytest.raises(DataError) as error:
        xreg_amazon.load(str(folder))
    assert str(folder / target) in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- locations and registration

@pytest.mark.parametrize("suffix, message", [
    ("?colour=red", "unknown option 'colour'"),
    ("?seed=x", "option seed='x' is not a valid int"),
    ("?valid=1.5", "option valid must be a fraction"),
    ("?min_len=3", "do not apply to this folder's layout"),
    ("?seed=1&seed=2", "given twice"),
])
def test_bad_options(tmp_path, suffix, message):
    folder = _write_recformer(tmp_path / "Toys")
    with pytest.raises(DataError, match=message):
        xreg_amazon.load(str(folder) + suffix)


def test_missing_or_unrecognised_folder(tmp_path):
    with pytest.raises(DataError, match="no such folder") as error:
        xreg_amazon.load(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(error.value)
    with pytest.raises(DataError, match="no Amazon data found"):
        xreg_amazon.load(str(tmp_path))


def test_registers_through_pluggy():
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(xreg_amazon)
    registered: list[DomainType] = []
    manager.hook.register_domains(register=registered.append)
    (domain,) = registered
    assert domain.name == "amazon" and domain.load is xreg_amazon.load
    assert domain.default_template.key == "amazon@1"


# ---------------------------------------------------------------- the real files

@pytest.mark.realdata
@pytest.mark.parametrize("domain, items, test_users, train_valid_users, interactions, untitled", [
    ("Toys", 10_457, 4_269, 17_073, 131_485, 0),
    ("Sports", 10_036, 3_849, 15_395, 120_122, 3),
    ("Tools", 5_820, 2_193, 8_769, 66_164, 0),
])
def test_real_amazon18_counts(domain, items, test_users, train_valid_users, interactions, untitled):
    folder = AMAZON18 / domain
    if not folder.is_dir():
        pytest.skip(f"real data not present at {folder} (see ../shared/data/README.md)")
    data = xreg_amazon.load(str(folder))  # its time: benchmarks/amazon_load.py
    summary = data.summary()
    assert summary["items"] == items
    assert summary["users"]["test"] == test_users
    assert summary["users"]["train"] + summary["users"]["valid"] == train_valid_users
    assert summary["users"]["valid"] == round(train_valid_users * 0.1)
    assert summary["interactions"] == interactions
    assert sum(item.title == MISSING_TITLE for item in data.items) == untitled


# ---------------------------------------------------------------- HTML entities in titles

def test_html_entities_in_titles_are_decoded_once(tmp_path):
    folder = _write_recformer(tmp_path / "Toys")
    (folder / "meta_data.json").write_text(json.dumps({
        "A0": "Grip &amp; Grab", "A1": "10&quot; Disc", "A2": "Twice &amp;quot;escaped",
        "A3": "&nbsp;", "A4": "Drum"}))
    data = xreg_amazon.load(str(folder))
    assert [item.title for item in data.items] == [
        "Grip & Grab", '10" Disc', "Twice &quot;escaped", MISSING_TITLE, "Drum", MISSING_TITLE]


def test_a_domain_registered_with_escaped_titles_gets_the_refresh_message(xreg, tmp_path):
    """A registry from before the decoding: its fingerprint no longer matches, so commands
    say so in one line (with the --refresh that fixes it) instead of failing otherwise."""
    from dataclasses import replace

    from xcross_registry.data import Item
    from xcross_registry.registry import Registry
    from xcross_registry.schema import Domain

    folder = _write_recformer(tmp_path / "Toys")
    (folder / "meta_data.json").write_text(json.dumps({"A0": "Grip &amp; Grab", "A2": "Ball"}))
    assert xreg("add-domain", "toys", "--plugin", "amazon", "--data", str(folder)).exit_code == 0
    decoded = xreg_amazon.load(str(folder))
    as_before = replace(decoded, items=[Item(i.id, i.title.replace("&", "&amp;")) for i in decoded.items])
    registry = Registry()
    with registry.session() as session:  # the row as the previous release wrote it
        session.query(Domain).filter_by(name="toys").update(
            {"data_fingerprint": as_before.fingerprint()})
    refused = xreg("items", "toys")
    assert refused.exit_code == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: the data of domain 'toys' at ") and "changed since it was registered" in line
    assert f"xreg add-domain toys --plugin amazon --data {folder} --refresh" in line
    assert xreg("add-domain", "toys", "--plugin", "amazon", "--data", str(folder), "--refresh").exit_code == 0
    titles = [item["title"] for item in xreg("items", "toys", "--json").json()]
    assert titles[0] == "Grip & Grab"
