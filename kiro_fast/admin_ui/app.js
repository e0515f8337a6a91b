// kiro_fast admin UI: plain JavaScript, no build step. Talks only to /api/admin/.
// Every piece of server data reaches the page through textContent, never innerHTML.
"use strict";

const TOKEN_KEY = "kiroFastAdminToken";
const COLORS = ["#2859c5", "#1e7b34", "#a05a00", "#8e24aa", "#00838f", "#c62828", "#5d4037", "#546e7a"];
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let devicePoll = null;
let settingsLoaded = {};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) node.append(child);
  return node;
}

class ApiError extends Error {}

async function api(method, path, body) {
  const headers = { "x-api-key": token };
  const init = { method, headers };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const res = await fetch("/api/admin" + path, init);
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (res.status === 401 && path !== "/login") { showLogin("Your session ended; log in again."); }
  if (!res.ok) {
    const message = data && data.error && data.error.message ? data.error.message : res.status + " " + res.statusText;
    throw new ApiError(message);
  }
  return data;
}

function flash(message, kind = "ok") {
  const node = $("flash");
  node.textContent = message;
  node.className = "flash " + kind;
}

async function guarded(work) {
  try { await work(); } catch (err) { flash(err.message, "error"); }
}

// ------------------------------------------------------------------ login

function showLogin(message = "") {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  stopDevicePoll();
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
}

async function enter(newToken) {
  token = newToken;
  try {
    const status = await api("GET", "/status");
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login").hidden = true;
    $("main").hidden = false;
    $("status-line").textContent = `v${status.version} · ${status.username} (${status.method}) · ${status.state}`;
    showView("credentials");
  } catch (err) {
    showLogin(err.message);
  }
}

function setupLogin() {
  document.querySelectorAll("[data-login]").forEach((tab) => tab.addEventListener("click", () => {
    document.querySelectorAll("[data-login]").forEach((t) => t.classList.toggle("active", t === tab));
    $("login-key-form").hidden = tab.dataset.login !== "key";
    $("login-password-form").hidden = tab.dataset.login !== "password";
  }));
  $("login-key-form").addEventListener("submit", (ev) => { ev.preventDefault(); enter($("login-key").value.trim()); });
  $("login-password-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const answer = await api("POST", "/login", { username: $("login-username").value, password: $("login-password").value });
      $("login-password").value = "";
      await enter(answer.token);
    } catch (err) { $("login-error").textContent = err.message; }
  });
  $("logout").addEventListener("click", async () => {
    try { await api("POST", "/logout"); } catch (_) { /* stateless */ }
    showLogin();
  });
}

// ------------------------------------------------------------------ views

const loaders = {};

function showView(name) {
  document.querySelectorAll("[data-view]").forEach((t) => t.classList.toggle("active", t.dataset.view === name));
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "view-" + name; });
  if (loaders[name]) guarded(loaders[name]);
}

// ------------------------------------------------------------------ credentials

function fmtTime(text) {
  if (!text) return "—";
  const d = new Date(text);
  return isNaN(d) ? text : d.toLocaleString();
}

function statusBadge(c) {
  if (c.disabled) return el("span", { class: "badge off", text: "disabled" });
  if (c.cooldown) return el("span", { class: "badge cool", text: "cooling", title: c.cooldown.reason + " until " + fmtTime(c.cooldown.until) });
  return el("span", { class: "badge ok", text: c.isCurrent ? "current" : "enabled" });
}

function balanceCell(c) {
  if (!c.balance) return "—";
  const b = c.balance;
  return `${Number(b.remaining).toFixed(1)} / ${Number(b.usageLimit).toFixed(0)}` + (b.subscriptionTitle ? ` (${b.subscriptionTitle})` : "");
}

async function credentialAction(id, method, path, body, done) {
  await guarded(async () => {
    const answer = await api(method, `/credentials/${id}${path}`, body);
    flash(done(answer));
    await loadCredentials();
  });
}

