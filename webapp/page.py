"""What the page says, as text (no Gradio): which models are ready, the model hint, the status lines
(segmentation and detection), the legend with its coverage bars and the score maps' colour bar, visitor
text made safe for Markdown / HTML / toasts, and the page's CSS and scripts."""

from __future__ import annotations

import html
import re

from . import results
from .catalog import TOY, ModelSpec
from .detection import Detection, RenderedDetections, counts_by_class
from .models import ModelRegistry
from .outputs import Rendered
from .pipeline import Segmentation
from .scoremaps import CMAP

TOY_CLASSES = "sky, tree, road, person and car"
CSS = """
.gradio-container {max-width: 1400px !important; margin: auto;}
#title h1 {margin: 0 0 0.1em; font-size: 1.6em;}
#title p {margin: 0; color: var(--body-text-color-subdued);}
#model-status p {margin: 0; font-size: 0.9em; color: var(--body-text-color-subdued);}
#image-note p, #pixel-readout p {margin: 0; color: var(--body-text-color-subdued); font-size: 0.92em;}
#time-output {min-height: 1.5em;}
#run-button {font-size: 1.05em;}
#scoremaps-output .caption-label {white-space: normal; overflow: visible; text-overflow: clip;}
.dc-title {font-weight: 600; margin: 0.2em 0 0.4em;}
.dc-legend {display: grid; grid-template-columns: auto minmax(0, max-content) minmax(50px, 1fr) auto;
            gap: 3px 10px; align-items: center; font-size: 0.92em;}
.dc-swatch {width: 14px; height: 14px; border-radius: 3px; display: inline-block;}
.dc-name {overflow: hidden; text-overflow: ellipsis; white-space: nowrap;}
.dc-bar {height: 10px; background: var(--border-color-primary); border-radius: 5px; overflow: hidden;}
.dc-bar span {display: block; height: 100%;}
.dc-pct {text-align: right; font-variant-numeric: tabular-nums;}
.dc-more {grid-column: 1 / -1; color: var(--body-text-color-subdued);}
.dc-scale {display: grid; grid-template-columns: auto 1fr auto; gap: 2px 8px; align-items: center;
           font-size: 0.85em; margin-top: 0.8em; color: var(--body-text-color-subdued);}
.dc-ramp {height: 10px; border-radius: 5px;}
.dc-unit {grid-column: 1 / -1; text-align: center;}
#detections-table {contain: inline-size; overflow-x: auto;}  /* a wide table scrolls, not the page */
#detect-status {min-height: 1.5em;}
@media (max-width: 640px) {
  #title h1 {font-size: 1.3em;}
  #title p {font-size: 0.88em;}
  #scoremaps-output .grid-container {grid-template-columns: repeat(2, minmax(0, 1fr)) !important;}
  #examples .gallery-item .container, #toy-examples .gallery-item .container {width: 54px; height: 54px;}
}
"""
# The visitor's wait, measured in the browser from the click to the answer: queue and processing.
START_JS = "(...args) => { window.denseclipStart = performance.now(); return args; }"
WAITED_JS = ("(status) => window.denseclipStart ? `Waited **${((performance.now() - window.denseclipStart) "
             "/ 1000).toFixed(2)} s** (queue and processing) · ${status}` : status")
# On a phone the answer is below the inputs: bring it into view once it is there (after its picture has
# loaded and the page has settled, or the page moves under the scroll).
SHOW_ANSWER_JS = """async () => {
  const el = document.querySelector('#segmentation-output');
  const img = el && el.querySelector('img');
  if (img && !img.complete) {
    await new Promise(done => { img.onload = img.onerror = done; setTimeout(done, 3000); });
  }
  await new Promise(done => setTimeout(done, 150));
  const box = el && el.getBoundingClientRect();
  if (box && box.top > window.innerHeight - 80) el.scrollIntoView({block: 'start'});
}"""


FAILED = "⚠️ That run did not finish (the message is in the corner). The result shown is the one before."
READ_A_POINT = "Click the segmentation to read the scores at a point and see the regions most like it."


def gallery_label(state: dict) -> str:
    shown, total = len(state["gallery"]), len(state["names"])
    return f"Score maps · {shown} of {total}" if total > shown else "Score maps"  # the others: the picker


def toast(message: str) -> str:
    """Text for a toast, which Gradio renders as HTML: '<model>' would vanish."""
    return message.replace("<", "\u2039").replace(">", "\u203a")


def md(text: str) -> str:
    """Visitor text inside Markdown, shown literally (class names may contain * _ [ ] ...)."""
    return re.sub(r"([\\`*_{}\[\]<>#!|~])", r"\\\1", text)


def md_keep_bold(text: str) -> str:
    """Markdown with **bold** made by us, and everything between escaped."""
    return "**".join(md(part) for part in text.split("**"))


