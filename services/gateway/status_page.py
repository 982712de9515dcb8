"""`GET /`: a live status page for the operator.

The page itself holds no data (it is served without a key); a small script asks for the
admin key once, keeps it in the tab's sessionStorage, and polls the two stats endpoints.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fairway</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:2rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;min-width:40rem}
th,td{border-bottom:1px solid #ddd;padding:.3rem .7rem;text-align:right}
th:first-child,td:first-child{text-align:left}
.bad{color:#b00}.ok{color:#070}#err{color:#b00}
</style></head><body>
<h1>Fairway <small id="at"></small></h1>
<form id="login" hidden><label>Admin key <input id="key" type="password" autocomplete="off"></label>
<button>Show</button></form>
<p id="err"></p>
<h2>Health</h2><p id="health">…</p>
<h2>Tenants</h2><table id="tenants"></table>
<h2>Lanes</h2><table id="lanes"></table>
<h2>Upstream budgets</h2><table id="buckets"></table>
<script>
const $ = (id) => document.getElementById(id);
const ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"};
const esc = (v) => String(v ?? "").replace(/[&<>"]/g, (c) => ENTITY[c]);
function table(el, cols, rows) {
  el.innerHTML = "<tr>" + cols.map((c) => "<th>" + esc(c) + "</th>").join("") + "</tr>" +
    rows.map((r) => "<tr>" + cols.map((c) => "<td>" + esc(r[c]) + "</td>").join("") + "</tr>").join("");
}
async function get(path) {
  const r = await fetch(path, {headers: {Authorization: "Bearer " + sessionStorage.getItem("fairway-key")}});
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}
async function refresh() {
  try {
    const [q, rl] = await Promise.all([get("/v1/stats/queue"), get("/v1/stats/ratelimiter")]);
    table($("tenants"),
      ["tenant", "queued", "processing", "oldest_queued_age_s", "dispatched_last_minute"], q.tenants);
    table($("lanes"), ["lane", "queued", "processing", "tenants"], q.lanes);
    table($("buckets"), ["name", "limit_rpm", "requests_last_minute", "rpm_usage_percent", "limit_tpm",
      "tokens_last_minute", "queue_length", "cooldown_until"], rl.buckets);
    const h = rl.health;
    $("health").innerHTML = ["queue_healthy", "rpm_healthy"].map((k) =>
      '<span class="' + (h[k] ? "ok" : "bad") + '">' + k + ": " + h[k] + "</span>").join(" · ");
    $("at").textContent = rl.timestamp; $("err").textContent = "";
  } catch (e) {
    $("err").textContent = e.message;
    if (/key/i.test(e.message)) {
      sessionStorage.removeItem("fairway-key"); $("login").hidden = false; return;
    }
  }
  setTimeout(refresh, 2000);
}
$("login").onsubmit = (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("fairway-key", $("key").value); $("login").hidden = true; refresh();
};
if (sessionStorage.getItem("fairway-key")) refresh(); else $("login").hidden = false;
</script>
<noscript>This page needs JavaScript; the same data is at /v1/stats/queue and
/v1/stats/ratelimiter.</noscript>
</body></html>
"""


@router.get("/", response_class=HTMLResponse)
async def status_page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})
