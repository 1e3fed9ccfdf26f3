"""What the page says, as text (no Gradio): the operator banner, the status lines (segmentation and
detection), the legend with its coverage bars, visitor text made safe for Markdown / HTML / toasts, and
the page's CSS and scripts."""

from __future__ import annotations

import html
import re

from . import results
from .detection import Detection, RenderedDetections, counts_by_class
from .models import ModelRegistry
from .outputs import Rendered
from .pipeline import Segmentation

CSS = """
.gradio-container {max-width: 1400px !important; margin: auto;}
#title h1 {margin-bottom: 0.1em;}
#title p {margin-top: 0; color: var(--body-text-color-subdued);}
#model-status {border-left: 4px solid #d97706; padding: 0.3em 0.9em; border-radius: 4px;
               background: var(--block-background-fill);}
#image-note p, #pixel-readout p {margin: 0; color: var(--body-text-color-subdued); font-size: 0.92em;}
#time-output {min-height: 1.5em;}
#run-button {font-size: 1.05em;}
#scoremaps-output .grid-wrap {max-height: none !important; height: auto !important;
                              overflow: visible !important;}
#scoremaps-output .thumbnail-item {aspect-ratio: auto !important; display: flex; flex-direction: column;}
#scoremaps-output .caption-label {position: static !important; max-width: 100% !important;
                                  align-self: center;}
#scoremaps-output .grid-container {padding-top: 2.4em !important;}
@media (max-width: 640px) {#scoremaps-output .grid-container {grid-template-columns: 1fr !important;}}
.dc-legend {display: grid; grid-template-columns: auto minmax(0, max-content) minmax(50px, 1fr) auto;
            gap: 3px 10px; align-items: center; font-size: 0.92em;}
.dc-swatch {width: 14px; height: 14px; border-radius: 3px; display: inline-block;}
.dc-name {overflow: hidden; text-overflow: ellipsis; white-space: nowrap;}
.dc-bar {height: 10px; background: var(--border-color-primary); border-radius: 5px; overflow: hidden;}
.dc-bar span {display: block; height: 100%;}
.dc-pct {text-align: right; font-variant-numeric: tabular-nums;}
.dc-more {grid-column: 1 / -1; color: var(--body-text-color-subdued);}
#detections-table {contain: inline-size; overflow-x: auto;}  /* a wide table scrolls, not the page */
#detect-status {min-height: 1.5em;}
"""
# The visitor's wait, measured in the browser from the click to the answer: queue and processing.
START_JS = "(...args) => { window.denseclipStart = performance.now(); return args; }"
WAITED_JS = ("(status) => window.denseclipStart ? `Waited **${((performance.now() - window.denseclipStart) "
             "/ 1000).toFixed(2)} s** (queue and processing) · ${status}` : status")


def toast(message: str) -> str:
    """Text for a toast, which Gradio renders as HTML: '<model>' would vanish."""
    return message.replace("<", "\u2039").replace(">", "\u203a")


def md(text: str) -> str:
    """Visitor text inside Markdown, shown literally (class names may contain * _ [ ] ...)."""
    return re.sub(r"([\\`*_{}\[\]<>#!|~])", r"\\\1", text)


def md_keep_bold(text: str) -> str:
    """Markdown with **bold** made by us, and everything between escaped."""
    return "**".join(md(part) for part in text.split("**"))


def banner(registry: ModelRegistry, detectors: ModelRegistry | None = None) -> str:
    """The operator banner: an untrained default model, and the models (and detectors) that could not be
    loaded with what the operator can do (the reasons are in the server log). Empty when all is well."""
    lines = []
    if registry.default is not None and registry.default.untrained:
        lines.append(f"⚠️ **{md(registry.default.label)}** is an *untrained* model with random weights "
                     "(`--tiny`), for checking the interface offline: its results are meaningless.")
    failed = {**registry.failures, **(detectors.failures if detectors is not None else {})}
    if failed:
        missing = ", ".join(md(label) for label in failed)
        zero_shot = any(registry.specs[label].kind == "zeroshot" for label in registry.failures
                        if label in registry.specs)
        hint = (" (OpenAI CLIP weights are missing: put them in the folder named by `DENSECLIP_WEIGHTS_DIR`, "
                "let the server reach the Hugging Face Hub, or start with `--tiny`)") if zero_shot else ""
        lines.append(f"⚠️ **Not available on this server:** {missing}. "
                     f"Operator: see the server log{hint}.")
    return "\n\n".join(lines)


def status_line(seg: Segmentation, out: Rendered) -> str:
    """Time, model, classes, size, the largest classes; then the quiet notes, one a line (Markdown)."""
    rec = out.record
    largest = sorted(rec["classes"], key=lambda c: -c["fraction"])[:3]
    top = ", ".join(f"{md(c['name'])} {c['fraction'] * 100:.0f}%" for c in largest if c["fraction"] > 0)
    untrained = " · ⚠️ untrained model: random output" if seg.spec.untrained else ""
    h, w = seg.pred.labels.shape
    line = (f"Processed in **{rec['seconds']:.2f} s** · {md(seg.spec.label)}{untrained} · "
            f"{len(seg.pred.names)} classes · {w}×{h} px · largest: {top or 'none'}")
    return line + "".join(f"  \n{md(n.text)}" for n in seg.notes if not n.loud)


def detection_status(det: Detection, out: RenderedDetections) -> str:
    """Time, detector, how many detections at the threshold, size, the commonest classes; then the notes."""
    rec = out.record
    untrained = " · ⚠️ untrained model: random output" if det.spec.untrained else ""
    h, w = rec["detected_at"]
    n = len(rec["detections"])
    common = ", ".join(f"{md(name)} ×{count}" for name, count in counts_by_class(rec))
    line = (f"Processed in **{rec['seconds']:.2f} s** · {md(det.spec.label)}{untrained} · "
            f"{n} detection{'' if n == 1 else 's'} scoring {det.options.threshold:.2f} or more · {w}×{h} px"
            + (f" · most: {common}" if common else ""))
    return line + "".join(f"  \n{md(note.text)}" for note in det.notes if not note.loud)


def legend_html(state: dict) -> str:
    """The classes present, largest first: colour, name, a bar and the share of pixels (a coverage chart
    in the page's own colours, so it follows dark mode and phone widths)."""
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
    return f"<div class='dc-legend'>{''.join(cells)}</div>"
