"""Makes ``presence/invite/font.py``, the small bitmap font of the PNG badge.

Not imported by the server: run it by hand (it needs Chromium and
Playwright, as the browser tests do) when the font should change::

    python -m presence.invite.make_font > presence/invite/font.py

Each printable ASCII character is drawn by Chromium on a canvas in DejaVu
Sans (Bitstream Vera licence, which allows this) at :data:`SIZE` pixels;
its coverage is kept as 4 bits a pixel, rows of :data:`HEIGHT` pixels.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys

SIZE = 13
HEIGHT = 16
BASELINE = 12
FONTS = {"regular": f"{SIZE}px 'DejaVu Sans'", "bold": f"bold {SIZE}px 'DejaVu Sans'"}

SCRIPT = """([font, height, baseline]) => {
  const out = {};
  const c = document.createElement('canvas');
  c.width = 40; c.height = height;
  const g = c.getContext('2d', {willReadFrequently: true});
  for (let code = 32; code < 127; code++) {
    const ch = String.fromCharCode(code);
    g.font = font;
    const w = Math.max(1, Math.round(g.measureText(ch).width));
    g.clearRect(0, 0, c.width, c.height);
    g.fillStyle = '#000'; g.textBaseline = 'alphabetic';
    g.fillText(ch, 0, baseline);
    const px = g.getImageData(0, 0, w, height).data;
    const a = [];
    for (let i = 3; i < px.length; i += 4) a.push(Math.round(px[i] / 17));
    out[ch] = [w, a];
  }
  return out;
}"""


def main() -> None:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=["--headless", "--no-sandbox"])
        page = browser.new_page()
        fonts = {name: page.evaluate(SCRIPT, [font, HEIGHT, BASELINE])
                 for name, font in FONTS.items()}
        browser.close()
    out = sys.stdout
    out.write('"""Bitmap font of the PNG badge, made by presence/invite/make_font.py from\n'
              'DejaVu Sans (Bitstream Vera licence).  Do not edit by hand."""\n\n')
    out.write(f"HEIGHT = {HEIGHT}\n\n#: style -> character -> (advance, base64 of 4-bit"
              " coverage, two pixels a byte, row by row)\nGLYPHS = {\n")
    for name, glyphs in fonts.items():
        out.write(f"    {name!r}: {{\n")
        for ch, (width, alpha) in sorted(glyphs.items()):
            if len(alpha) % 2:
                alpha = alpha + [0]
            packed = bytes((alpha[i] << 4) | alpha[i + 1] for i in range(0, len(alpha), 2))
            out.write(f"        {json.dumps(ch)}: ({width}, "
                      f"{base64.b64encode(packed).decode('ascii')!r}),\n")
        out.write("    },\n")
    out.write("}\n")


if __name__ == "__main__":
    main()
