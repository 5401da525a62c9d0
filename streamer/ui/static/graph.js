// The pipeline page: stages (cards) and topics (pills) as an SVG graph, redrawn from each live sample.
"use strict";

const CARD = { w: 176, h: 112 };
const PILL = { w: 150, h: 26 };
const COL = 200;            // column pitch
const PER_ROW = 6;          // columns before the graph turns back (a snake), so it fits a 1400 px window
const GAP = 22;             // between the nodes of one column
const SVGNS = "http://www.w3.org/2000/svg";

// Where each node sits, from the graph the server derives from the stage declarations (/api/graph):
// a node's column is its longest path from the feed; `rejected` and `dlq` (written from anywhere)
// sit beside the last stage's output. Columns run left to right, then right to left on the next row.
function layout(graph) {
  const kindOf = Object.fromEntries(graph.nodes.map((n) => [n.id, n.kind]));
  const audit = new Set(graph.nodes.filter((n) => n.kind === "topic"
    && !graph.edges.some((e) => e.to === n.id && e.kind !== "reject")).map((n) => n.id));
  const depth = { feed: 0 };
  const flows = graph.edges.filter((e) => e.kind !== "reject" && !audit.has(e.from));
  for (let changed = true; changed;) {  // longest path; the graph has no cycle
    changed = false;
    for (const e of flows) {
      const d = (depth[e.from] ?? -Infinity) + 1;
      if (d > (depth[e.to] ?? -1)) { depth[e.to] = d; changed = true; }
    }
  }
  audit.forEach((name) => { depth[name] = (depth.sink ?? 1) - 1; });
  const columns = [];
  for (const n of graph.nodes) (columns[depth[n.id] ?? 0] ||= []).push(n.id);
  const size = (name) => (kindOf[name] === "topic" ? PILL : CARD);
  const height = (names) => names.reduce((sum, name) => sum + size(name).h + GAP, -GAP);
  const boxes = {};
  let top = 20;
  for (let band = 0; band * PER_ROW < columns.length; band++) {
    const cols = columns.slice(band * PER_ROW, (band + 1) * PER_ROW);
    const bandHeight = Math.max(...cols.map((names) => height(names || [])));
    cols.forEach((names, i) => {
      const col = band % 2 === 0 ? i : PER_ROW - 1 - i;
      const cx = 30 + col * COL + CARD.w / 2;
      let y = top + (bandHeight - height(names || [])) / 2;
      for (const name of names || []) {
        const { w, h } = size(name);
        boxes[name] = { x: cx - w / 2, y, w, h, cx, cy: y + h / 2, kind: kindOf[name] };
        y += h + GAP;
      }
    });
    top += bandHeight + 70;
  }
  return { boxes, width: 30 + PER_ROW * COL, height: top - 30 };
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, value);
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

// Where the line from a's centre to b's centre leaves a's rectangle.
function border(a, b) {
  const dx = b.cx - a.cx, dy = b.cy - a.cy;
  const scale = 1 / Math.max(Math.abs(dx) / (a.w / 2 + 3) || 0, Math.abs(dy) / (a.h / 2 + 3) || 0, 1e-9);
  return [a.cx + dx * Math.min(scale, 1), a.cy + dy * Math.min(scale, 1)];
}

function topicTotals(figures) {
  const totals = {};
  const prefix = figures.prefix || "";
  for (const stage of figures.stages || []) {
    for (const p of stage.lag.partitions) {
      const name = p.topic.startsWith(prefix) ? p.topic.slice(prefix.length) : p.topic;
      totals[name] = (totals[name] || 0) + p.end;
    }
  }
  return totals;
}

function stageLines(st) {
  const llm = st.llm || {};
  const rate = (x) => (x === null || x === undefined ? "" : ` (${x.toFixed(1)}/s)`);
  const wait = llm.limiter_wait_s === undefined ? "n/a" : `${llm.limiter_wait_s.toFixed(1)}s`
    + (llm.limiter_waiting ? ` (${llm.limiter_waiting} now)` : "");
  return [
    ["lag", `lag ${st.lag.total}`, "in flight", `in flight ${fmt(st.in_flight)}`],
    ["in", `in ${st.in.total}${rate(st.in.per_s)}`],
    ["out", st.kind === "sink" ? "stores what it reads" : `out ${fmt(st.out.total)}${rate(st.out.per_s)}`],
    ["dlq", `dlq ${fmt(st.dlq)}`, "rejected", `rejected ${fmt(st.rejected)}`],
    ["llm", `LLM ${fmt(llm.requests)} · tokens ${fmt(llm.tokens)}`
      + (llm.cost_usd === undefined ? "" : ` · $${llm.cost_usd.toFixed(4)}`)],
    ["429s", `429s ${fmt(llm.rate_limited)} · wait ${wait}`],
  ];
}

