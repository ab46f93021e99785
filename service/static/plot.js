// A small canvas line plot (no library, works offline): one panel per modality,
// the query in black, neighbours in colour, the query's model translation dashed.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return sorted[i];
}

function niceTicks(lo, hi, n) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => span / s <= n) || 10 * mag;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9 * span; t += step) out.push(t);
  return out;
}

// curves: [{label, modality, kind, wavelength: [...], flux: [...]}]; the first is the query.
function plotCurves(canvas, curves) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  const modalities = [...new Set(curves.map(c => c.modality))];
  const panelH = H / Math.max(1, modalities.length);
  const colours = new Map();
  let next = 0;
  curves.forEach(c => {
    colours.set(c, c.role === "neighbour" ? PALETTE[next++ % 10] : (c.kind === "model" ? "#555" : "#000"));
  });
  modalities.forEach((mod, p) => {
    const inPanel = curves.filter(c => c.modality === mod);
    const top = p * panelH, left = 60, right = W - 12, bottom = top + panelH - 34;
    let xs = [], ys = [];
    inPanel.forEach(c => c.wavelength.forEach((x, j) => {
      const y = c.flux[j];
      if (y !== null && Number.isFinite(y)) { xs.push(x); ys.push(y); }
    }));
    if (!xs.length) return;
    ys.sort((a, b) => a - b);
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    let y0 = quantile(ys, 0.005), y1 = quantile(ys, 0.995);
    const pad = 0.08 * (y1 - y0 || 1); y0 -= pad; y1 += pad;
    const X = x => left + (x - x0) / (x1 - x0 || 1) * (right - left);
    const Y = y => bottom - (y - y0) / (y1 - y0 || 1) * (bottom - top - 18);
    // axes and ticks
    ctx.strokeStyle = "#999"; ctx.lineWidth = 1; ctx.setLineDash([]);
    ctx.strokeRect(left, top + 18, right - left, bottom - top - 18);
    ctx.fillStyle = "#333"; ctx.font = "11px sans-serif"; ctx.textAlign = "center";
    niceTicks(x0, x1, 10).forEach(t => { ctx.fillText(t.toFixed(0), X(t), bottom + 13); });
    ctx.textAlign = "right";
    niceTicks(y0, y1, 5).forEach(t => { ctx.fillText(t.toPrecision(3), left - 4, Y(t) + 4); });
    ctx.textAlign = "left"; ctx.font = "bold 12px sans-serif";
    ctx.fillText((mod === "xp" ? "Gaia XP" : mod.toUpperCase()) + "  (normalised flux vs "
                 + "vacuum wavelength, \u00c5)", left + 4, top + 13);
    // neighbours first, then the query (and its translation) on top
    const isQuery = c => c.role !== "neighbour";
    const order = inPanel.filter(c => !isQuery(c)).concat(inPanel.filter(isQuery));
    order.forEach(c => {
      ctx.strokeStyle = colours.get(c);
      ctx.globalAlpha = isQuery(c) ? 1.0 : 0.7;
      ctx.lineWidth = isQuery(c) ? 1.5 : 1.0;
      ctx.setLineDash(isQuery(c) && c.kind === "model" ? [5, 3] : []);
      ctx.beginPath();
      let pen = false;
      c.wavelength.forEach((x, j) => {
        const y = c.flux[j];
        if (y === null || !Number.isFinite(y)) { pen = false; return; }
        const py = Math.max(top + 18, Math.min(bottom, Y(y)));
        if (pen) ctx.lineTo(X(x), py); else { ctx.moveTo(X(x), py); pen = true; }
      });
      ctx.stroke();
    });
    ctx.globalAlpha = 1; ctx.setLineDash([]);
  });
  return curves.map(c => ({label: c.label, colour: colours.get(c), kind: c.kind}));
}
