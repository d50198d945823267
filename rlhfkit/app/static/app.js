// rlhfkit label: the page. No framework, no build step. Every piece of model output is put on the page with
// textContent (never as HTML), and the server's Content-Security-Policy forbids inline scripts.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const state = { csrf: null, me: null, item: null, busy: false, stack: [], picked: [], order: [] };

  function setState(s) { document.body.dataset.state = s; }

  function randomKey() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  async function api(method, path, body) {
    const opts = { method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    if (method !== "GET" && state.csrf) opts.headers["X-CSRF-Token"] = state.csrf;
    const r = await fetch(path, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const d = data && data.detail;
      const err = new Error(typeof d === "string" ? d : (d ? JSON.stringify(d) : r.statusText));
      err.status = r.status;
      throw err;
    }
    return data;
  }

  // A submit is retried with the same idempotency key, so a lost response never stores a label twice.
  async function apiRetry(method, path, body) {
    let wait = 250;
    for (let attempt = 0; ; attempt++) {
      try {
        return await api(method, path, body);
      } catch (e) {
        const transient = e.status === undefined || e.status === 503 || e.status === 502;
        if (!transient || attempt >= 4) throw e;
        await new Promise((res) => setTimeout(res, wait));
        wait *= 2;
      }
    }
  }

  function status(msg, isError) {
    const el = $("status");
    el.textContent = msg;
    el.classList.toggle("error", !!isError);
  }

  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }

  function textBlock(text) {
    const d = document.createElement("div");
    d.className = "text";
    d.textContent = text;
    return d;
  }

  // ---- login / session ------------------------------------------------------------------------------------
  function showLogin() {
    state.me = null; state.csrf = null;
    $("login-view").hidden = false;
    $("label-view").hidden = true;
    $("logout").hidden = true;
    $("who").textContent = "";
    $("progress").textContent = "";
    setState("login");
    $("login-name").focus();
  }

  async function startSession(me) {
    state.me = me; state.csrf = me.csrf;
    if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
    $("login-view").hidden = true;
    $("label-view").hidden = false;
    $("logout").hidden = false;
    $("who").textContent = me.name + " (" + me.role + ")";
    $("admin-panel").hidden = me.role !== "admin";
    await refreshModel();
    await nextItem();
  }

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("login-error").textContent = "";
    try {
      const me = await api("POST", "/api/login", { name: $("login-name").value, token: $("login-token").value });
      $("login-token").value = "";
      await startSession(me);
    } catch (e) {
      $("login-error").textContent = e.status === 429 ? "Too many attempts; wait a few minutes." : "Login failed: " + e.message;
    }
  });

  $("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout", {}); } catch (e) { /* the session is gone either way */ }
    showLogin();
  });

  // ---- items ----------------------------------------------------------------------------------------------
  function renderPrompt(messages) {
    const el = $("prompt");
    clear(el);
    const h = document.createElement("h2");
    h.textContent = "Prompt";
    el.appendChild(h);
    for (const m of messages) {
      const row = document.createElement("div");
      row.className = "msg";
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = m.role;
      row.appendChild(role);
      row.appendChild(textBlock(m.content));
      el.appendChild(row);
    }
  }

  function renderRank() {
    const list = $("rank-list");
    clear(list);
    const it = state.item;
    const rest = it.responses.map((r) => r.position).filter((p) => !state.picked.includes(p));
    state.order = state.picked.concat(rest);
    state.order.forEach((pos) => {
      const li = document.createElement("li");
      li.className = "card resp" + (state.picked.includes(pos) ? " picked" : "");
      li.draggable = true;
      li.dataset.position = String(pos);
      const h = document.createElement("h2");
      h.textContent = "Response " + (pos + 1);
      li.appendChild(h);
      li.appendChild(textBlock(it.responses[pos].text));
      li.addEventListener("dragstart", (ev) => { ev.dataTransfer.setData("text/plain", String(pos)); });
      li.addEventListener("dragover", (ev) => ev.preventDefault());
      li.addEventListener("drop", (ev) => {
        ev.preventDefault();
        const from = Number(ev.dataTransfer.getData("text/plain"));
        const order = state.order.filter((p) => p !== from);
        order.splice(order.indexOf(pos), 0, from);
        state.picked = order; // a drag fixes the whole order
        renderRank();
      });
      list.appendChild(li);
    });
    $("rank-summary").textContent = state.picked.length ? state.picked.map((p) => p + 1).join(" > ") : "none yet";
  }

  function renderItem(it) {
    state.item = it; state.picked = [];
    document.body.dataset.itemId = String(it.item_id);
    renderPrompt(it.prompt);
    const pair = it.mode === "pair";
    $("pair").hidden = !pair;
    $("rank").hidden = pair;
    document.querySelectorAll(".pair-only").forEach((b) => { b.hidden = !pair; });
    document.querySelectorAll(".rank-only").forEach((b) => { b.hidden = pair; });
    if (pair) {
      $("resp-0-text").textContent = it.responses[0].text;
      $("resp-1-text").textContent = it.responses[1].text;
    } else {
      renderRank();
    }
    $("done-msg").hidden = true;
    $("work").classList.remove("finished");
  }

  async function nextItem() {
    setState("loading");
    const r = await apiRetry("POST", "/api/next", {});
    if (r.done) {
      state.item = null;
      document.body.dataset.itemId = "";
      $("done-msg").hidden = false;
      $("work").classList.add("finished");
      setState("done");
    } else {
      renderItem(r.item);
      setState("ready");
    }
    refreshProgress();
  }

  async function submit(choice) {
    if (state.busy || !state.item) return;
    const it = state.item;
    const body = { item_id: it.item_id, choice, rationale: $("rationale").value, idempotency_key: randomKey() };
    if (choice === "rank") {
      if (state.order.length !== it.responses.length) return;
      body.ranking = state.order.slice();
    } else if (it.mode === "rank" && choice !== "skip") {
      return;
    }
    state.busy = true;
    setState("saving");
    try {
      const r = await apiRetry("POST", "/api/labels", body);
      state.stack.push(r.label_id);
      $("rationale").value = "";
      document.body.dataset.labels = String(state.stack.length);
      status("Saved label #" + r.label_id + (r.duplicate ? " (already stored)" : "") + ". " + describeModel(r));
      await nextItem();
      refreshModel();
    } catch (e) {
      status("Not saved: " + e.message, true);
      if (e.status === 401) showLogin(); else if (e.status === 409) await nextItem(); else setState("ready");
    } finally {
      state.busy = false;
    }
  }

  function describeModel(r) {
    const m = r.model || {};
    if (r.choice === "skip") return "";
    if (m.p_left === null || m.p_left === undefined) return "The live model has not been trained yet.";
    const p = Number(m.p_left);
    let txt = "Model (v" + m.version + "): P(left > right) = " + p.toFixed(2) + ".";
    if (r.choice === "left" || r.choice === "right") {
      const pc = r.choice === "left" ? p : 1 - p;
      $("m-last").textContent = pc.toFixed(2);
      txt += pc >= 0.5 ? " It agrees with you." : " It disagrees with you.";
    }
    return txt;
  }

  async function undo() {
    if (state.busy) return;
    state.busy = true;
    try {
      const last = state.stack.length ? state.stack[state.stack.length - 1] : null;
      const r = await apiRetry("POST", "/api/undo", last === null ? {} : { label_id: last });
      if (r.undone === null) {
        status("Nothing to undo.");
      } else {
        if (state.stack.length && state.stack[state.stack.length - 1] === r.undone) state.stack.pop();
        document.body.dataset.labels = String(state.stack.length);
        document.body.dataset.undone = String(r.undone);
        status("Undid label #" + r.undone + "; it is back on screen.");
        await nextItem();
        $("rationale").value = r.rationale || "";
        refreshModel();
      }
    } catch (e) {
      status("Undo failed: " + e.message, true);
    } finally {
      state.busy = false;
    }
  }

  // ---- side panels ----------------------------------------------------------------------------------------
  function fmt(x, digits) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }

  async function refreshModel() {
    if (!state.me) return;
    try {
      const m = await api("GET", "/api/model");
      $("m-comparisons").textContent = String(m.comparisons);
      $("m-version").textContent = m.version ? String(m.version) : "not trained yet";
      $("m-acc").textContent = m.heldout ? fmt(m.heldout.accuracy, 3) + " (n=" + m.heldout.n + ")" : "–";
      $("m-loss").textContent = m.heldout ? fmt(m.heldout.loss, 3) : "–";
      $("m-until").textContent = m.until_retrain + (m.until_retrain === 1 ? " label" : " labels");
      $("m-features").textContent = "Features: " + m.features + (m.features_detail ? " (" + m.features_detail + ")" : "") +
        (m.error ? " · last error: " + m.error : "");
    } catch (e) { /* the panel is informational */ }
  }

  async function refreshProgress() {
    try {
      const p = await api("GET", "/api/progress");
      $("progress").textContent = "You: " + p.me.labelled + " labelled, " + p.me.available + " available · all: " +
        p.overall.labels + " / " + p.overall.needed + " labels, " + p.overall.items_complete + " / " + p.overall.items + " items complete";
    } catch (e) { /* ignore */ }
  }

  async function refreshStats() {
    try {
      const s = await api("GET", "/api/admin/stats");
      const ag = s.agreement;
      let txt = "Fleiss' kappa: " + fmt(ag.fleiss_kappa, 3) + " over " + ag.items_with_2plus + " items.";
      for (const c of ag.cohen) txt += " Cohen " + c.a + "/" + c.b + ": " + fmt(c.kappa, 3) + " (" + c.items + ").";
      if (s.gold && s.gold.agreement !== null) txt += " Gold-judge agreement: " + fmt(s.gold.agreement, 3) + ".";
      $("stats-kappa").textContent = txt;
      const tb = $("stats-table").querySelector("tbody");
      clear(tb);
      for (const a of s.progress.annotators) {
        const tr = document.createElement("tr");
        for (const v of [a.name, a.labels, a.skips, a.undone]) {
          const td = document.createElement("td");
          td.textContent = String(v);
          tr.appendChild(td);
        }
        tb.appendChild(tr);
      }
    } catch (e) { $("stats-kappa").textContent = "Stats failed: " + e.message; }
  }
  $("stats-refresh").addEventListener("click", refreshStats);

  // ---- keys and buttons -----------------------------------------------------------------------------------
  document.querySelectorAll("#controls button[data-choice]").forEach((b) => {
    b.addEventListener("click", () => submit(b.dataset.choice));
  });
  $("undo").addEventListener("click", undo);

  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) {
      if (ev.key === "Escape") t.blur();
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat || !state.me) return;
    const it = state.item;
    const k = ev.key;
    if (k === "u") { ev.preventDefault(); undo(); return; }
    if (!it) return;
    if (k === "s") { ev.preventDefault(); submit("skip"); return; }
    if (it.mode === "pair") {
      const map = { "1": "left", "2": "right", "t": "tie", "b": "both_bad" };
      if (map[k]) { ev.preventDefault(); submit(map[k]); }
      return;
    }
    const n = Number(k);
    if (Number.isInteger(n) && n >= 1 && n <= it.responses.length && !state.picked.includes(n - 1)) {
      state.picked.push(n - 1);
      renderRank();
    } else if (k === "Backspace") {
      ev.preventDefault();
      state.picked.pop();
      renderRank();
    } else if (k === "Enter") {
      ev.preventDefault();
      submit("rank");
    }
  });

  setInterval(() => { if (state.me) refreshModel(); }, 10000);

  // ---- start ----------------------------------------------------------------------------------------------
  api("GET", "/api/me").then(startSession).catch(showLogin);
})();
