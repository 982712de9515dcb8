// Line charts in plain SVG for the status page: no library, nothing loaded from elsewhere.
//
//   FairwayCharts.lines(element, {
//     span: 300,                                   // seconds shown, ending now
//     series: [{name, color, dashed, points: [[secondsAgo, value | null], ...]}],
//     yMin: 100, format: (v) => v + "%", limit: {value: 100, label: "limit"},
//   });
//
// A null value is a gap. The <svg> carries data-points (values drawn) and data-sum (their
// sum), and each series path data-last (its newest value), for tests and curious operators.
"use strict";

window.FairwayCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 640, H = 210, L = 44, R = 12, T = 10, B = 24;

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A round upper bound for the axis: 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (v <= m * p + 1e-9) return m * p;
    return 10 * p;
  }

  // 1, 2, 2.5 or 5 times a power of ten: a step whose ticks read well.
  function isNice(step) {
    const m = step / Math.pow(10, Math.floor(Math.log10(step)));
    return [1, 2, 2.5, 5, 10].some((n) => Math.abs(m - n) < 1e-6);
  }

  function lines(container, opts) {
    const span = opts.span, format = opts.format || String;
    let top = opts.yMin || 0, drawn = 0, sum = 0;
    for (const s of opts.series) for (const [, v] of s.points) {
      if (v === null || v === undefined) continue;
      top = Math.max(top, v); drawn += 1; sum += v;
    }
    top = niceMax(top * 1.08);
    const x = (ago) => L + (W - L - R) * (1 - ago / span);
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "data-points": drawn, "data-sum": sum});
    if (opts.label) svg.setAttribute("aria-label", opts.label);

    const ticks = [5, 4, 6, 3].find((n) => isNice(top / n)) || 4;
    for (let i = 0; i <= ticks; i++) {
      const v = (top * i) / ticks;
      svg.append(el("line", {class: "grid-line", x1: L, x2: W - R, y1: y(v), y2: y(v)}));
      svg.append(el("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"}, format(v)));
    }
    const minutes = Math.round(span / 60);
    for (let m = 0; m <= minutes; m++) {
      const label = m === 0 ? "now" : `-${m}m`;
      svg.append(el("text", {x: x(m * 60), y: H - 6, "text-anchor": m === 0 ? "end" : "middle"}, label));
    }
    if (opts.limit && opts.limit.value <= top) {
      const ly = y(opts.limit.value);
      svg.append(el("line", {class: "limit-line", x1: L, x2: W - R, y1: ly, y2: ly}));
      svg.append(el("text", {x: W - R - 2, y: ly - 4, "text-anchor": "end"}, opts.limit.label));
    }
    const base = y(0).toFixed(1);
    for (const s of opts.series) {
      const segments = [];
      let current = null, last = null;
      for (const [ago, v] of s.points) {
        if (v === null || v === undefined || ago > span) { current = null; continue; }
        if (!current) segments.push(current = []);
        current.push([x(ago).toFixed(1), y(v).toFixed(1)]);
        last = v;
      }
      if (!s.dashed && segments.length) {
        const area = segments.map((seg) => `M${seg[0][0]},${base}` + seg.map(([px, py]) => `L${px},${py}`).join("") +
          `L${seg[seg.length - 1][0]},${base}Z`).join("");
        svg.append(el("path", {class: "area", d: area, fill: s.color}));
      }
      const d = segments.map((seg) => seg.map(([px, py], i) => (i ? "L" : "M") + px + "," + py).join("")).join("");
      svg.append(el("path", {class: "series" + (s.dashed ? " dashed" : ""), d: d || "M0,0", stroke: s.color,
        "data-series": s.name, "data-last": last === null ? "" : last}));
    }
    if (!drawn) {
      svg.append(el("text", {class: "empty-note", x: (L + W - R) / 2, y: (T + H - B) / 2, "text-anchor": "middle"},
        opts.empty || "nothing yet"));
    }
    container.replaceChildren(svg);
  }

  return {lines, niceMax};
})();