def models_line(registry: ModelRegistry) -> str:
    """For visitors: the models ready now (loaded), and how many are still starting."""
    choices = registry.choices()
    ready = [label for label in choices if registry.loaded(label)]
    starting = len(choices) - len(ready)
    if not ready:
        return "The models are starting: the first answer may take a little longer." if choices else \
            "No model is available right now. Please come back later."
    line = "Ready: " + ", ".join(md(label) for label in ready)
    return line + (f" · {starting} more starting" if starting else "")


def model_hint(spec: ModelSpec | None) -> str:
    """What the chosen model does with the names, in the visitor's terms (the Model box's hint)."""
    if spec is None:
        return ""
    if spec.kind == "zeroshot" and spec.source == TOY:
        return (f"An offline demo model: it knows only five things, {TOY_CLASSES}, in drawn scenes like "
                "the examples. The CLIP models appear here when this server has their weights.")
    if spec.kind == "zeroshot":
        noise = " Untrained: its results are noise, for trying the page." if spec.pretrained is None else ""
        return "Finds any names you type, without training for them." + noise
    noise = " Untrained: its results are noise." if spec.pretrained is None else ""
    return ("A trained DenseCLIP model that knows its own classes: type some of them, or leave the names "
            "empty for all." + noise)


def status_line(seg: Segmentation, out: Rendered) -> str:
    """Time, model, classes, size, the largest classes; then the quiet notes, one a line (Markdown)."""
    rec = out.record
    largest = sorted(rec["classes"], key=lambda c: -c["fraction"])[:3]
    top = ", ".join(f"{md(c['name'])} {c['fraction'] * 100:.0f}%" for c in largest if c["fraction"] > 0)
    untrained = " · ⚠️ untrained model: random output" if seg.spec.pretrained is None else ""
    h, w = seg.pred.labels.shape
    k = len(seg.pred.names)
    line = (f"Processed in **{rec['seconds']:.2f} s** · {md(seg.spec.label)}{untrained} · "
            f"{k} class{'' if k == 1 else 'es'} · {w}×{h} px · largest: "
            f"{top or 'none (every pixel unlabelled)'}")
    return line + "".join(f"  \n{md(n.text)}" for n in seg.notes if not n.loud)


def detection_status(det: Detection, out: RenderedDetections) -> str:
    """Time, detector, how many detections at the threshold, size, the commonest classes; then the notes."""
    rec = out.record
    untrained = " · ⚠️ untrained model: random output" if det.spec.pretrained is None else ""
    h, w = rec["detected_at"]
    n = len(rec["detections"])
    common = ", ".join(f"{md(name)} ×{count}" for name, count in counts_by_class(rec))
    line = (f"Processed in **{rec['seconds']:.2f} s** · {md(det.spec.label)}{untrained} · "
            f"{n} detection{'' if n == 1 else 's'} scoring {det.options.threshold:.2f} or more · {w}×{h} px"
            + (f" · most: {common}" if common else ""))
    return line + "".join(f"  \n{md(note.text)}" for note in det.notes if not note.loud)


def colour_bar_html(lo: float, hi: float, unit: str, cmap: str = CMAP, stops: int = 9) -> str:
    """The score maps' colour scale, drawn by the browser (follows dark mode, costs no picture)."""
    import matplotlib

    colours = matplotlib.colormaps[cmap](
        [i / (stops - 1) for i in range(stops)], bytes=True)
    ramp = ", ".join(f"rgb({r},{g},{b})" for r, g, b, _ in colours)
    return (f"<div class='dc-scale'><span>{lo:.2f}</span><span class='dc-ramp' style='background: "
            f"linear-gradient(to right, {ramp})'></span><span>{hi:.2f}</span>"
            f"<span class='dc-unit'>score maps: {html.escape(unit)}, one scale for every class</span></div>")


def legend_html(state: dict) -> str:
    """Every class, largest first, with its share of the picture's pixels (a coverage chart in the
    page's own colours, so it follows dark mode and phone widths), and the score maps' colour bar."""
    rows, more = results.legend_rows(state)
    cells = []
    for name, color, share in rows:
        name = html.escape(name)
        cells.append(f"<span class='dc-swatch' style='background:{color}'></span>"
                     f"<span class='dc-name' title='{name}'>{name}</span>"
                     f"<span class='dc-bar'><span style='width:{share * 100:.2f}%;background:{color}'>"
                     f"</span></span><span class='dc-pct'>{share * 100:.1f}%</span>")
    unlabelled = 1.0 - sum(state["coverage"])
    if more:
        cells.append(f"<span class='dc-more'>and {more} more classes (all of them in the results "
                     "JSON)</span>")
    if unlabelled > 0.0005:
        cells.append("<span class='dc-more'>unlabelled (matches none of the names): "
                     f"{unlabelled * 100:.1f}%</span>")
    return (f"<div class='dc-title'>Share of the picture's pixels</div>"
            f"<div class='dc-legend'>{''.join(cells)}</div>{colour_bar_html(*state['range'], state['unit'])}")
