"""The end-to-end demo and the leaderboard it ends with (tiny model, seconds)."""

from __future__ import annotations

import re

import pytest

from xcross_registry.demo import DemoSettings, run_demo
from xcross_registry.leaderboard import efficiency, leaderboard, plot, plot_efficiency


@pytest.fixture
def demo_registry(tmp_path, tiny_base_model, xreg_home):
    settings = DemoSettings(users=100, target_users=150, items=60, epochs=1,
                            base_model=str(tiny_base_model))
    messages: list[str] = []
    result = run_demo(tmp_path / "demo", settings, say=messages.append)
    assert any("composing toys + sports -> tools" in m for m in messages)
    assert [(c["first"], c["second"]) for c in result.comparisons] == [
        ("tools-x", "tools@v1"), ("tools-x", "popularity:tools")]
    assert {c["users"] for c in result.comparisons} == {90}  # 60% of the target's 150 users
    # the winner is compared with the runner-up, by test NDCG@10
    board = {row["subject"]: row["metrics"]["ndcg@10"]["mean"] for row in leaderboard(result.registry, "tools")[0].rows}
    ranked = sorted(board, key=lambda subject: -board[subject])
    assert (result.winner["first"], result.winner["second"]) == (ranked[0], ranked[1])
    return result.registry


@pytest.mark.slow
def test_demo_ends_with_one_comparable_board(demo_registry, tmp_path):
    boards = leaderboard(demo_registry, "tools")
    assert len(boards) == 1
    board = boards[0]
    assert {row["subject"] for row in board.rows} == {
        "tools-x", "tools-merge", "tools-ties", "tools@v1", "toys@v1:zero-shot", "sports@v1:zero-shot",
        "popularity:tools"}
    kinds = {row["subject"]: row["kind"] for row in board.rows}
    assert kinds["tools-x"] == "composition" and kinds["tools@v1"] == "adapter"
    assert kinds["popularity:tools"] == "baseline"
    by_subject = {row["subject"]: row for row in board.rows}
    assert by_subject["tools-x"]["fraction"] == 0.25 and by_subject["tools@v1"]["fraction"] == 0.25
    assert by_subject["tools-x"]["trainable_parameters"] > 0
    hits = [row["metrics"]["hit@1"]["mean"] for row in board.rows]
    assert hits == sorted(hits, reverse=True)
    png = plot(boards, tmp_path / "board.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_command_prints_the_board_and_the_paired_differences(xreg, tiny_base, tmp_path):
    home = tmp_path / "cli-demo"
    result = xreg("demo", "--home", str(home), "--users", "60", "--target-users", "100",
                  "--base-model", tiny_base)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    board, paired = out.index("tools test split, 60 users (sampled)"), out.index(
        "paired differences on the same 60 tools test users")
    assert board < paired
    header = next(line for line in out[board:].splitlines() if "subject" in line)
    for column in ("kind", "mode", "prior", "fraction", "hit@1", "ndcg@10"):
        assert column in header
    rows = out[board:paired]
    for subject in ("tools-x", "tools-merge", "tools-ties", "tools@v1", "toys@v1:zero-shot",
                    "sports@v1:zero-shot", "popularity:tools"):
        assert subject in rows
    lines = out[paired:].splitlines()
    header = next(line for line in lines if line.count("┃") == 6)  # rich's heavy header rule
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == [
        "first − second", "metric", "difference", "95% interval", "verdict"]
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines
             if line.count("│") == 6]
    assert [row[:2] for row in cells] == [
        ["tools-x − tools@v1", "hit@1"], ["tools-x − tools@v1", "ndcg@10"],
        ["tools-x − popularity:tools", "hit@1"], ["tools-x − popularity:tools", "ndcg@10"]]
    for _, _, difference, interval, verdict in cells:
        low, high = (float(bound) for bound in interval.strip("[]").split(", "))
        assert low <= float(difference) <= high
        assert verdict == ("better" if low > 0 else "worse" if high < 0 else "no clear difference")
    winner = next(line for line in lines if line.startswith("winner: "))
    name, difference, low, high, runner_up = re.fullmatch(
        r"winner: (\S+) by NDCG@10, (\S+) \[(\S+), (\S+)\] over the runner-up (\S+) \(.*\)", winner).groups()
    assert name != runner_up and float(low) <= float(difference) <= float(high)
    assert f"demo registry: XREG_HOME={home}" in out


def test_demo_json_and_its_documented_rates_and_seed(xreg, tiny_base, tmp_path):
    from xcross_registry.records import TrainingRecord
    from xcross_registry.registry import Registry

    home = tmp_path / "seeded-demo"
    result = xreg("demo", "--home", str(home), "--users", "60", "--target-users", "100",
                  "--base-model", tiny_base, "--seed", "1", "--json")
    assert result.exit_code == 0, result.stderr
    as_json = result.json()
    assert [c["second"] for c in as_json["comparisons"]] == ["tools@v1", "popularity:tools"]
    assert {"first", "second", "differences"} <= set(as_json["winner"])
    assert {"difference", "low", "high"} <= set(as_json["comparisons"][0]["differences"]["ndcg@10"])
    registry = Registry(url=f"sqlite:///{home / 'registry.db'}", artifacts=home / "artifacts")
    assert all("seed=1&" in domain.data_location for domain in registry.domains())
    settings = DemoSettings()
    trained = {"toys@v1": registry.adapter("toys@v1"), "tools@v1": registry.adapter("tools@v1"),
               "tools-x": registry.composition("tools-x")}
    records = {name: TrainingRecord.of(row) for name, row in trained.items()}
    assert {name: record.training["lr"] for name, record in records.items()} == {
        "toys@v1": settings.lora_lr, "tools@v1": settings.lora_lr, "tools-x": settings.integrator_lr}
    assert {record.seed for record in records.values()} == {1}
    assert records["tools-x"].fraction == records["tools@v1"].fraction == settings.fraction


