"""The shapes world's vocabulary and its scene description.

A scene is 1-4 non-overlapping objects on a plain light-grey background. Each object
has a shape (the GenEval "class"), a colour, a texture, a size and a position; the
position ``(x, y)`` is the centre of the object's bounding box, in image fractions with
``y`` pointing down (image convention), so ``(0.5, 0.5)`` is the image centre.

Geometry, in object coordinates ``(u, v) = ((px - x) / r, (py - y) / r)`` with ``r`` the
half-extent of the size (``EXTENTS``): every shape fills the square ``[-1, 1]^2`` edge to
edge, so its bounding box is ``[x - r, x + r] x [y - r, y + r]``:

- circle    ``u^2 + v^2 <= 1``
- square    ``|u| <= 1, |v| <= 1``
- triangle  apex up: ``|u| <= (v + 1) / 2``
- diamond   ``|u| + |v| <= 1``

Textures are drawn in a darker shade (``SHADE`` times the colour) on the colour, on a
grid fixed to the image (period ``TEXTURE_PERIOD`` of the image side, 4 pixels at 32x32,
so the pattern is pixel-aligned there): ``striped`` = horizontal stripes, half dark;
``dotted`` = square dots a quarter of the cell's area.
"""

from __future__ import annotations

from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle", "diamond")
# Area of each shape relative to its bounding box (used by the evaluator to infer the
# extent of a detected object from its area).
FILL = {"circle": 0.7853981633974483, "square": 1.0, "triangle": 0.5, "diamond": 0.5}

# name -> RGB; a subset of GenEval's ten colour names, chosen well apart in RGB and hue.
COLORS = {
    "red": (214, 39, 40),
    "orange": (247, 129, 21),
    "yellow": (240, 208, 30),
    "green": (44, 160, 64),
    "blue": (38, 84, 214),
    "purple": (137, 56, 186),
}
TEXTURES = ("solid", "striped", "dotted")
SIZES = ("small", "large")
EXTENTS = {"small": 0.12, "large": 0.19}  # half-extent r, as a fraction of the image side
BACKGROUND = (222, 222, 222)
SHADE = 0.5  # texture marks are SHADE * colour
TEXTURE_PERIOD = 0.125  # fraction of the image side
MAX_OBJECTS = 4


@dataclass(frozen=True)
class Obj:
    """One object: attributes from the vocabularies above, bounding-box centre ``(x, y)``."""

    shape: str
    color: str
    texture: str
    size: str
    x: float
    y: float

    def __post_init__(self):
        for value, allowed in ((self.shape, SHAPES), (self.color, COLORS), (self.texture, TEXTURES),
                               (self.size, SIZES)):
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {tuple(allowed)}")

    @property
    def extent(self) -> float:
        """Half-extent ``r`` as a fraction of the image side."""
        return EXTENTS[self.size]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Bounding box ``(x0, y0, x1, y1)`` in image fractions."""
        r = self.extent
        return (self.x - r, self.y - r, self.x + r, self.y + r)


@dataclass(frozen=True)
class Scene:
    """An ordered tuple of objects (the renderer draws them in this order; they never overlap)."""

    objects: tuple[Obj, ...]

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))

    def __len__(self) -> int:
        return len(self.objects)
