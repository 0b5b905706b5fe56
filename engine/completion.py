"""Cluster choice for a cell X(i, j): the vote over related writers of cluster-GAN-cluster.

For each digit d != j that writer i has, the related writers are the other members of i's cluster
for d. Each related writer who has digit j votes for their own cluster of digit j. A writer related
through several digits votes once per digit, so writers who resemble i on more digits weigh more.
The cluster with the most votes wins.

Ties go to the tied cluster with the most images of digit j (the larger training set), then to the
lowest cluster index. When no vote is cast (the writer has no digit other than j, or no related
writer has j), the fallback is the cluster with the most images of digit j, and the explanation
says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from engine.clustering import DigitClustering
from engine.dataset import validate_digit
from engine.errors import InputError

RULE_VOTE = "vote"
RULE_FALLBACK = "fallback-largest-cluster"
TIE_BREAK = "most images of the digit, then lowest cluster index"


@dataclass(frozen=True)
class ClusterChoice:
    """The chosen cluster of digit `digit` for `writer`, and everything that led to it.

    ``writer_clusters`` maps each other digit the writer has to their cluster for it.
    ``related_writers`` maps the same digits to the other members of that cluster.
    ``votes`` has one count per cluster of `digit`. ``tied`` lists the clusters that shared the
    highest count before the tie-break.
    """

    writer: str
    digit: int
    k: int
    representation: str
    writer_clusters: dict[int, int]
    related_writers: dict[int, list[str]]
    votes: list[int]
    tied: list[int]
    cluster: int
    rule: str
    reason: str

    def to_dict(self) -> dict:
        """Return the explanation in JSON-ready types (digit keys as strings)."""
        data = asdict(self)
        data["writer_clusters"] = {str(d): c for d, c in self.writer_clusters.items()}
        data["related_writers"] = {str(d): w for d, w in self.related_writers.items()}
        data["tie_break"] = TIE_BREAK
        return data


def choose_cluster(clusterings: dict[int, DigitClustering], writer: str, digit: int) -> ClusterChoice:
    """Choose the cluster of `digit` whose writers most resemble `writer` on their other digits.

    `clusterings` maps every digit 0-9 to its clustering, all with the same k and representation.
    """
    digit = validate_digit(digit)
    if digit not in clusterings:
        raise InputError(f"no clustering of digit {digit} was given")
    target = clusterings[digit]
    target_cluster = dict(zip(target.writers, target.labels.tolist()))

    writer_clusters: dict[int, int] = {}
    related_writers: dict[int, list[str]] = {}
    votes = np.zeros(target.k, dtype=np.int64)
    for other_digit in sorted(clusterings):
        if other_digit == digit:
            continue
        cluster = clusterings[other_digit].cluster_of(writer)
        if cluster is None:
            continue
        related = [member for member in clusterings[other_digit].members(cluster) if member != writer]
        writer_clusters[other_digit] = cluster
        related_writers[other_digit] = related
        for member in related:
            member_cluster = target_cluster.get(member)
            if member_cluster is not None:
                votes[member_cluster] += 1

    image_counts = np.array(target.cluster_image_counts)
    if votes.sum() == 0:
        chosen = _largest(image_counts, range(target.k))
        if not writer_clusters:
            reason = (
                f"writer {writer} has no digit other than {digit}, so no related writers vote; "
                f"chose cluster {chosen}, the one with the most images of digit {digit}"
            )
        else:
            reason = (
                f"none of the writers related to {writer} has digit {digit}; "
                f"chose cluster {chosen}, the one with the most images of digit {digit}"
            )
        return ClusterChoice(
            writer, digit, target.k, target.representation, writer_clusters, related_writers,
            votes.tolist(), [], chosen, RULE_FALLBACK, reason,
        )

    tied = np.flatnonzero(votes == votes.max()).tolist()
    chosen = _largest(image_counts, tied)
    reason = f"cluster {chosen} has the most votes ({int(votes[chosen])} of {int(votes.sum())})"
    if len(tied) > 1:
        reason += f"; tied with clusters {[c for c in tied if c != chosen]}, broken by {TIE_BREAK}"
    return ClusterChoice(
        writer, digit, target.k, target.representation, writer_clusters, related_writers,
        votes.tolist(), tied, chosen, RULE_VOTE, reason,
    )


def _largest(image_counts: np.ndarray, candidates) -> int:
    """Return the candidate cluster with the most images, the lowest index among equals."""
    candidates = sorted(candidates)
    return max(candidates, key=lambda cluster: (image_counts[cluster], -cluster))
