"""Plotly figures of the pages: data availability, writer clusters, training losses, cluster consistency."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from engine.dataset import DIGITS

MISSING_COLOUR = "#e4572e"  # empty cells of the availability heatmap
HIGHLIGHT_COLOUR = "#111111"  # the chosen writer or cluster
MUTED_COLOUR = "#b8c2cc"  # clusters other than the chosen one
MAX_TICK_LABELS = 60  # writer ids are printed under the heatmap only up to this many writers


def cluster_colours(k: int) -> list[str]:
    """Return one colour per cluster; the same cluster has the same colour on every figure."""
    palette = px.colors.qualitative.Plotly if k <= len(px.colors.qualitative.Plotly) else px.colors.qualitative.Dark24
    return [palette[cluster % len(palette)] for cluster in range(k)]


def availability_heatmap(counts: np.ndarray, writers: Sequence[str], order_label: str) -> go.Figure:
    """Draw images per cell of the writer x digit matrix, empty cells in a colour of their own.

    `counts` is (W, 10) in the order of `writers`; writers run along x so that a few hundred fit.
    """
    z = np.asarray(counts).T  # (10, W)
    top = max(int(z.max()) if z.size else 1, 1)
    # Values below `edge` (only 0) get the missing colour; 1 and more run from light to dark blue.
    edge = 0.5 / top
    colourscale = [[0.0, MISSING_COLOUR], [edge, MISSING_COLOUR], [edge, "#d6e6f5"], [1.0, "#08306b"]]
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=list(writers),
            y=[str(digit) for digit in DIGITS],
            zmin=0,
            zmax=top,
            colorscale=colourscale,
            colorbar={"title": {"text": "images"}, "thickness": 12},
            hovertemplate="writer %{x}<br>digit %{y}<br>%{z} images<extra></extra>",
        )
    )
    figure.update_layout(
        height=330,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis={
            "type": "category",
            "title": {"text": f"{len(writers)} writers, {order_label}"},
            "showticklabels": len(writers) <= MAX_TICK_LABELS,
        },
        yaxis={"type": "category", "title": {"text": "digit"}, "autorange": "reversed"},
    )
    return figure


def umap_scatter(points: pd.DataFrame, k: int, digit: int, writer: str | None) -> go.Figure:
    """Draw writers of `digit` in UMAP coordinates, one colour per cluster, `writer` circled.

    Every point carries its writer id in `customdata[0]`, which a click selection returns.
    """
    colours = cluster_colours(k)
    figure = go.Figure()
    for cluster in range(k):
        members = points[points["cluster"] == cluster]
        figure.add_trace(
            go.Scatter(
                x=members["x"],
                y=members["y"],
                mode="markers",
                name=f"cluster {cluster}",
                marker={"color": colours[cluster], "size": 8, "line": {"width": 0.5, "color": "white"}},
                customdata=np.stack([members["writer"], members["images"]], axis=-1),
                hovertemplate=(
                    "writer %{customdata[0]}<br>"
                    f"cluster {cluster}<br>"
                    f"%{{customdata[1]}} images of digit {digit}<extra></extra>"
                ),
            )
        )
    chosen = points[points["writer"] == writer]
    if len(chosen):
        row = chosen.iloc[0]
        figure.add_trace(
            go.Scatter(
                x=[row["x"]],
                y=[row["y"]],
                mode="markers+text",
                name=f"writer {writer}",
                text=[writer],
                textposition="top center",
                marker={"size": 20, "color": "rgba(0,0,0,0)", "line": {"width": 3, "color": HIGHLIGHT_COLOUR}},
                customdata=[[writer, int(row["images"])]],
                hovertemplate=(
                    f"writer {writer} (chosen)<br>cluster {int(row['cluster'])}<br>"
                    f"{int(row['images'])} images of digit {digit}<extra></extra>"
                ),
            )
        )
    figure.update_layout(
        height=520,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis={"title": {"text": "UMAP 1"}, "showticklabels": False},
        yaxis={"title": {"text": "UMAP 2"}, "showticklabels": False},
        legend={"itemsizing": "constant"},
        clickmode="event+select",
    )
    return figure


def cluster_size_bars(sizes: Sequence[int], image_counts: Sequence[int], highlight: int | None) -> go.Figure:
    """Draw writers per cluster as bars, with the image count of each cluster in its hover text."""
    k = len(sizes)
    colours = cluster_colours(k)
    figure = go.Figure(
        go.Bar(
            x=[str(cluster) for cluster in range(k)],
            y=list(sizes),
            marker={
                "color": colours,
                "line": {"width": [3 if cluster == highlight else 0 for cluster in range(k)], "color": HIGHLIGHT_COLOUR},
            },
            customdata=list(image_counts),
            hovertemplate="cluster %{x}<br>%{y} writers<br>%{customdata} images<extra></extra>",
        )
    )
    figure.update_layout(
        height=260,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis={"title": {"text": "cluster"}, "type": "category"},
        yaxis={"title": {"text": "writers"}},
    )
    return figure


def loss_curves(losses: dict) -> go.Figure:
    """Draw the generator and discriminator losses per epoch of a training job."""
    figure = go.Figure()
    for name, colour in (("generator", "#1f77b4"), ("discriminator", "#d62728")):
        values = losses.get(name) or []
        figure.add_trace(
            go.Scatter(
                x=list(range(1, len(values) + 1)),
                y=values,
                mode="lines+markers",
                name=name,
                line={"color": colour},
            )
        )
    figure.update_layout(
        height=260,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title={"text": "Mean loss per epoch", "font": {"size": 14}},
        xaxis={"title": {"text": "epoch"}, "rangemode": "tozero"},
        yaxis={"title": {"text": "loss"}},
        legend={"orientation": "h", "y": -0.3},
    )
    return figure


def placement_bars(placement: Sequence[int], chosen: int, title: str) -> go.Figure:
    """Draw the share of images that the nearest-centroid rule places in each cluster, `chosen` in black."""
    total = max(sum(placement), 1)
    shares = [100.0 * count / total for count in placement]
    colours = [HIGHLIGHT_COLOUR if cluster == chosen else MUTED_COLOUR for cluster in range(len(placement))]
    figure = go.Figure(
        go.Bar(
            x=[str(cluster) for cluster in range(len(placement))],
            y=shares,
            marker={"color": colours},
            customdata=list(placement),
            hovertemplate="cluster %{x}<br>%{y:.0f}% (%{customdata} images)<extra></extra>",
        )
    )
    figure.update_layout(
        height=280,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": title, "font": {"size": 14}},
        xaxis={"title": {"text": "cluster the image is placed in"}, "type": "category"},
        yaxis={"title": {"text": "share of images (%)"}, "range": [0, 100]},
    )
    return figure