function credentialRow(c) {
  const priority = el("input", { type: "number", min: "0", value: String(c.priority), class: "priority", "data-testid": "priority" });
  const actions = el("td", { class: "actions" },
    el("button", { type: "button", class: "secondary act-priority", text: "Set", on: { click: () =>
      credentialAction(c.id, "POST", "/priority", { priority: Number(priority.value) }, (a) => a.message) } }),
    c.disabled
      ? el("button", { type: "button", class: "secondary act-enable", text: "Enable", on: { click: () =>
          credentialAction(c.id, "POST", "/disabled", { disabled: false }, (a) => a.message) } })
      : el("button", { type: "button", class: "secondary act-disable", text: "Disable", on: { click: () =>
          credentialAction(c.id, "POST", "/disabled", { disabled: true }, (a) => a.message) } }),
    el("button", { type: "button", class: "secondary act-verify", text: "Verify", on: { click: () =>
      credentialAction(c.id, "POST", "/verify", undefined, (a) => a.success
        ? `#${c.id}: ${Number(a.balance.remaining).toFixed(1)} credits left`
        : `#${c.id}: ${a.error}`) } }),
    el("button", { type: "button", class: "secondary act-reset", text: "Reset", on: { click: () =>
      credentialAction(c.id, "POST", "/reset", undefined, (a) => a.message) } }),
    el("button", { type: "button", class: "danger act-delete", text: "Delete", disabled: !c.disabled,
      title: c.disabled ? "delete this credential" : "disable it first", on: { click: () => {
        if (window.confirm(`Delete credential #${c.id}?`)) credentialAction(c.id, "DELETE", "", undefined, (a) => a.message);
      } } }),
  );
  return el("tr", { "data-id": String(c.id) },
    el("td", { text: String(c.id) }),
    el("td", { class: "status" }, statusBadge(c)),
    el("td", {}, priority),
    el("td", { text: c.authMethod + (c.source ? ` · ${c.source}` : "") }),
    el("td", { text: c.email || c.maskedApiKey || (c.refreshTokenHash ? "token " + c.refreshTokenHash.slice(0, 8) : "—") }),
    el("td", { class: "failures", text: String(c.failureCount) }),
    el("td", { class: "reason", text: c.disabledReason || "" }),
    el("td", { class: "balance", text: balanceCell(c) }),
    el("td", { text: fmtTime(c.lastUsedAt) }),
    actions,
  );
}

async function loadCredentials() {
  const data = await api("GET", "/credentials");
  $("credentials-body").replaceChildren(...data.credentials.map(credentialRow));
  $("cred-summary").textContent = `${data.available} of ${data.total} enabled`;
}
loaders.credentials = loadCredentials;

function setupCredentials() {
  $("refresh-list").addEventListener("click", () => guarded(loadCredentials));
  $("verify-all").addEventListener("click", () => guarded(async () => {
    flash("verifying…");
    const answer = await api("POST", "/credentials/verify", {});
    const bad = answer.results.filter((r) => !r.success);
    flash(`${answer.results.length - bad.length} ok, ${bad.length} failed` + bad.map((r) => ` · #${r.id}: ${r.error}`).join(""), bad.length ? "error" : "ok");
    await loadCredentials();
  }));
}

// ------------------------------------------------------------------ add and import

function setupAdd() {
  const kind = $("add-auth");
  const sync = () => {
    document.querySelectorAll(".for-idc").forEach((n) => { n.hidden = kind.value !== "idc"; });
    document.querySelectorAll(".for-token").forEach((n) => { n.hidden = kind.value === "api_key"; });
    document.querySelectorAll(".for-apikey").forEach((n) => { n.hidden = kind.value !== "api_key"; });
  };
  kind.addEventListener("change", sync);
  sync();
  $("add-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(async () => {
      const body = { authMethod: kind.value, priority: Number($("add-priority").value || 0), verify: $("add-verify").checked };
      const put = (key, id) => { const v = $(id).value.trim(); if (v) body[key] = v; };
      if (kind.value === "api_key") put("kiroApiKey", "add-api-key"); else put("refreshToken", "add-refresh");
      if (kind.value === "idc") { put("clientId", "add-client-id"); put("clientSecret", "add-client-secret"); }
      put("authRegion", "add-region"); put("email", "add-email"); put("proxyUrl", "add-proxy");
      const answer = await api("POST", "/credentials", body);
      $("add-form").reset();
      sync();
      flash(answer.message + (answer.email ? ` (${answer.email})` : ""));
      showView("credentials");
    });
  });
  $("import-file").addEventListener("change", async () => {
    const file = $("import-file").files[0];
    if (file) $("import-text").value = await file.text();
  });
  $("import-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(async () => {
      let doc;
      try { doc = JSON.parse($("import-text").value); } catch (err) { throw new ApiError("the import is not valid JSON: " + err.message); }
      const registration = $("import-registration").value.trim();
      if (registration) {
        let reg;
        try { reg = JSON.parse(registration); } catch (err) { throw new ApiError("the registration is not valid JSON: " + err.message); }
        if (doc && !Array.isArray(doc)) doc = Object.assign({}, doc, { clientId: reg.clientId, clientSecret: reg.clientSecret });
      }
      const verify = $("import-verify").checked;
      const answer = await api("POST", "/credentials/import?verify=" + verify, doc);
      $("import-result").textContent = answer.message + answer.failures.map((f) => `\n#${f.index}: ${f.error}`).join("")
        + answer.skipped.map((s) => `\n#${s.index} skipped: ${s.reason}`).join("");
      flash(answer.message, answer.success ? "ok" : "error");
    });
  });
}

