// The operator's status page: polls /v1/stats/overview with the admin key kept in this tab's
// sessionStorage and draws it. Every value goes into the page as text (textContent), never
// as markup.
"use strict";

(() => {
  const KEY = "fairway-admin-key";
  const POLL_MS = 1000, HIDDEN_POLL_MS = 5000, RETRY_MS = 3000, MAX_TENANT_LINES = 8;
  const COLORS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2", "#db2777", "#65a30d", "#64748b"];
  const STATUSES = ["PENDING", "PROCESSING", "DONE", "FAILED", "CANCELED"];
  const $ = (id) => document.getElementById(id);
  const numbers = new Intl.NumberFormat("en-US", {maximumFractionDigits: 1});

  // An element with properties, attributes ("data-…", "aria-…", role, title) and children.
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = String(v);
      else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role" || k === "title") {
        node.setAttribute(k, String(v));
      } else node[k] = v;
    }
    for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c);
    return node;
  }
  const num = (v) => (v === null || v === undefined ? "—" : numbers.format(v));
  const pct = (v) => (v === null || v === undefined ? "—" : `${(+v).toFixed(v >= 10 || v === 0 ? 0 : 1)}%`);
  function since(seconds) {
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
    return `${Math.round(seconds / 86400)} d`;
  }
  const ago = (ts, now) => (ts ? `${since(Math.max(0, (now - Date.parse(ts)) / 1000))} ago` : "—");
  const short = (id) => String(id).slice(0, 8);

  function table(node, columns, rows, empty) {
    const head = h("tr", {}, columns.map(([label, cls]) => h("th", {class: cls, text: label})));
    const body = rows.length
      ? rows.map((row) => h("tr", row.attrs || {}, row.cells.map((cell, i) =>
        cell instanceof HTMLTableCellElement ? cell : h("td", {class: columns[i][1]}, cell ?? "—"))))
      : [h("tr", {}, h("td", {class: "empty", colSpan: columns.length, text: empty}))];
    node.replaceChildren(h("thead", {}, head), h("tbody", {}, body));
  }

  function meter(percent) {
    const fill = h("span");
    fill.style.width = `${Math.min(100, Math.max(0, percent || 0))}%`;
    const cls = percent > 100 ? "meter over" : percent >= 90 ? "meter hot" : "meter";
    return h("span", {class: cls, role: "meter", "aria-valuenow": Math.round(percent || 0)}, fill);
  }

  function kpi(label, value, sub, bad) {
    return h("div", {class: bad ? "kpi bad" : "kpi", "data-kpi": label},
      h("div", {class: "label", text: label}), h("div", {class: "value", text: value}),
      h("div", {class: "sub", text: sub || "\u00a0"}));
  }

  function renderHealth(doc) {
    const pills = [
      [doc.health.queue_healthy, "Queues moving", "Queue stalled or unknown"],
      [doc.health.rpm_healthy, "Budgets within limits", "Budget over limit or cooling down"],
    ];
    $("health").replaceChildren(...pills.map(([ok, good, bad]) => h("span", {class: ok ? "pill ok" : "pill bad",
      text: ok ? good : bad})));
    const problems = $("problems");
    problems.hidden = !doc.problems.length;
    problems.textContent = doc.problems.join(" ");
  }

  function renderKpis(doc) {
    const counts = doc.jobs.by_status;
    const running = counts.PENDING + counts.PROCESSING;
    const predictors = doc.predictors === null ? "?" : doc.predictors.length;
    const slots = doc.predictors ? doc.predictors.reduce((n, p) => n + p.free_slots, 0) : null;
    $("kpis").replaceChildren(
      kpi("Items queued", num(doc.totals.queued), `${num(doc.lanes.length)} lanes`),
      kpi("Items processing", num(doc.totals.processing), "in flight upstream"),
      kpi("Dispatched / min", num(doc.totals.dispatched_last_minute), "all tenants, last minute"),
      kpi("Jobs running", num(running), `${num(counts.PENDING)} waiting to start`),
      kpi("Failed items", num(doc.failures.length), "recently seen", doc.failures.length > 0),
      kpi("Predictors", String(predictors), slots === null ? "unknown" : `${num(slots)} free slots`,
        doc.predictors !== null && doc.predictors.length === 0),
    );
  }

  // A share of the limit with its meter, over the count it stands for.
  function usage(percent, under, attrs) {
    return h("td", attrs, h("div", {class: "rate"}, h("span", {text: pct(percent)}), meter(percent)),
      h("div", {class: "sub", text: under}));
  }

  function renderBudgets(doc) {
    table($("budgets"), [["Budget", "left"], ["Now", ""], ["Last minute", ""], ["Limit / min", ""], ["Queue", ""]],
      doc.buckets.map((b) => {
        const notes = [];
        if (b.cooldown_until) notes.push(h("span", {class: "badge warn", text: "cooling down"}));
        if (b.rate_factor < 1) notes.push(h("span", {class: "badge warn", text: `rate ×${b.rate_factor.toFixed(2)}`}));
        if (b.limit_tpm) notes.push(`tokens ${pct(b.tpm_now_percent)} now, ${pct(b.tpm_usage_percent)} last min`);
        if (b.max_in_flight) notes.push(`${num(b.in_flight)} / ${num(b.max_in_flight)} in flight`);
        if (b.denied_last_minute) notes.push(`${num(b.denied_last_minute)} asks denied last min`);
        const joined = notes.flatMap((n, i) => (i ? [" · ", n] : [n]));
        return {attrs: {"data-budget": b.name}, cells: [
          h("td", {class: "left"}, h("div", {class: "mono", text: b.name}),
            joined.length ? h("div", {class: "sub wrap"}, joined) : null),
          usage(b.rpm_now_percent, `${num(b.rpm_now)} / min`,
            {"data-rpm-now": b.rpm_now, title: `${b.requests_last_10s} requests in the last 10 s`}),
          usage(b.rpm_usage_percent, `${num(b.requests_last_minute)} requests`,
            {"data-last-minute": b.requests_last_minute}),
          num(b.limit_rpm), num(b.queue_length),
        ]};
      }), "no budgets: the ratelimiter did not answer");
  }

  // Moving average over `width` seconds of the known values; null where none is known.
  function smooth(values, width) {
    return values.map((_, i) => {
      let sum = 0, n = 0;
      for (let j = Math.max(0, i - width + 1); j <= i; j++) if (values[j] !== null) { sum += values[j]; n += 1; }
      return n ? sum / n : null;
    });
  }

  function renderBudgetChart(doc) {
    const charts = doc.charts, series = [], legend = [];
    doc.buckets.forEach((b, k) => {
      const data = charts.budgets[b.name];
      if (!data) return;
      const color = COLORS[k % COLORS.length];
      const asPercent = (values, limit) => smooth(values, 5).map((v, i) =>
        [charts.seconds - 1 - i, v === null || !limit ? null : (100 * v * 60) / limit]);
      series.push({name: b.name, color, points: asPercent(data.requests, b.limit_rpm)});
      if (b.limit_tpm) series.push({name: `${b.name} tokens`, color, dashed: true,
        points: asPercent(data.tokens, b.limit_tpm)});
      legend.push([b.name, color, pct(b.rpm_now_percent)]);
    });
    FairwayCharts.lines($("budget-chart"), {span: charts.seconds, series, yMin: 100,
      format: (v) => `${Math.round(v)}%`, limit: {value: 100, label: "limit"}, label: "Budget use",
      empty: "no budget use yet"});
    renderLegend($("budget-legend"), legend);
  }

  function renderTenants(doc) {
    table($("tenants"), [["Tenant", "left"], ["Queued", ""], ["Processing", ""], ["Oldest wait", ""],
      ["Dispatched / min", ""], ["Weight", ""], ["Credits", ""]], doc.tenants.map((t) => ({
      attrs: {"data-tenant": t.tenant},
      cells: [h("td", {class: "left mono", text: t.tenant}), num(t.queued), num(t.processing),
        t.queued ? since(t.oldest_queued_age_s) : "—", num(t.dispatched_last_minute), num(t.weight),
        h("td", {"data-credits": t.credits ?? "",
          text: t.weight === null ? "—" : t.credits === null ? "billing off" : num(t.credits)})],
    })), "no tenant has been active lately");
    const more = [];
    if (doc.tenants_not_read) more.push(`${doc.tenants_not_read} quieter active tenants: their jobs are not read.`);
    if (doc.more_tenants) more.push(`Idle tenants past the first ${doc.tenants.length} are not listed.`);
    $("tenants-more").hidden = !more.length;
    $("tenants-more").textContent = more.join(" ");
  }

  function renderDispatchChart(doc) {
    const now = Date.parse(doc.timestamp) / 1000, d = doc.charts.dispatch;
    const peak = (name) => Math.max(...d.tenants[name]);
    const names = Object.keys(d.tenants).sort((a, b) => peak(b) - peak(a) || a.localeCompare(b));
    const shown = names.slice(0, MAX_TENANT_LINES), rest = names.slice(MAX_TENANT_LINES);
    const lines = shown.map((name) => [name, d.tenants[name]]);
    if (rest.length) lines.push([`${rest.length} others`, d.t.map((_, i) => rest.reduce((n, r) => n + d.tenants[r][i], 0))]);
    const series = lines.map(([name, values], k) => ({name, color: COLORS[k % COLORS.length],
      points: values.map((v, i) => [now - d.t[i], v])}));
    FairwayCharts.lines($("dispatch-chart"), {span: doc.charts.seconds, series, yMin: 1, format: (v) => num(v),
      label: "Dispatched per minute by tenant", empty: "no dispatch seen yet"});
    renderLegend($("dispatch-legend"), series.map((s, k) => [s.name, s.color, num(lines[k][1].at(-1))]));
  }

  function renderLegend(node, entries) {
    node.replaceChildren(...entries.map(([name, color, value]) => {
      const swatch = h("i");
      swatch.style.background = color;
      return h("span", {}, swatch, name, h("b", {text: value}));
    }));
  }

  function progress(job) {
    const c = job.counts, total = job.items_total || 1;
    const finished = c.DONE + c.FAILED + c.CANCELED;
    const bar = h("div", {class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": Math.floor((100 * finished) / total)});
    for (const [key, cls] of [["DONE", "done"], ["FAILED", "failed"], ["CANCELED", "canceled"],
      ["PROCESSING", "processing"]]) {
      const part = h("span", {class: cls, title: `${c[key]} ${key.toLowerCase()}`});
      part.style.width = `${(100 * c[key]) / total}%`;
      bar.append(part);
    }
    const text = `${num(finished)} / ${num(job.items_total)} · ${Math.floor((100 * finished) / total)}%`;
    return h("td", {class: "progress-cell"}, h("div", {class: "progress"}, bar, h("span", {class: "text", text})));
  }

  function renderJobs(doc) {
    const now = Date.parse(doc.timestamp), by = doc.jobs.by_status;
    $("job-counts").replaceChildren(...STATUSES.map((s) => h("span", {class: `badge ${s}`, "data-count": s,
      text: `${num(by[s])} ${s.toLowerCase()}`})));
    table($("jobs"), [["Job", "left"], ["Tenant", "left"], ["Model", "left"], ["Status", "left"], ["Progress", ""],
      ["Created", ""], ["Finished", ""]], doc.jobs.list.map((j) => ({
      attrs: {"data-job": j.id, "data-status": j.status, "data-done": j.counts.DONE, "data-total": j.items_total},
      cells: [h("td", {class: "left mono", title: j.id, text: short(j.id)}), h("td", {class: "left", text: j.tenant}),
        h("td", {class: "left", text: `${j.provider} · ${j.model}`}),
        h("td", {class: "left"}, h("span", {class: `badge ${j.status}`, text: j.status.toLowerCase()})),
        progress(j), ago(j.created_at, now), j.finished_at ? ago(j.finished_at, now) : "—"],
    })), "no jobs seen in the last 15 minutes");
  }

  function renderFailures(doc) {
    const now = Date.parse(doc.timestamp);
    table($("failures"), [["When", "left"], ["Tenant", "left"], ["Job", "left"], ["Ref", "left"], ["Error", "left"]],
      doc.failures.map((f) => ({attrs: {"data-item": f.item_id}, cells: [
        h("td", {class: "left muted", text: ago(f.finished_at, now)}), h("td", {class: "left", text: f.tenant}),
        h("td", {class: "left mono", title: f.job_id, text: short(f.job_id)}),
        h("td", {class: "left mono", text: f.ref}),
        h("td", {class: "left error-text", title: f.error, text: f.error || "(no message)"})]})),
      "no failed items seen");
  }

  function renderPredictors(doc) {
    const now = Date.parse(doc.timestamp);
    table($("predictors"), [["Name", "left"], ["Providers", "left"], ["Free slots", ""], ["Connected", ""]],
      (doc.predictors || []).map((p) => ({attrs: {"data-predictor": p.name}, cells: [
        h("td", {class: "left mono", text: p.name}), h("td", {class: "left", text: p.providers.join(", ") || "all"}),
        num(p.free_slots), ago(p.connected_at, now)]})),
      doc.predictors === null ? "unknown: the scheduler did not answer" : "no predictor connected");
    table($("lanes"), [["Lane", "left"], ["Queued", ""], ["Processing", ""], ["Tenants", ""]],
      doc.lanes.map((l) => ({cells: [h("td", {class: "left mono", text: l.lane}), num(l.queued), num(l.processing),
        num(l.tenants)]})), "nothing queued");
  }

  function render(doc) {
    renderHealth(doc);
    renderKpis(doc);
    renderBudgets(doc);
    renderBudgetChart(doc);
    renderTenants(doc);
    renderDispatchChart(doc);
    renderJobs(doc);
    renderFailures(doc);
    renderPredictors(doc);
    const live = $("live");
    live.className = "live";
    live.textContent = `Live · ${new Date(doc.timestamp).toLocaleTimeString()}`;
    document.body.dataset.updated = doc.timestamp;
    $("dash").hidden = false;
  }

  let timer = null, generation = 0;

  async function poll(mine) {
    const key = sessionStorage.getItem(KEY);
    if (!key || mine !== generation) return;
    let wait = document.hidden ? HIDDEN_POLL_MS : POLL_MS;  // a tab in the background asks less often
    try {
      const reply = await fetch("/v1/stats/overview", {headers: {Authorization: `Bearer ${key}`}, cache: "no-store"});
      const body = await reply.json().catch(() => ({}));
      if (mine !== generation) return;
      if (reply.status === 401 || reply.status === 403) {
        signOut(reply.status === 403 ? "That is a tenant's key: this page needs the admin key."
          : "That key was refused: paste the admin key (FAIRWAY_ADMIN_KEY).");
        return;
      }
      if (!reply.ok) throw new Error((body.error && body.error.message) || `HTTP ${reply.status}`);
      render(body);
    } catch (err) {
      if (mine !== generation) return;
      $("live").className = "live off";
      $("live").textContent = `Disconnected, retrying: ${err.message}`;
      wait = RETRY_MS;
    }
    timer = setTimeout(() => poll(mine), wait);
  }

  function start() {
    clearTimeout(timer);
    generation += 1;
    $("login").hidden = true;
    $("signout").hidden = false;
    poll(generation);
  }

  function signOut(message) {
    clearTimeout(timer);
    generation += 1;
    sessionStorage.removeItem(KEY);
    $("dash").hidden = true;
    for (const id of ["budgets", "tenants", "jobs", "failures", "predictors", "lanes", "kpis", "health",
      "budget-chart", "dispatch-chart", "budget-legend", "dispatch-legend", "job-counts"]) $(id).replaceChildren();
    $("problems").hidden = true;
    $("signout").hidden = true;
    $("live").className = "live off";
    $("live").textContent = "not connected";
    $("login-error").textContent = message || "";
    $("login").hidden = false;
    $("key").focus();
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("key").value = "";
    $("login-error").textContent = "";
    start();
  });
  $("signout").addEventListener("click", () => signOut(""));
  if (sessionStorage.getItem(KEY)) start(); else signOut("");
})();
