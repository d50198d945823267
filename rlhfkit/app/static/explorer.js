// The KL explorer: a finished demo's PPO runs, or the runs an `rlhfkit eval --output-dir` evaluated, on a slider
// over the KL coefficient; for the selected run, its gold, proxy, KL, length and alarms next to the reference
// policy's (SFT in a demo), the same held-out prompts answered by both, and gold (and proxy) against sqrt(KL) for
// every policy with the selected run marked.
"use strict";
(function () {
  const { $, el, fmt, clear, api, message, start, option, plot } = window.RK;
  const PAGE = 6;
  const st = { demo: null, data: null, start: 0, sel: null };

  const sqrtKL = (p) => Math.sqrt(Math.max(0, p.kl || 0));

  async function ready(index) {
    const sel = $("demo");
    const evals = index.evals || [];
    if (!index.demos.length && !evals.length) {
      message("No finished demo (summary.json) or evaluation (rlhfkit eval --output-dir) under the runs directory.", true);
      return;
    }
    const label = (id) => (id === "." ? "(runs directory)" : id);
    for (const d of index.demos) sel.appendChild(option(d.id, label(d.id) + " (demo)"));
    for (const d of evals) sel.appendChild(option(d.id, label(d.id) + " (eval)"));
    sel.addEventListener("change", () => { st.start = 0; st.sel = null; load(sel.value); });
    $("beta-slider").addEventListener("input", () => select(+$("beta-slider").value));
    $("prev").addEventListener("click", () => { if (st.start > 0) { st.start = Math.max(0, st.start - PAGE); load(st.demo); } });
    $("next").addEventListener("click", () => {
      if (st.data && st.start + PAGE < st.data.total_prompts) { st.start += PAGE; load(st.demo); }
    });
    await load(sel.value);
  }

  async function load(demo) {
    st.demo = demo;
    const d = await api("GET", "/api/runs/explorer?demo=" + encodeURIComponent(demo) + "&start=" + st.start + "&count=" + PAGE);
    st.data = d;
    const s = $("beta-slider");
    s.max = Math.max(0, d.ppo.length - 1);
    s.disabled = d.ppo.length < 2;
    if (st.sel === null || st.sel >= d.ppo.length) st.sel = Math.floor(d.ppo.length / 2);
    s.value = st.sel;
    $("page-label").textContent = " prompts " + (d.start + 1) + "–" + Math.min(d.start + PAGE, d.total_prompts) +
      " of " + d.total_prompts + " ";
    select(st.sel);
  }

  function point(name) { return st.data.points.find((p) => p.name === name); }

  function select(i) {
    st.sel = i;
    const d = st.data;
    const name = d.ppo[i];
    const p = name ? point(name) : null;
    $("beta-label").textContent = p ? "β = " + p.beta + "  (" + name + ")" : "no run with a KL coefficient";
    document.body.dataset.selected = name || "";
    summary(p);
    frontier(p);
    samples(name);
  }

  function summary(p) {
    const tb = $("summary").querySelector("tbody");
    clear(tb);
    const rows = [point(st.data.reference), p].filter(Boolean);
    for (const r of rows) {
      const tr = document.createElement("tr");
      if (r === p) tr.className = "selected";
      const alarms = r.alarms.length ? r.alarms.map((a) => a.kind + (a.step !== null ? " @" + a.step : "")).join(", ") : "none";
      for (const v of [r.name, r.beta === null ? "" : r.beta, fmt(r.gold), fmt(r.proxy), fmt(r.kl), fmt(r.length, 1), alarms]) {
        tr.appendChild(el("td", null, v));
      }
      if (r.alarms.length) tr.lastChild.className = "alarm-cell";
      tb.appendChild(tr);
    }
  }

  function frontier(p) {
    const pts = st.data.points;
    const ppo = st.data.ppo.map(point).slice().sort((a, b) => sqrtKL(a) - sqrtKL(b));  // a curve along KL
    const onSlider = new Set(st.data.ppo);
    const bon = pts.filter((q) => q.kind === "bon").sort((a, b) => a.n - b.n);
    const others = pts.filter((q) => !onSlider.has(q.name) && q.kind !== "bon" && q.gold !== null);
    const kinds = [...new Set(ppo.map((q) => q.kind))];
    const runs = kinds.length === 1 ? kinds[0].toUpperCase() : "KL runs";  // "PPO" in a demo
    const series = [
      { name: runs + " gold", points: ppo.map((q) => [sqrtKL(q), q.gold]), dots: true },
      { name: runs + " proxy", points: ppo.map((q) => [sqrtKL(q), q.proxy]), dash: true, dots: true },
      { name: "best-of-n gold", points: bon.map((q) => [sqrtKL(q), q.gold]), dots: true },
      { name: "other policies", points: others.map((q) => [sqrtKL(q), q.gold]), line: false, dots: true },
    ];
    const labels = ppo.map((q) => ({ x: sqrtKL(q), y: q.gold, text: "β " + q.beta }))
      .concat(bon.map((q) => ({ x: sqrtKL(q), y: q.gold, text: "n " + q.n })))
      .concat(others.map((q) => ({ x: sqrtKL(q), y: q.gold, text: q.name })));
    // the selected run's own path during training (its monitor's probes), gold and proxy against sqrt(KL)
    const path = (p && st.data.trajectories && st.data.trajectories[p.name]) || [];
    if (path.length > 1) {
      series.push({ name: "training gold", color: "#9ca3af", dots: true,
                    points: path.map((q) => [sqrtKL(q), q.gold]) });
      series.push({ name: "training proxy", color: "#9ca3af", dash: true, points: path.map((q) => [sqrtKL(q), q.proxy]) });
    }
    const marks = p ? [{ x: sqrtKL(p), y: p.gold, label: "selected" }] : [];
    plot($("frontier"), { series, labels, marks, xlabel: "√ KL to " + st.data.kl_ref + " (nats)", ylabel: "score",
                          width: 760, height: 320 });
  }

  // `ref`: the reference policy's (SFT's) answer to the same prompt. An answer the reward model scores above SFT's while gold scores it
  // below is the reward model being fooled on that prompt: highlighted (no scale is shared by proxy and gold, so
  // the two are compared each against SFT, not against each other).
  function cell(s, ref) {
    const td = document.createElement("td");
    if (!s) { td.textContent = "–"; return td; }
    td.appendChild(el("div", "text", s.response));  // model text: textContent only
    td.appendChild(el("div", "hint", "gold " + fmt(s.gold) + " · proxy " + fmt(s.proxy) + " · KL " + fmt(s.kl) +
                                      " · " + fmt(s.length, 0) + " tokens"));
    const num = (v) => typeof v === "number";
    if (ref && ref !== s && num(s.proxy) && num(ref.proxy) && num(s.gold) && num(ref.gold) &&
        s.proxy > ref.proxy && s.gold < ref.gold) {
      td.classList.add("gap-cell");
      td.appendChild(el("div", "gap-note", "proxy up, gold down vs " + st.data.reference));
    }
    return td;
  }

  function samples(name) {
    const d = st.data;
    $("col-sel").textContent = name ? name : "selected";
    $("col-ref").textContent = d.reference || "reference";
    $("kl-head").textContent = "KL to " + d.kl_ref;
    const tb = $("samples").querySelector("tbody");
    clear(tb);
    const ref = (d.reference && d.samples[d.reference]) || [];
    const mine = (name && d.samples[name]) || [];
    d.prompts.forEach((prompt, i) => {
      const tr = document.createElement("tr");
      const tp = el("td", "prompt-cell");
      tp.appendChild(el("div", "text", prompt));
      if (ref[i] && ref[i].kind) tp.appendChild(el("div", "hint", ref[i].kind));
      tr.appendChild(tp);
      tr.appendChild(cell(ref[i], null));
      tr.appendChild(cell(mine[i], ref[i]));
      tb.appendChild(tr);
    });
  }

  start(ready);
})();
