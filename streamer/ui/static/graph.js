// The pipeline page: stages (cards) and topics (pills) as an SVG graph, redrawn from each live sample.
"use strict";

const CARD = { w: 176, h: 112 };
const PILL = { w: 150, h: 26 };
const COL = 200;            // column pitch
const ROW = { a: 90, b: 250, c: 430, d: 590 };
// Where each known node sits: [column, row y]. The snake: SynthQuestions (row a) and GLAN (row b)
// meet at `instructions`, then judge → … → answer runs right to left (row c), and the sink (row d).
const LAYOUT = {
  "seeds": [0, ROW.a], "attribution": [1, ROW.a], "seeds.attributed": [2, ROW.a - 24], "docs": [2, ROW.a + 24],
  "situation": [3, ROW.a], "situations": [4, ROW.a], "instruction": [5, ROW.a],
  "glan.disciplines": [0, ROW.b], "subjects": [1, ROW.b], "glan.subjects": [2, ROW.b], "syllabus": [3, ROW.b],
  "glan.syllabi": [4, ROW.b], "questions": [5, ROW.b], "instructions": [6, (ROW.a + ROW.b) / 2],
  "judge": [6, ROW.c], "instructions.scored": [5, ROW.c], "embed": [4, ROW.c], "instructions.embedded": [3, ROW.c],
  "dedup": [2, ROW.c], "instructions.unique": [1, ROW.c], "answer": [0, ROW.c],
  "samples": [0, ROW.d], "sink": [1, ROW.d], "rejected": [3, ROW.d], "dlq": [5, ROW.d],
};
const EDGES = [
  ["seeds", "attribution"], ["attribution", "seeds.attributed"], ["seeds.attributed", "situation", "table"],
  ["docs", "situation"], ["situation", "situations"], ["situations", "instruction"], ["instruction", "instructions"],
  ["glan.disciplines", "subjects"], ["subjects", "glan.subjects"], ["glan.subjects", "syllabus"],
  ["syllabus", "glan.syllabi"], ["glan.syllabi", "questions"], ["questions", "instructions"],
  ["instructions", "judge"], ["judge", "instructions.scored"], ["instructions.scored", "embed"],
  ["embed", "instructions.embedded"], ["instructions.embedded", "dedup"], ["dedup", "instructions.unique"],
  ["instructions.unique", "answer"], ["answer", "samples"], ["samples", "sink"],
  ["judge", "rejected", "reject"], ["dedup", "rejected", "reject"],  // attribution's rejections: on its card
  ["rejected", "sink"], ["dlq", "sink"],
];
const TOPIC_NAMES = ["seeds", "docs", "situations", "instructions", "samples", "rejected", "dlq"];  // without a dot
const SVGNS = "http://www.w3.org/2000/svg";

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, value);
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

function box(name) {
  const [col, y] = LAYOUT[name];
  const isStage = !(name.includes(".") || TOPIC_NAMES.includes(name));
  const size = isStage ? CARD : PILL;
  const cx = 30 + col * COL + CARD.w / 2;
  return { x: cx - size.w / 2, y: y - size.h / 2, w: size.w, h: size.h, cx, cy: y, isStage };
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
    ["llm", `LLM ${fmt(llm.requests)} · tokens ${fmt(llm.tokens)}`],
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

function drawGraph(figures) {
  const byName = Object.fromEntries((figures.stages || []).map((st) => [st.stage, st]));
  const totals = topicTotals(figures);
  const extra = Object.keys(byName).filter((name) => !LAYOUT[name]);
  extra.forEach((name, i) => { LAYOUT[name] = [i, ROW.d + 150]; });  // stages added since this page was written
  const svg = s("svg", { width: 30 + 7 * COL, height: ROW.d + (extra.length ? 230 : 60), id: "graph" });
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" }, s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#94a3b8" }))));
  for (const [from, to, kind] of EDGES) {
    const a = box(from), b = box(to);
    const [x1, y1] = border(a, b), [x2, y2] = border(b, a);
    svg.append(s("line", { x1, y1, x2, y2, class: "edge " + (kind || "") }));
  }
  for (const name of Object.keys(LAYOUT)) {
    const b = box(name);
    const g = s("g", { "data-name": name, "data-test": b.isStage ? "stage" : "topic" });
    g.dataset.name = name;
    if (b.isStage) drawStage(g, b, byName[name]);
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
  const wrap = h("div", { class: "graph-wrap" });
  const note = h("p", { class: "legend" });
  const workers = h("p", { class: "legend" });
  main.replaceChildren(h("h2", {}, "Pipeline"), note, wrap, workers);
  const draw = (figures) => {
    if (figures.error) { wrap.replaceChildren(errorBox(`no figures: ${figures.error}`)); return; }
    wrap.replaceChildren(drawGraph(figures));
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