// ------------------------------------------------------------------ device sign-in

function stopDevicePoll() {
  if (devicePoll) clearTimeout(devicePoll);
  devicePoll = null;
}

function showDevice(start) {
  $("device-dialog").hidden = false;
  $("device-code").textContent = start.userCode || "";
  const link = $("device-link");
  link.href = start.verificationUriComplete || start.verificationUri || "#";
  link.textContent = start.verificationUri || link.href;
  $("device-status").textContent = "waiting for approval…";
  scheduleDevicePoll(start.sessionId, start.interval || 5);
}

function scheduleDevicePoll(sessionId, interval) {
  stopDevicePoll();
  devicePoll = setTimeout(async () => {
    try {
      const answer = await api("POST", "/auth/device/poll", { sessionId });
      if (answer.completed) {
        $("device-status").textContent = `credential #${answer.credentialId} added` + (answer.email ? ` (${answer.email})` : "");
        flash(`credential #${answer.credentialId} added by sign-in`);
        devicePoll = null;
        return;
      }
      $("device-status").textContent = answer.status === "slow_down" ? "waiting (slowing down)…" : "waiting for approval…";
      scheduleDevicePoll(sessionId, answer.interval || interval);
    } catch (err) {
      $("device-status").textContent = err.message;
      devicePoll = null;
    }
  }, Math.max(1, interval) * 1000);
}

function setupSignin() {
  $("device-builder").addEventListener("click", () => guarded(async () => {
    const region = $("builder-region").value.trim();
    showDevice(await api("POST", "/auth/builder-id/start", region ? { region } : {}));
  }));
  $("idc-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(async () => showDevice(await api("POST", "/auth/idc/start", {
      startUrl: $("idc-start-url").value.trim(), region: $("idc-region").value.trim(),
    })));
  });
  $("device-cancel").addEventListener("click", () => { stopDevicePoll(); $("device-dialog").hidden = true; });
}

// ------------------------------------------------------------------ settings

async function loadSettings() {
  const data = await api("GET", "/settings");
  settingsLoaded = data.settings;
  const fields = data.editable.map((key) => {
    const value = data.settings[key];
    const input = el("input", { type: "text", id: "setting-" + key, "data-key": key, value: value === null || value === undefined ? "" : String(value) });
    const mark = data.overridden.includes(key) ? " (set here)" : "";
    return el("label", { text: key + mark }, input);
  });
  $("settings-fields").replaceChildren(...fields);
}
loaders.settings = loadSettings;

function setupSettings() {
  $("settings-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(async () => {
      const changes = {};
      document.querySelectorAll("#settings-fields input").forEach((input) => {
        const key = input.dataset.key;
        const before = settingsLoaded[key] === null || settingsLoaded[key] === undefined ? "" : String(settingsLoaded[key]);
        if (input.value !== before) changes[key] = input.value === "" ? null : input.value;
      });
      if (!Object.keys(changes).length) { flash("nothing changed"); return; }
      await api("PUT", "/settings", changes);
      flash("saved: " + Object.keys(changes).join(", "));
      await loadSettings();
    });
  });
  $("password-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(async () => {
      await api("POST", "/change-password", { username: $("pw-username").value, oldPassword: $("pw-old").value, newPassword: $("pw-new").value });
      $("password-form").reset();
      flash("password changed");
    });
  });
}

// ------------------------------------------------------------------ client keys

function keyRow(k) {
  return el("tr", { "data-id": String(k.id) },
    el("td", { text: String(k.id) }),
    el("td", { text: k.name }),
    el("td", { text: k.keyPrefix + "…" }),
    el("td", { text: k.rpmLimit ? String(k.rpmLimit) : "∞" }),
    el("td", { text: k.tpdLimit ? String(k.tpdLimit) : "∞" }),
    el("td", { text: k.models ? k.models.join(", ") : "all" }),
    el("td", { text: String(k.tokensToday) }),
    el("td", {}, el("button", { type: "button", class: "secondary", text: k.enabled ? "Disable" : "Enable", on: { click: () => guarded(async () => {
      await api("PUT", `/client-keys/${k.id}`, { enabled: !k.enabled });
      await loadKeys();
    }) } })),
    el("td", { class: "actions" }, el("button", { type: "button", class: "danger", text: "Delete", on: { click: () => guarded(async () => {
      if (!window.confirm(`Delete client key ${k.name}?`)) return;
      await api("DELETE", `/client-keys/${k.id}`);
      await loadKeys();
    }) } })),
  );
}

