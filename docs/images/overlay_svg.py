"""Source of docs/images/overlay.svg: the layers of an overlay mount and its merged view.

Run ``python3 docs/images/overlay_svg.py`` from the repository root after changing the
picture; it rewrites ``overlay.svg`` beside this file.  The drawing is described by the
LAYERS table below: one row per layer (top row drawn first), one column per file.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

OUT = Path(__file__).with_name("overlay.svg")

COLUMNS = ("file1", "file2", "file3", "new-file")
# Row name, caption, fill colour, and what the row holds in each column:
# a label, "whiteout", or None for nothing.
LAYERS: list[tuple[str, str, str, dict[str, str]]] = [
    (
        "merged view",
        "the mount point (path)",
        "#e8f1fb",
        {"file1": "file1", "file3": "file3 (v2)", "new-file": "new-file"},
    ),
    (
        "upperdir",
        "writable: new and changed files, whiteouts",
        "#fdf1dc",
        {"file2": "whiteout", "new-file": "new-file"},
    ),
    (
        "lowerdir 1",
        "read-only, topmost lower (listed first)",
        "#eef6e8",
        {"file1": "file1", "file3": "file3 (v2)"},
    ),
    (
        "lowerdir 2",
        "read-only, bottom lower (listed last)",
        "#eef6e8",
        {"file2": "file2", "file3": "file3 (v1)"},
    ),
]

LEFT, TOP, ROW_H, GAP = 20, 60, 56, 34
LABEL_W, CELL_W, CELL_H, COL_GAP = 250, 120, 34, 18
WIDTH = LEFT + LABEL_W + len(COLUMNS) * (CELL_W + COL_GAP) + 240
HEIGHT = TOP + len(LAYERS) * (ROW_H + GAP) + 30
NOTES = (
    "Deleting file2 through the merged view wrote a whiteout into upperdir; "
    "lowerdir 2 still has file2.",
    "file3 (v1) is covered by file3 (v2) of lowerdir 1, the higher lower layer.",
)


def row_y(index: int) -> int:
    """Top of a layer's band."""
    return TOP + index * (ROW_H + GAP)


def col_x(column: str) -> int:
    """Left edge of a column's cell."""
    return LEFT + LABEL_W + COLUMNS.index(column) * (CELL_W + COL_GAP)


def text(x: float, y: float, body: str, size: int = 13, **attrs: str) -> str:
    """One text element."""
    extra = "".join(f' {key.replace("_", "-")}="{value}"' for key, value in attrs.items())
    return f'<text x="{x}" y="{y}" font-size="{size}"{extra}>{escape(body)}</text>'


def band(index: int, name: str, caption: str, fill: str) -> list[str]:
    """The background band and the label of one layer."""
    y = row_y(index)
    width = LABEL_W + len(COLUMNS) * (CELL_W + COL_GAP)
    return [
        f'<rect x="{LEFT}" y="{y}" width="{width}" height="{ROW_H}" rx="8" fill="{fill}" '
        'stroke="#9aa5b1"/>',
        text(LEFT + 12, y + 24, name, 15, font_weight="bold"),
        text(LEFT + 12, y + 43, caption, 11, fill="#52606d"),
    ]


def cell(index: int, column: str, label: str) -> list[str]:
    """One file (or whiteout) in a layer."""
    x, y = col_x(column), row_y(index) + (ROW_H - CELL_H) // 2
    if label == "whiteout":
        return [
            f'<rect x="{x}" y="{y}" width="{CELL_W}" height="{CELL_H}" rx="4" fill="#3e4c59"/>',
            text(x + 8, y + 15, "file2: whiteout", 11, fill="#ffffff"),
            text(x + 8, y + 28, "char device 0/0", 11, fill="#ffffff"),
        ]
    return [
        f'<rect x="{x}" y="{y}" width="{CELL_W}" height="{CELL_H}" rx="4" fill="#ffffff" '
        'stroke="#52606d"/>',
        text(x + 10, y + 22, label, 12, font_family="monospace"),
    ]


def arrows() -> list[str]:
    """Which layer supplies each file of the merged view; the whiteout stops file2."""
    out: list[str] = []
    for column in COLUMNS:
        source = next(
            (i for i in range(1, len(LAYERS)) if column in LAYERS[i][3]),
            None,
        )
        if source is None:
            continue
        x = col_x(column) + CELL_W // 2
        bottom = row_y(source) + (ROW_H - CELL_H) // 2
        top = row_y(0) + (ROW_H + CELL_H) // 2
        if LAYERS[source][3][column] == "whiteout":
            hidden = next(i for i in range(source + 1, len(LAYERS)) if column in LAYERS[i][3])
            start = row_y(hidden) + (ROW_H - CELL_H) // 2
            stop = row_y(source) + (ROW_H + CELL_H) // 2
            out.append(
                f'<line x1="{x}" y1="{start}" x2="{x}" y2="{stop + 4}" stroke="#c62828" '
                'stroke-width="2" stroke-dasharray="5 4"/>'
            )
            out.append(
                f'<line x1="{x - 22}" y1="{stop + 4}" x2="{x + 22}" y2="{stop + 4}" '
                'stroke="#c62828" stroke-width="4"/>'
            )
            out.append(text(x - 56, row_y(0) + 34, "(hidden)", 12, fill="#c62828"))
            continue
        out.append(
            f'<line x1="{x}" y1="{bottom}" x2="{x}" y2="{top + 6}" stroke="#1f6fb2" '
            'stroke-width="2" marker-end="url(#arrow)"/>'
        )
    return out


def workdir() -> list[str]:
    """The workdir beside the upper layer: same file system, private to overlayfs."""
    x = LEFT + LABEL_W + len(COLUMNS) * (CELL_W + COL_GAP) + 20
    y = row_y(1)
    return [
        f'<rect x="{x}" y="{y}" width="200" height="{ROW_H}" rx="8" fill="#f5f7fa" '
        'stroke="#9aa5b1" stroke-dasharray="6 4"/>',
        text(x + 12, y + 24, "workdir", 15, font_weight="bold"),
        text(x + 12, y + 43, "empty, same fs as upperdir", 11, fill="#52606d"),
    ]


def render() -> str:
    """The whole SVG document."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">',
        "<title>Overlay mount: lowers, upper, workdir and the merged view</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0 0 L10 5 L0 10 z" fill="#1f6fb2"/>'
        "</marker></defs>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        text(
            LEFT,
            32,
            "An overlay mount: each file comes from the topmost layer that has it",
            16,
            font_weight="bold",
        ),
    ]
    for index, (name, caption, fill, files) in enumerate(LAYERS):
        parts += band(index, name, caption, fill)
        for column, label in files.items():
            parts += cell(index, column, label)
    parts += arrows()
    parts += workdir()
    notes_y = row_y(len(LAYERS)) - GAP + 24
    for number, note in enumerate(NOTES):
        parts.append(text(LEFT, notes_y + number * 18, note, 12, fill="#52606d"))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
