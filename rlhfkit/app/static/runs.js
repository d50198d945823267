// rlhfkit runs pages (playground, explorer, dashboard): shared helpers. No framework, no build step, nothing loaded
// from elsewhere. Model text and anything read from a run directory goes on the page with textContent only.
"use strict";
window.RK = (function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const state = { me: null, csrf: null };

  function setState(s) { document.body.dataset.state = s; }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  // An element with a class and text (textContent: the text never becomes markup).
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function fmt(v, digits) {
    if (v === null || v === undefined || typeof v !== "number" || !isFinite(v)) return "–";
    const d = digits === undefined ? 3 : digits;
    return Math.abs(v) >= 1000 ? v.toFixed(0) : v.toFixed(d);
  }

  async function api(method, path, body) {
    const opts = { method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    if (method !== "GET" && state.csrf) opts.headers["X-CSRF-Token"] = state.csrf;
    const r = await fetch(path, opts);
    if (!r.ok) throw await httpError(r);
    return r.json();
  }

  async function httpError(r) {
    let d = null;
    try { d = (await r.json()).detail; } catch (e) { d = null; }
    const err = new Error(typeof d === "string" ? d : (d ? JSON.stringify(d) : r.statusText));
    err.status = r.status;
    return err;
  }

  // POST that answers NDJSON: onEvent(obj) per line as lines arrive.
  async function postStream(path, body, onEvent, signal) {
    const r = await fetch(path, {
      method: "POST", credentials: "same-origin", body: JSON.stringify(body), signal,
      headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf || "" },
    });
    if (!r.ok) throw await httpError(r);
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (value) buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) onEvent(JSON.parse(line));
      }
      if (done) break;
    }
  }

  function message(text, isError) {
    const m = $("message");
    m.textContent = text;
    m.classList.toggle("error", !!isError);
    m.hidden = !text;
  }

  // Session and access: the page needs a login (on /) and, unless shared, the admin role.
  async function start(onReady) {
    try {
      const me = await api("GET", "/api/me");
      state.me = me; state.csrf = me.csrf;
      $("who").textContent = me.name + " (" + me.role + ")";
    } catch (e) {
      message("Not logged in: log in on the labelling page first.", true);
      $("login-link").hidden = false;
      setState("login");
      return;
    }
    let index;
    try {
      index = await api("GET", "/api/runs/index");
    } catch (e) {
      message((e.status === 403 ? "Forbidden: " : "Error: ") + e.message, true);
      setState(e.status === 403 ? "forbidden" : "error");
      return;
    }
    $("view").hidden = false;
    try {
      await onReady(index);
      setState("ready");
    } catch (e) {
      message("Error: " + e.message, true);
      setState("error");
    }
  }

  function option(value, text) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    return o;
  }

  // ---- SVG plots --------------------------------------------------------------------------------------------
  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function ticks(lo, hi, n) {
    if (hi <= lo) return [lo];
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    return out;
  }

  const COLORS = ["#2f5bd3", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#4b5563"];

  // series: [{name, points: [[x, y]], color?, dash?, line?, dots?}]; marks: [{x, y, label}] (rings);
  // vlines: [{x, label}]; labels: [{x, y, text}]. Draws into the <svg> `svg` (cleared first).
  function plot(svg, opts) {
    clear(svg);
    const W = opts.width || 560, H = opts.height || 260, m = { l: 56, r: 12, t: 26, b: 40 };  // legend above
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("role", "img");
    const pts = [];
    for (const s of opts.series) for (const p of s.points) if (isFinite(p[0]) && isFinite(p[1])) pts.push(p);
    for (const mk of opts.marks || []) if (isFinite(mk.x) && isFinite(mk.y)) pts.push([mk.x, mk.y]);
    if (!pts.length) {
      svg.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no data yet"));
      return;
    }
    let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
    let y0 = Math.min(...pts.map((p) => p[1])), y1 = Math.max(...pts.map((p) => p[1]));
    if (x1 === x0) { x0 -= 0.5; x1 += 0.5; }
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    const py = (y1 - y0) * 0.08; y0 -= py; y1 += py;
    if (opts.labels || opts.marks) x1 += (x1 - x0) * 0.1;  // room on the right for the labels of the last points
    const X = (x) => m.l + (x - x0) / (x1 - x0) * (W - m.l - m.r);
    const Y = (y) => H - m.b - (y - y0) / (y1 - y0) * (H - m.t - m.b);
    const g = svgEl("g", {});
    svg.appendChild(g);
    for (const t of ticks(y0, y1, 4)) {
      g.appendChild(svgEl("line", { x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t), class: "grid" }));
      g.appendChild(svgEl("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end", class: "axis" }, +t.toPrecision(3)));
    }
    for (const t of ticks(x0, x1, 5)) {
      g.appendChild(svgEl("line", { x1: X(t), x2: X(t), y1: H - m.b, y2: H - m.b + 4, class: "frame" }));
      g.appendChild(svgEl("text", { x: X(t), y: H - m.b + 16, "text-anchor": "middle", class: "axis" }, +t.toPrecision(3)));
    }
    g.appendChild(svgEl("rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, class: "frame", fill: "none" }));
    if (opts.xlabel) g.appendChild(svgEl("text", { x: (W + m.l) / 2, y: H - 6, "text-anchor": "middle", class: "axis" }, opts.xlabel));
    if (opts.ylabel) g.appendChild(svgEl("text", { x: 12, y: (H - m.b) / 2, "text-anchor": "middle", class: "axis",
                                                   transform: "rotate(-90 12 " + (H - m.b) / 2 + ")" }, opts.ylabel));
    for (const v of opts.vlines || []) {
      if (!isFinite(v.x) || v.x < x0 || v.x > x1) continue;
      g.appendChild(svgEl("line", { x1: X(v.x), x2: X(v.x), y1: m.t, y2: H - m.b, class: "alarm-line" }));
      g.appendChild(svgEl("text", { x: X(v.x) + 3, y: m.t + 11, class: "alarm-text" }, v.label));
    }
    opts.series.forEach((s, i) => {
      const color = s.color || COLORS[i % COLORS.length];
      const ok = s.points.filter((p) => isFinite(p[0]) && isFinite(p[1]));
      if (s.line !== false && ok.length > 1) {
        const d = ok.map((p, j) => (j ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1)).join(" ");
        const path = svgEl("path", { d, fill: "none", stroke: color, "stroke-width": 1.6 });
        if (s.dash) path.setAttribute("stroke-dasharray", "5 3");
        g.appendChild(path);
      }
      if (s.dots || ok.length === 1) {
        for (const p of ok) g.appendChild(svgEl("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3.5, fill: color }));
      }
    });
    for (const lb of opts.labels || []) {
      if (isFinite(lb.x) && isFinite(lb.y)) g.appendChild(svgEl("text", { x: X(lb.x) + 5, y: Y(lb.y) - 5, class: "point-label" }, lb.text));
    }
    for (const mk of opts.marks || []) {
      if (!isFinite(mk.x) || !isFinite(mk.y)) continue;
      g.appendChild(svgEl("circle", { cx: X(mk.x), cy: Y(mk.y), r: 8, class: "mark" }));
      if (mk.label) g.appendChild(svgEl("text", { x: X(mk.x) + 10, y: Y(mk.y) + 16, class: "mark-label" }, mk.label));
    }
    // legend
    let lx = m.l + 8;
    opts.series.forEach((s, i) => {
      if (!s.name) return;
      const color = s.color || COLORS[i % COLORS.length];
      const line = svgEl("line", { x1: lx, x2: lx + 16, y1: 10, y2: 10, stroke: color, "stroke-width": 2.5 });
      if (s.dash) line.setAttribute("stroke-dasharray", "4 2");
      g.appendChild(line);
      const t = svgEl("text", { x: lx + 20, y: 14, class: "legend" }, s.name);
      g.appendChild(t);
      lx += 28 + 6.5 * String(s.name).length;
    });
  }

  return { $, state, setState, clear, el, fmt, api, postStream, message, start, option, plot, COLORS };
})();