async function loadKeys() {
  const data = await api("GET", "/client-keys");
  $("keys-body").replaceChildren(...data.keys.map(keyRow));
}
loaders.keys = loadKeys;

function setupKeys() {
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(async () => {
      const body = { name: $("key-name").value.trim() };
      const rpm = Number($("key-rpm").value), tpd = Number($("key-tpd").value);
      if (rpm > 0) body.rpmLimit = rpm;
      if (tpd > 0) body.tpdLimit = tpd;
      const models = $("key-models").value.split(",").map((m) => m.trim()).filter(Boolean);
      if (models.length) body.models = models;
      const answer = await api("POST", "/client-keys", body);
      $("key-form").reset();
      const shown = $("key-created");
      shown.hidden = false;
      shown.textContent = `New key (shown once): ${answer.key}`;
      await loadKeys();
    });
  });
}

// ------------------------------------------------------------------ usage

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function metricOf(row, metric) {
  if (metric === "tokens") return row.input_tokens + row.output_tokens;
  return row[metric];
}

function groupLabel(field, value) {
  if (value === null || value === undefined || value === "") return field === "client_key_id" ? "config key" : "—";
  return field === "model" ? String(value) : "#" + value;
}

function drawChart(data, metric) {
  const field = data.groupField;
  const buckets = [];
  for (let t = Math.floor(data.since / data.bucket) * data.bucket; t < data.until; t += data.bucket) buckets.push(t);
  const groups = [...new Set(data.series.map((r) => String(r[field])))];
  const stacks = new Map(buckets.map((b) => [b, []]));
  for (const row of data.series) {
    const stack = stacks.get(row.bucket);
    if (stack) stack.push({ group: String(row[field]), value: metricOf(row, metric) });
  }
  const max = Math.max(1, ...[...stacks.values()].map((s) => s.reduce((a, x) => a + x.value, 0)));
  const W = 800, H = 240, left = 40, bottom = 20;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  const width = (W - left) / Math.max(1, buckets.length);
  buckets.forEach((b, i) => {
    let y = H - bottom;
    for (const part of stacks.get(b)) {
      const h = (part.value / max) * (H - bottom - 10);
      y -= h;
      const rect = svg("rect", { x: left + i * width + 1, y, width: Math.max(1, width - 2), height: h, fill: COLORS[groups.indexOf(part.group) % COLORS.length] });
      rect.append(svg("title"));
      rect.firstChild.textContent = `${new Date(b * 1000).toLocaleString()}: ${part.value}`;
      chart.append(rect);
    }
  });
  const label = svg("text", { x: 2, y: 12 });
  label.textContent = String(max);
  chart.append(label);
  $("usage-chart").replaceChildren(chart);
  $("usage-legend").replaceChildren(...groups.map((g, i) => {
    const swatch = el("i");
    swatch.style.background = COLORS[i % COLORS.length];
    const raw = data.series.find((r) => String(r[field]) === g);
    return el("span", {}, swatch, groupLabel(field, raw ? raw[field] : g));
  }));
}

async function loadUsage() {
  const window = $("usage-window").value, group = $("usage-group").value;
  const data = await api("GET", `/usage?window=${encodeURIComponent(window)}&group_by=${encodeURIComponent(group)}`);
  drawChart(data, $("usage-metric").value);
  $("usage-body").replaceChildren(...data.totals.map((row) => el("tr", {},
    el("td", { text: groupLabel(data.groupField, row[data.groupField]) }),
    el("td", { text: String(row.requests) }),
    el("td", { text: String(row.errors) }),
    el("td", { text: String(row.input_tokens) }),
    el("td", { text: String(row.output_tokens) }),
    el("td", { text: row.requests ? (row.duration_ms / row.requests).toFixed(0) : "—" }),
  )));
}
loaders.usage = loadUsage;

function setupUsage() {
  ["usage-window", "usage-group", "usage-metric"].forEach((id) => $(id).addEventListener("change", () => guarded(loadUsage)));
}

// ------------------------------------------------------------------ start

function start() {
  setupLogin();
  setupCredentials();
  setupAdd();
  setupSignin();
  setupSettings();
  setupKeys();
  setupUsage();
  document.querySelectorAll("[data-view]").forEach((tab) => tab.addEventListener("click", () => showView(tab.dataset.view)));
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("key")) {
    token = fragment.get("key");
    history.replaceState(null, "", location.pathname + location.search);
  }
  if (token) enter(token); else showLogin();
}

document.addEventListener("DOMContentLoaded", start);