@pytest.mark.slow
def test_results_on_other_candidates_get_their_own_board(demo_registry):
    from xcross_registry.evaluation import evaluate_popularity

    evaluate_popularity(demo_registry, "tools", seed=1)  # other stored candidates
    evaluate_popularity(demo_registry, "tools", protocol="sampled-pop")
    boards = leaderboard(demo_registry, "tools")
    assert len(boards) == 3
    assert len({(b.protocol, b.candidates_digest) for b in boards}) == 3
    assert [len(b.rows) for b in boards[:2]] == [1, 1]
    assert len(leaderboard(demo_registry, "tools", protocol="sampled-pop")) == 1


@pytest.mark.slow
def test_leaderboard_cli_json_and_unknown_domain(xreg, demo_registry, monkeypatch, tmp_path):
    monkeypatch.setenv("XREG_HOME", str(tmp_path / "demo"))
    result = xreg("leaderboard", "tools", "--json", "--plot", str(tmp_path / "b.png"))
    assert result.exit_code == 0, result.stderr
    assert len(result.json()[0]["rows"]) == 7 and (tmp_path / "b.png").is_file()
    missing = xreg("leaderboard", "nowhere")
    assert missing.exit_code == 1 and "unknown domain 'nowhere'" in missing.stderr


@pytest.mark.slow
def test_by_fraction_groups_methods_and_averages_training_seeds(xreg, demo_registry, monkeypatch,
                                                              tmp_path):
    from xcross_registry import composer
    from xcross_registry.evaluation import evaluate_composition
    from xcross_registry.training import TrainingConfig
    from xcross_registry.xcross import XCrossConfig

    composer.compose(demo_registry, ["toys", "sports"], "tools", name="tools-x-s1",
                     settings=XCrossConfig(),
                     training_config=TrainingConfig(epochs=1, fraction=0.25, seed=1, batch_size=16,
                                                    negatives=15, valid_users=20))
    second = evaluate_composition(demo_registry, "tools-x-s1")
    board = leaderboard(demo_registry, "tools")[0]
    by_subject = {row["subject"]: row for row in board.rows}
    assert by_subject["tools-x-s1"]["training_seed"] == 1 and by_subject["tools-x"]["training_seed"] == 0
    assert by_subject["toys@v1:zero-shot"]["method"] == "zero-shot"
    assert by_subject["popularity:tools"]["method"] == "popularity"

    points = {(p.method, p.fraction): p for p in efficiency(board)}
    # zero-shot sources and popularity do not depend on the fraction: not points
    assert set(points) == {("xcross", 0.25), ("linear-merge", 0.25), ("ties", 0.25), ("lora", 0.25)}
    xcross = points[("xcross", 0.25)]
    assert sorted(xcross.subjects) == ["tools-x", "tools-x-s1"] and sorted(xcross.seeds) == [0, 1]
    hits = [by_subject["tools-x"]["metrics"]["hit@1"]["mean"], second.metrics["hit@1"]["mean"]]
    assert xcross.metrics["hit@1"] == {"mean": sum(hits) / 2, "min": min(hits), "max": max(hits)}
    png = plot_efficiency([board], tmp_path / "fraction.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    monkeypatch.setenv("XREG_HOME", str(tmp_path / "demo"))
    result = xreg("leaderboard", "tools", "--by-fraction", "--json")
    assert result.exit_code == 0, result.stderr
    rows = result.json()[0]["rows"]
    assert [(r["method"], len(r["seeds"])) for r in rows] == [
        ("linear-merge", 1), ("lora", 1), ("ties", 1), ("xcross", 2)]


@pytest.mark.slow
def test_integration_weights_plot(demo_registry, tmp_path):
    from xcross_registry.composer import integration_weights
    from xcross_registry.xcross.integration import plot_integration

    summary = integration_weights(demo_registry, "tools-x")
    assert summary["sources"] == ["toys@v1", "sports@v1"]
    assert [entry["layer"] for entry in summary["layers"]] == [0, 1]
    assert len(summary["layers"][0]["mean"]) == 2  # [n][n][2], NaN on the diagonal
    png = plot_integration(summary, tmp_path / "integration.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_paired_compare_of_two_subjects(demo_registry):
    from xcross_registry.errors import ValidationError
    from xcross_registry.evaluation import compare, evaluate_popularity

    document = compare(demo_registry, "tools", "tools-x", "popularity:tools")
    assert document["users"] > 0
    hit = document["differences"]["hit@1"]
    assert hit["low"] <= hit["difference"] <= hit["high"]
    same = compare(demo_registry, "tools", "tools-x", "tools-x")
    assert same["differences"]["mrr"] == {"difference": 0.0, "low": 0.0, "high": 0.0}
    evaluate_popularity(demo_registry, "tools", seed=3)  # now on other candidates
    with pytest.raises(ValidationError, match="different candidates"):
        compare(demo_registry, "tools", "tools-x", "popularity:tools")
    with pytest.raises(ValidationError, match="no sampled evaluation of 'nobody'"):
        compare(demo_registry, "tools", "tools-x", "nobody")
