"""`xreg recommend-batch`: every user's top items in one Parquet file, the same from one
process as from two processes under accelerate (gloo on 127.0.0.1)."""

from __future__ import annotations

import pytest

from test_multiprocess import launch_two

pq = pytest.importorskip("pyarrow.parquet", reason="the batch extra is not installed (pip install -e '.[batch]')")

QUICK = ("--epochs", "1", "--max-users", "16", "--batch-size", "8", "--negatives", "3", "--valid-users", "4")


@pytest.mark.slow
def test_batch_output_is_each_users_recommendation_and_equal_across_processes(xreg, tmp_path, tiny_base):
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    assert xreg("add-domain", "toys", "--plugin", "synthetic", "--data", "toys?users=30&items=60&max_len=6").exit_code == 0
    trained = xreg("train-adapter", "toys", "--mode", "dual", "--base-model", tiny_base, "--max-length", "64", *QUICK)
    assert trained.exit_code == 0, trained.stderr

    single = xreg("recommend-batch", "toys", "toys", "--users", "all", "--top", "5",
                  "--out", str(tmp_path / "one.parquet"), "--json")
    assert single.exit_code == 0, single.stderr
    assert single.json()["users"] == 30 and single.json()["rows"] == 150
    table = pq.read_table(tmp_path / "one.parquet").to_pylist()
    assert table[0].keys() == {"user", "rank", "item_id", "title", "score"}

    from xcross_registry import serving
    from xcross_registry.registry import Registry

    model = serving.load_model(Registry(), "toys")
    user = model.data.test[-1]
    alone = serving.recommend(model, [model.data.items[i].id for i in user.items], top=5)
    rows = [row for row in table if row["user"] == user.user]
    assert [row["item_id"] for row in rows] == [r.item_id for r in alone]
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, 5]
    assert [row["score"] for row in rows] == pytest.approx([r.score for r in alone], rel=1e-6)

    done = launch_two("recommend-batch", "toys", "toys", "--users", "all", "--top", "5",
                      "--out", str(tmp_path / "two.parquet"), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"processes": 2' in done.stdout
    assert pq.read_table(tmp_path / "two.parquet").equals(pq.read_table(tmp_path / "one.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.parquet", "two.parquet"]  # no parts left


def test_bad_batch_requests_fail_before_any_work(xreg, tmp_path):
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    assert xreg("add-domain", "toys", "--plugin", "synthetic", "--data", "toys?users=30&items=60&max_len=6").exit_code == 0
    for args, message in ((["--users", "everyone"], "--users must be one of all, train, valid, test"),
                          (["--out", str(tmp_path / "nope" / "x.parquet")], "does not exist"),
                          ([], "has no adapter yet")):
        result = xreg("recommend-batch", "toys", "toys", *(["--out", str(tmp_path / "x.parquet")]
                                                          if "--out" not in args else []), *args)
        assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
