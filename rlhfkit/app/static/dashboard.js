// The run dashboard: a run's metrics.jsonl as curves (reward, KL, length, loss) and its alarms, polled every few
// seconds by byte offset, so a run that is training grows on screen and each poll reads only the new lines.
"use strict";
(function () {
  const { $, el, clear, api, message, start, option, plot } = window.RK;
  const POLL_MS = +(new URLSearchParams(location.search).get("poll") || 3000);
  // Which metric keys go on which chart (docs/DESIGN.md: metric keys are namespaced group/name).
  const GROUPS = [
    { id: "reward", title: "Reward", test: (k) => /(^rollout\/(score|reward)|^rewards\/|^monitor\/(proxy|gold)$|reward)/.test(k) && !/kl/.test(k) },
    { id: "kl", title: "KL", test: (k) => /(^kl\/|^monitor\/kl$|approx_kl)/.test(k) && k !== "kl/beta" && !/_se$/.test(k) },
    { id: "length", title: "Length", test: (k) => /length/.test(k) },
    { id: "loss", title: "Loss", test: (k) => /loss$/.test(k) },
  ];
  const st = { run: null, offset: 0, rows: [], alarms: [], timer: null, gen: 0, last: null };

  async function ready(index) {
    const sel = $("run");
    if (!index.runs.length) { message("No runs (directories with metrics.jsonl) under the runs directory.", true); return; }
    const runs = index.runs.slice().sort((a, b) => b.mtime - a.mtime);  // the latest first: likely the live one
    for (const r of runs) sel.appendChild(option(r.id, r.id));
    const want = new URLSearchParams(location.search).get("run");
    if (want && runs.some((r) => r.id === want)) sel.value = want;
    sel.addEventListener("change", () => open(sel.value));
    for (const g of GROUPS) {
      const card = el("section", "card chart");
      card.appendChild(el("h2", null, g.title));
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.id = "chart-" + g.id;
      svg.setAttribute("class", "plot");
      card.appendChild(svg);
      $("charts").appendChild(card);
    }
    await open(sel.value);
  }

  async function open(run) {
    st.run = run; st.offset = 0; st.rows = []; st.alarms = []; st.gen++;
    if (st.timer) clearTimeout(st.timer);
    await poll(st.gen);
  }

  async function poll(gen) {
    try {
      for (let more = true; more && gen === st.gen;) {  // catch up in chunks, then wait for new lines
        const d = await api("GET", "/api/runs/metrics?run=" + encodeURIComponent(st.run) + "&offset=" + st.offset);
        if (gen !== st.gen) return;
        if (d.reset) st.rows = [];
        st.rows = st.rows.concat(d.rows);
        st.offset = d.offset;
        st.alarms = d.alarms;
        more = d.more;
      }
      st.last = new Date();
      draw();
    } catch (e) {
      $("live").textContent = "error: " + e.message;
    }
    if (gen === st.gen) st.timer = setTimeout(() => poll(gen), POLL_MS);
  }

  function xOf(r, i) { return typeof r.step === "number" ? r.step : i; }

  // At most ~600 points per curve: every k-th row (the last one always kept).
  function thin(points) {
    if (points.length <= 600) return points;
    const k = Math.ceil(points.length / 600);
    return points.filter((_, i) => i % k === 0 || i === points.length - 1);
  }

  function draw() {
    document.body.dataset.rows = String(st.rows.length);
    $("live").textContent = st.rows.length + " rows, " + st.offset + " bytes read, updated " +
      st.last.toLocaleTimeString() + " (every " + POLL_MS / 1000 + " s)";
    const keys = new Set();
    for (const r of st.rows) for (const k in r) if (k !== "step") keys.add(k);
    const vlines = st.alarms.filter((a) => typeof a.step === "number").map((a) => ({ x: a.step, label: a.kind }));
    for (const g of GROUPS) {
      const mine = Array.from(keys).filter(g.test).sort().slice(0, 6);
      const series = mine.map((k) => ({
        name: k,
        points: thin(st.rows.map((r, i) => [xOf(r, i), r[k]]).filter((p) => typeof p[1] === "number")),
      }));
      plot($("chart-" + g.id), { series, vlines, xlabel: "step", width: 560, height: 240 });
    }
    const ul = $("alarms");
    clear(ul);
    if (!st.alarms.length) ul.appendChild(el("li", "hint", "no alarms"));
    for (const a of st.alarms) {
      ul.appendChild(el("li", "alarm", a.kind + (a.step !== null ? " at step " + a.step : "") + (a.message ? ": " + a.message : "")));
    }
  }

  start(ready);
})();
