"""Point labels that do not overlap, placed when the figure is drawn.

Each label tries a fixed list of positions around its point, nearest first, and takes the first
whose text box (measured by the renderer that draws it) stays inside the axes and overlaps no
label placed before it, no labelled point and no given obstacle (a legend, a text box). A label
with no free position is left out rather than drawn over another. Placement runs at draw time,
after the figure's layout, so it holds for the axes' final size, in every output format; it is
deterministic (labels are placed in the order given).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.transforms import Bbox, IdentityTransform

RADII = (3.0, 9.0, 16.0, 24.0)
"""Distances (points) from a point to its label's nearest corner or edge, tried in order."""
DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
"""Sides of the point tried at each distance: the four diagonals first, then the four sides."""
POINT_SIZE = 2.0
"""Half-width (points) of the square kept free around each labelled point."""
LEADER_FROM = RADII[1]
"""Labels at this distance or farther get a thin line to their point."""


class PointLabels(Artist):
    """Labels ``texts`` of the data points ``xy`` of ``ax``, placed so that none overlaps another.

    Add it with :meth:`Axes.add_artist`; after a draw, :attr:`texts` holds every label and
    :attr:`shown` those that found a free place.
    """

    def __init__(
        self,
        ax: Axes,
        xy: np.ndarray,
        texts: Sequence[str],
        *,
        fontsize: float = 7,
        obstacles: Sequence[Artist] = (),
    ) -> None:
        super().__init__()
        self.axes = ax
        self.set_figure(ax.figure)
        self.set_zorder(5)
        self.set_in_layout(False)  # the labels stay inside the axes: the layout ignores them
        self.xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        self.obstacles = list(obstacles)
        self.texts = [self._child(Text(text=t, fontsize=fontsize)) for t in texts]
        self.leaders = [self._child(Line2D([], [], lw=0.5, c="0.3")) for _ in texts]
        self.shown: list[Text] = []

    def _child(self, artist: Text | Line2D) -> Text | Line2D:
        artist.set_figure(self.figure)
        artist.set_transform(IdentityTransform())  # positions in display pixels
        return artist

    def draw(self, renderer: RendererBase) -> None:
        """Place every label for this renderer's layout, then draw those that found a place."""
        if not self.get_visible():
            return
        frame = self.axes.get_window_extent(renderer)
        points = self.axes.transData.transform(self.xy)
        pad = renderer.points_to_pixels(POINT_SIZE)
        taken = [Bbox.from_extents(x - pad, y - pad, x + pad, y + pad) for x, y in points]
        taken += [a.get_window_extent(renderer) for a in self.obstacles if a.get_visible()]
        self.shown = []
        for text, leader, (x, y) in zip(self.texts, self.leaders, points, strict=True):
            box = self._place(text, x, y, frame, taken, renderer)
            text.set_visible(box is not None)
            leader.set_visible(False)
            if box is None:
                continue
            taken.append(box)
            self.shown.append(text)
            text.draw(renderer)
            if np.hypot(*(np.array(text.get_position()) - (x, y))) >= renderer.points_to_pixels(LEADER_FROM):
                leader.set_data([x, np.clip(x, box.x0, box.x1)], [y, np.clip(y, box.y0, box.y1)])
                leader.set_visible(True)
                leader.draw(renderer)
        self.stale = False

    @staticmethod
    def _place(
        text: Text, x: float, y: float, frame: Bbox, taken: list[Bbox], renderer: RendererBase
    ) -> Bbox | None:
        """Put ``text`` at the first free position around (x, y) and return its box, or None."""
        for radius in RADII:
            step = renderer.points_to_pixels(radius)
            for dx, dy in DIRECTIONS:
                text.set_position((x + dx * step, y + dy * step))
                text.set_horizontalalignment({1: "left", -1: "right", 0: "center"}[dx])
                text.set_verticalalignment({1: "bottom", -1: "top", 0: "center"}[dy])
                box = text.get_window_extent(renderer)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                if inside and not any(box.overlaps(other) for other in taken):
                    return box
        return None