function drawStage(g, b, st) {
  const busy = st && (st.in.per_s > 0 || (st.in_flight || 0) > 0);
  g.setAttribute("class", "stage" + (busy ? " busy" : "") + (st && st.dlq ? " failing" : ""));
  g.append(s("rect", { x: b.x, y: b.y, width: b.w, height: b.h }));
  g.append(s("text", { x: b.x + 8, y: b.y + 16, class: "name" }, g.dataset.name));
  if (!st) { g.append(s("text", { x: b.x + 8, y: b.y + 34, class: "fig" }, "no figures yet")); return; }
  stageLines(st).forEach((parts, i) => {
    const y = b.y + 33 + i * 13.5;
    const key = g.dataset.name;
    g.append(s("text", { x: b.x + 8, y, class: "fig", id: `fig-${key}-${parts[0].replace(/\W/g, "")}` }, parts[1]));
    if (parts[2]) {
      g.append(s("text", { x: b.x + 96, y, class: "fig", id: `fig-${key}-${parts[2].replace(/\W/g, "")}` }, parts[3]));
    }
  });
}

function drawFeed(g, b, node, feedRejected) {
  g.setAttribute("class", "stage feed");
  g.append(s("rect", { x: b.x, y: b.y, width: b.w, height: b.h }));
  g.append(s("text", { x: b.x + 8, y: b.y + 16, class: "name" }, "feed"));
  (node.commands || []).forEach((command, i) => g.append(s("text", { x: b.x + 8, y: b.y + 33 + i * 13.5, class: "fig" }, command)));
  g.append(s("text", { x: b.x + 8, y: b.y + b.h - 10, class: "fig", id: "fig-feed-rejected" },
    `rejected ${fmt(feedRejected)}`));
}

function drawGraph(graph, placed, figures, feedRejected) {
  const byName = Object.fromEntries((figures.stages || []).map((st) => [st.stage, st]));
  const totals = topicTotals(figures);
  const svg = s("svg", { width: placed.width, height: placed.height, id: "graph" });
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" }, s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#94a3b8" }))));
  for (const edge of graph.edges) {
    const a = placed.boxes[edge.from], b = placed.boxes[edge.to];
    const [x1, y1] = border(a, b), [x2, y2] = border(b, a);
    svg.append(s("line", { x1, y1, x2, y2, class: "edge " + edge.kind }));
  }
  for (const node of graph.nodes) {
    const name = node.id, b = placed.boxes[name];
    const g = s("g", { "data-name": name, "data-test": node.kind === "topic" ? "topic" : node.kind });
    g.dataset.name = name;
    if (node.kind === "feed") drawFeed(g, b, node, feedRejected);
    else if (node.kind !== "topic") drawStage(g, b, byName[name]);
    else {
      g.setAttribute("class", "topic" + (name === "rejected" || name === "dlq" ? " reject" : ""));
      g.append(s("rect", { x: b.x, y: b.y, width: b.w, height: b.h }));
      const label = totals[name] === undefined ? name : `${name} · ${totals[name]}`;
      g.append(s("text", { x: b.cx, y: b.cy + 4, "text-anchor": "middle" }, label));
      g.addEventListener("click", () => { location.hash = `#/topics/${name}`; });
      g.style.cursor = "pointer";
    }
    svg.append(g);
  }
  return svg;
}

PAGES.graph = async (main) => {
  const graph = await api("/api/graph");
  const placed = layout(graph);
  let feedRejected = null, rejectedAt = 0;
  const wrap = h("div", { class: "graph-wrap" });
  const note = h("p", { class: "legend" });
  const workers = h("p", { class: "legend" });
  main.replaceChildren(h("h2", {}, "Pipeline"), note, wrap, workers);
  const draw = (figures) => {
    if (figures.error) { wrap.replaceChildren(errorBox(`no figures: ${figures.error}`)); return; }
    if (Date.now() - rejectedAt > 10000) {  // the feed's rejections: read from `rejected` now and then
      rejectedAt = Date.now();
      api("/api/rejected").then((r) => { feedRejected = r.groups.filter((g) => g.stage === "feed")
        .reduce((sum, g) => sum + g.count, 0); }).catch(() => {});
    }
    wrap.replaceChildren(drawGraph(graph, placed, figures, feedRejected));
    note.textContent = figures.pending ? "waiting for the first two samples (rates come from their difference)…"
      : `Sampled ${new Date(figures.time * 1000).toLocaleTimeString()}; rates over ${figures.rate_window_s}s. `
        + "Lag: records on the stage's input not yet committed. n/a: no worker of the stage serves metrics "
        + "(start workers with --metrics-port). Click a topic to browse it.";
    const list = (figures.workers || []).map((w) => `pid ${w.pid} (${w.stages.join(", ")}) ${w.reachable ? w.url : "did not answer"}`);
    workers.textContent = list.length ? "Workers serving metrics: " + list.join("; ") : "No worker serving metrics.";
  };
  if (state.live) draw(state.live);
  state.listeners.push(draw);
};
