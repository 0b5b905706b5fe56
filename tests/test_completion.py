"""Tests of the related-writer vote: hand-built clusterings for the rules, real data for the wiring."""

from __future__ import annotations

import numpy as np
import pytest

from engine.clustering import DigitClustering
from engine.completion import RULE_FALLBACK, RULE_VOTE, choose_cluster
from engine.studio import Studio


def hand_clustering(digit: int, assignment: dict[str, int], k: int = 3, images: dict[str, int] | None = None) -> DigitClustering:
    """Build a clustering of `digit` with given writer -> cluster labels and image counts."""
    writers = tuple(assignment)
    empty = np.zeros((1,), dtype=np.float32)
    return DigitClustering(
        digit=digit, k=k, representation="combined", fingerprint="hand",
        writers=writers,
        labels=np.array([assignment[w] for w in writers], dtype=np.int64),
        image_counts=np.array([(images or {}).get(w, 10) for w in writers], dtype=np.int64),
        vectors=np.zeros((len(writers), 1), dtype=np.float32),
        centroids=np.zeros((k, 1), dtype=np.float32),
        feature_mean=empty, feature_scale=empty + 1, pca_mean=empty,
        pca_components=np.ones((1, 1), dtype=np.float32), silhouette=0.0,
    )


def test_vote_counts_related_writers() -> None:
    clusterings = {
        0: hand_clustering(0, {"me": 0, "a": 0, "b": 0, "c": 1}),
        1: hand_clustering(1, {"a": 2, "b": 2, "c": 1}),
    }
    choice = choose_cluster(clusterings, "me", 1)
    assert choice.votes == [0, 0, 2]
    assert choice.cluster == 2
    assert choice.rule == RULE_VOTE
    assert choice.related_writers == {0: ["a", "b"]}


def test_vote_counts_once_per_digit() -> None:
    clusterings = {
        0: hand_clustering(0, {"me": 0, "a": 0, "b": 1}),
        1: hand_clustering(1, {"me": 1, "a": 1, "b": 1}),
        2: hand_clustering(2, {"a": 0, "b": 1}),
    }
    choice = choose_cluster(clusterings, "me", 2)
    assert choice.votes == [2, 1, 0]
    assert choice.writer_clusters == {0: 0, 1: 1}


def test_tie_goes_to_more_images() -> None:
    clusterings = {
        0: hand_clustering(0, {"me": 0, "a": 0, "b": 0}),
        1: hand_clustering(1, {"a": 0, "b": 1}, images={"a": 5, "b": 40}),
    }
    choice = choose_cluster(clusterings, "me", 1)
    assert choice.tied == [0, 1]
    assert choice.cluster == 1
    assert "tied" in choice.reason


def test_tie_with_equal_images_goes_to_lowest_index() -> None:
    clusterings = {
        0: hand_clustering(0, {"me": 0, "a": 0, "b": 0}),
        1: hand_clustering(1, {"a": 2, "b": 1}),
    }
    assert choose_cluster(clusterings, "me", 1).cluster == 1


def test_writer_with_only_target_digit_falls_back() -> None:
    clusterings = {
        0: hand_clustering(0, {"a": 0, "b": 1}),
        1: hand_clustering(1, {"me": 0, "a": 1, "b": 2}, images={"me": 1, "a": 3, "b": 30}),
    }
    choice = choose_cluster(clusterings, "me", 1)
    assert choice.rule == RULE_FALLBACK
    assert choice.cluster == 2
    assert "no digit other than 1" in choice.reason


def test_related_writers_without_digit_fall_back() -> None:
    clusterings = {
        0: hand_clustering(0, {"me": 0, "a": 0}),
        1: hand_clustering(1, {"b": 0, "c": 1}, images={"b": 50, "c": 2}),
    }
    choice = choose_cluster(clusterings, "me", 1)
    assert choice.rule == RULE_FALLBACK
    assert choice.cluster == 0
    assert "none of the writers related" in choice.reason


def test_real_votes_match_recount(studio: Studio) -> None:
    writer, digit = "f0424_27", 3
    clusterings = studio.all_clusterings(7)
    choice = studio.choose_cluster(writer, digit, 7)
    target = dict(zip(clusterings[digit].writers, clusterings[digit].labels.tolist()))
    recount = np.zeros(7, dtype=int)
    for other, clustering in clusterings.items():
        mine = clustering.cluster_of(writer)
        if other == digit or mine is None:
            continue
        for member in clustering.members(mine):
            if member != writer and member in target:
                recount[target[member]] += 1
    assert choice.votes == recount.tolist()
    assert choice.cluster == int(np.argmax(recount))


def test_hidden_cell_leaves_writer_out_of_target_clustering(studio: Studio) -> None:
    writer, digit = "f0424_27", 3
    hidden = studio.dataset_for(writer, digit, hide=True)
    assert studio.clustering(digit, 7).cluster_of(writer) is not None
    assert studio.clustering(digit, 7, hidden).cluster_of(writer) is None


def test_explanation_serialises(studio: Studio) -> None:
    data = studio.choose_cluster("f0424_27", 3, 7).to_dict()
    assert set(data["writer_clusters"]) == {str(d) for d in studio.dataset.digits_of("f0424_27") if d != 3}
    assert sum(data["votes"]) > 0


@pytest.mark.parametrize("digit", [-1, 10])
def test_choose_cluster_rejects_bad_digit(studio: Studio, digit: int) -> None:
    from engine.errors import InputError

    with pytest.raises(InputError, match="digit must be 0-9"):
        studio.choose_cluster("f0424_27", digit)
