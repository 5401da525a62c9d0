// synthstream console: the shared pieces (router, fetching, elements, live figures).
// No build step and no libraries: every page is a function in PAGES that fills <main>.
"use strict";

const PAGES = {};           // name -> async function(main, args)
const state = { live: null, simulated: false, listeners: [] };

// Elements ----------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Any id anywhere opens the record: the sample viewer for samples, the record view otherwise.
function idLink(id, kind) {
  if (!id) return h("span", { class: "muted" }, "—");
  const route = kind === "sample" ? `#/sample/${id}` : `#/record/${id}`;
  return h("a", { class: "id", href: route, "data-id": id }, id);
}

// A link only for a web address: crawled data may say `javascript:…` or `data:…`, shown as text then.
function webLink(url) {
  if (!url) return "—";
  let protocol = null;
  try { protocol = new URL(url).protocol; } catch (err) { /* not a URL: text */ }
  if (protocol !== "http:" && protocol !== "https:") return h("span", { class: "text" }, String(url));
  return h("a", { href: url, rel: "noreferrer noopener", target: "_blank" }, url);
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "n/a";
  if (typeof value === "number" && digits !== undefined) return value.toFixed(digits);
  if (typeof value === "number" && value >= 10000) return (value / 1000).toFixed(1) + "k";
  return String(value);
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

function jsonBlock(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

function errorBox(message) {
  return h("p", { class: "error" }, message);
}

// A state-changing call: JSON, with the page's anti-CSRF token (the server refuses anything else).
function postJson(path, body) {
  const token = document.querySelector("meta[name=csrf-token]").content;
  return api(path, { method: "POST", headers: { "Content-Type": "application/json", "X-Synthstream-Csrf": token },
    body: JSON.stringify(body) });
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// Simulated data: the banner shows as soon as anything seen says so.
function noteSimulated(records) {
  if (state.simulated) return;
  const list = Array.isArray(records) ? records : [records];
  if (list.some((r) => r && r.simulated === true)) {
    state.simulated = true;
    document.getElementById("simulated-banner").hidden = false;
  }
}

// Live figures (server-sent events) ---------------------------------------------------------------
function connectLive() {
  const badge = document.getElementById("live-state");
  const source = new EventSource("/api/live");
  source.onmessage = (event) => {
    const figures = JSON.parse(event.data);
    state.live = figures;
    badge.textContent = figures.error ? "broker: " + figures.error.slice(0, 60)
      : figures.pending ? "sampling…" : "live " + new Date(figures.time * 1000).toLocaleTimeString();
    badge.className = "pill " + (figures.error ? "bad" : "ok");
    if (figures.simulated) noteSimulated({ simulated: true });
    if (figures.prefix) document.getElementById("where").textContent =
      `prefix ${figures.prefix} on ${figures.bootstrap_servers}`;
    showWarnings(figures.warnings || []);
    state.listeners.forEach((listener) => listener(figures));
  };
  source.onerror = () => { badge.textContent = "reconnecting…"; badge.className = "pill bad"; };
}

function showWarnings(lines) {
  const box = document.getElementById("warnings");
  box.replaceChildren(...lines.map((line) => h("div", { class: "banner warning", "data-test": "warning" }, line)));
}

// Router ------------------------------------------------------------------------------------------
async function route() {
  const [name, ...args] = (location.hash.replace(/^#\/?/, "") || "graph").split("/");
  const page = PAGES[name] ? name : "graph";
  state.listeners = [];
  document.querySelectorAll("header nav a").forEach((a) =>
    a.classList.toggle("active", a.dataset.page === page || (page === "sample" && a.dataset.page === "samples")));
  // Each visit fills its own element: a page still loading when the user moved on (a slow record
  // lookup, say) then writes into a detached element, never over the page that replaced it.
  const view = h("div", { class: "view" }, h("p", { class: "muted" }, "loading…"));
  const main = document.getElementById("page");
  main.replaceChildren(view);
  main.dataset.page = page;
  try {
    await PAGES[page](view, args.map(decodeURIComponent));
  } catch (err) {
    view.replaceChildren(errorBox(String(err.message || err)));
  }
}

// The record view: any record by id, from the store or the topics.
PAGES.record = async (main, [id]) => {
  const found = await api(`/api/records/${encodeURIComponent(id)}`);
  if (found.envelope && found.envelope.kind === "sample") { location.hash = `#/sample/${id}`; return; }
  noteSimulated(found.envelope);
  const env = found.envelope || {};
  const where = found.found_in === "store" ? `the store (${found.topic})`
    : `topic ${found.topic} [${found.partition}] @ ${found.offset}`;
  main.replaceChildren(
    h("h2", {}, `Record ${id}`),
    h("p", { class: "muted" }, `${env.kind || "?"} found in ${where}; root `, idLink(env.root_id),
      env.parent_id ? [" · parent ", idLink(env.parent_id)] : null),
    jsonBlock(env));
};

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => { connectLive(); route(); });
