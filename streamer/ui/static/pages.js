// The console's pages other than the graph: topics, samples, dead letters, report.
"use strict";

// Topic browser -----------------------------------------------------------------------------------
PAGES.topics = async (main, [topic]) => {
  const meta = await api("/api/topics");
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const chosen = topic || params.get("topic") || "samples";
  const field = (name, input) => h("label", {}, name, input);
  const topicSel = h("select", { name: "topic", id: "topic" }, meta.topics.map((t) => h("option", { value: t, selected: t === chosen }, t)));
  const start = h("select", { name: "start", id: "start" }, ["newest", "beginning", "offset", "since"].map((v) => h("option", { value: v }, v)));
  const offset = h("input", { name: "offset", id: "offset", placeholder: "120 or 0:120 1:40", size: 14 });
  const since = h("input", { name: "since", id: "since", placeholder: "10m, 2h, 2025-05-01T12:00", size: 18 });
  const where = h("input", { name: "where", id: "where-filter", placeholder: "data.stage=judge method=glan", size: 32 });
  const text = h("input", { name: "q", id: "text-filter", placeholder: "free text", size: 18 });
  const limit = h("input", { name: "limit", id: "limit", value: "50", size: 4 });
  const results = h("div", { id: "results" });
  const detail = h("div", { id: "detail" }, h("p", { class: "muted" }, "Click a row to see the record as JSON."));
  const form = h("form", { class: "filters", id: "topic-form" }, field("topic", topicSel), field("from", start),
    field("offset", offset), field("since", since), field("--where (space-separated)", where), field("text", text),
    field("limit", limit), h("button", { class: "primary", type: "submit", id: "search" }, "Search"));
  form.addEventListener("submit", (event) => { event.preventDefault(); search(); });
  main.replaceChildren(h("h2", {}, "Topic browser"), form, h("div", { class: "split" }, results, detail));

  async function search() {
    const q = new URLSearchParams({ start: start.value, offset: offset.value, since: since.value, q: text.value,
      limit: limit.value, where: where.value });  // the server splits the line (values may hold spaces)
    results.replaceChildren(h("p", { class: "muted" }, "reading…"));
    detail.replaceChildren(h("p", { class: "muted" }, "Click a row to see the record as JSON."));  // not the last search's
    try {
      const page = await api(`/api/topics/${encodeURIComponent(topicSel.value)}?${q}`);
      noteSimulated(page.rows);
      results.replaceChildren(h("p", { class: "muted", id: "result-count" },
        `${page.rows.length} records shown, ${page.scanned} read`), recordTable(page.rows, detail));
    } catch (err) { results.replaceChildren(errorBox(err.message)); }
  }
  await search();
};

function recordTable(rows, detail) {
  const body = rows.map((row) => {
    const tr = h("tr", { class: "clickable", "data-test": "record-row", "data-id": row.id || "" },
      h("td", { class: "num" }, `${row.partition}@${row.offset}`), h("td", {}, idLink(row.id, row.kind)),
      h("td", {}, row.kind || ""), h("td", {}, row.text));
    tr.addEventListener("click", (event) => {
      if (event.target.tagName === "A") return;
      detail.replaceChildren(h("h3", {}, `${row.kind || "record"} ${row.id || ""}`), jsonBlock(row.envelope));
    });
    return tr;
  });
  return h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "p@offset"), h("th", {}, "id"), h("th", {}, "kind"),
    h("th", {}, "text"))), h("tbody", {}, body));
}

// Samples ------------------------------------------------------------------------------------------
PAGES.samples = async (main) => {
  const found = await api("/api/samples");
  noteSimulated(found.samples);
  const rows = found.samples.map((smp) => h("tr", { "data-test": "sample-row" }, h("td", {}, idLink(smp.id, "sample")),
    h("td", {}, smp.method || ""), h("td", {}, smp.instruction)));
  main.replaceChildren(h("h2", {}, "Samples"), h("p", { class: "muted" },
    `The last ${found.samples.length} stored samples; open one to see its whole chain.`),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "id"), h("th", {}, "method"), h("th", {}, "instruction"))),
      h("tbody", {}, rows)));
};

function part(name, title, filled, ...content) {
  return h("section", { class: "part" + (filled ? "" : " missing"), "data-part": name }, h("h3", {}, title),
    filled ? content : h("p", { class: "muted" }, "not in this sample"));
}

function pairs(object) {
  return h("dl", {}, Object.entries(object || {}).map(([k, v]) =>
    [h("dt", {}, k), h("dd", { class: "text", "data-key": k }, shown(v))]));
}

// A value in a few words: lists one item a line (objects as their values: "10 · Sampling"), text as it is.
function shown(value) {
  if (Array.isArray(value)) {
    return h("ul", { class: "plain" }, value.map((item) => h("li", {},
      item && typeof item === "object" ? Object.values(item).join(" · ") : String(item))));
  }
  return value && typeof value === "object" ? JSON.stringify(value) : String(value ?? "—");
}

function chainParts(chain) {
  const v = chain.view, doc = v.document, judge = v.judge || {};
  const stored = chain.seeds_stored || [];
  const seeds = (v.seeds || []).map((seed, i) => h("li", { "data-seed": seed.id }, idLink((stored[i] || {}).id || seed.id),
    " ", h("span", { class: "text" }, seed.instruction || ""),
    stored[i] ? h("span", { class: "muted" }, ` (attributed seed, score ${stored[i].data.score ?? "?"})`) : null));
  const scores = judge.scores ? h("table", { class: "scores" }, Object.entries(judge.scores).map(([k, s]) =>
    h("tr", { "data-criterion": k }, h("td", {}, k), h("td", { class: "num" }, s)))) : null;
  if (v.glan) {  // GLAN: a place in the taxonomy and a syllabus instead of a document, seeds and a situation
    return [part("glan", "GLAN taxonomy and syllabus", true, pairs(v.glan)), ...laterParts(chain, scores)];
  }
  return [
    part("document", "Document", doc, doc && h("dl", {}, h("dt", {}, "title"), h("dd", { "data-key": "title" }, doc.title || "—"),
      h("dt", {}, "url"), h("dd", { "data-key": "url" }, webLink(doc.url)),
      h("dt", {}, "source"), h("dd", {}, doc.source || "—"), h("dt", {}, "id"), h("dd", {}, idLink(doc.id)))),
    part("seeds", "Example seeds", v.seeds && v.seeds.length, h("ol", {}, seeds)),
    part("situation", "Situation", v.situation, pairs(v.situation)),
    ...laterParts(chain, scores),
  ];
}

// What every method's sample has: the instruction, the judge, the dedup decision, the answer.
function laterParts(chain, scores) {
  const v = chain.view, judge = v.judge || {}, dedup = v.dedup;
  return [
    part("instruction", "Instruction", v.instruction, h("p", { class: "text", "data-key": "instruction" }, v.instruction),
      v.compositions ? [h("h3", {}, "compositions"), pairs(v.compositions)] : null),
    part("judge", "Judge", judge.total !== undefined && judge.total !== null,
      h("p", {}, "total ", h("b", { "data-key": "total" }, judge.total)), scores,
      judge.analysis ? h("p", { class: "muted text" }, judge.analysis) : null),
    part("dedup", "Dedup", dedup, dedup && h("dl", {}, h("dt", {}, "decision"), h("dd", { "data-key": "decision" }, dedup.decision),
      h("dt", {}, "similarity"), h("dd", { "data-key": "similarity" }, fmt(dedup.similarity)),
      h("dt", {}, "compared with"), h("dd", {}, dedup.nearest_id ? [idLink(chain.nearest ? chain.nearest.id : dedup.nearest_id,
        chain.nearest ? "sample" : null), chain.nearest ? h("div", { class: "text muted" }, chain.nearest.instruction) : null]
        : "nothing kept before it"))),
    part("answer", "Answer", v.response || (v.messages || [])[1], h("p", { class: "text", "data-key": "answer" },
      v.response || ((v.messages || [])[1] || {}).content)),
  ];
}

PAGES.sample = async (main, [id]) => {
  const chain = await api(`/api/samples/${encodeURIComponent(id)}`);
  noteSimulated(chain.envelope);
  const v = chain.view;
  const stages = ((v.lineage || {}).stages || []).map((st) => `${st.stage} ${st.version}${st.model ? " · " + st.model : ""}`);
  main.replaceChildren(h("h2", {}, "Sample ", idLink(v.id, "sample")),
    h("p", { class: "muted" }, `${v.method || "?"}${v.model ? " · answered by " + v.model : ""} · found in the ${chain.found_in} · root `, idLink(v.root_id),
      " · instruction ", idLink(v.instruction_id), ` · ${stages.join(" → ")}`),
    h("div", { class: "chain", id: "chain" }, chainParts(chain)),
    h("details", {}, h("summary", {}, "stored envelope"), jsonBlock(chain.envelope)));
};

// Dead letters and rejections ----------------------------------------------------------------------
PAGES.dlq = async (main) => {
  const [letters, rejected] = await Promise.all([api("/api/dlq"), api("/api/rejected")]);
  noteSimulated(letters.letters);
  const rows = letters.letters.map((l) => h("tr", { "data-test": "letter-row", "data-id": l.id },
    h("td", {}, idLink(l.id)), h("td", {}, l.stage), h("td", {}, l.error_type), h("td", { class: "num" }, l.attempts),
    h("td", { class: "status-" + l.status, "data-test": "letter-status" }, l.status + (l.stored_only ? " (store only)" : "")),
    h("td", {}, h("div", { class: "text" }, l.error.slice(0, 300)), l.input_id ? ["input ", idLink(l.input_id)] : null),
    h("td", {}, l.status === "pending" ? h("button", { "data-test": "redrive", onclick: () => redriveLetter(l) }, "Redrive") : "")));
  const groups = rejected.groups.map((g) => h("tr", {}, h("td", {}, g.stage), h("td", {}, g.reason),
    h("td", { class: "num" }, g.count), h("td", {}, h("ul", { class: "plain" }, g.examples.map((e) => h("li", {},
      idLink(e.id), e.document ? h("span", { class: "text", "data-test": "rejected-document" }, " " + e.document) : null))))));
  main.replaceChildren(h("h2", {}, "Dead letters"),
    h("p", { class: "muted" }, `${letters.letters.length} dead letters, ${letters.pending} pending. Redriving puts the `
      + "letter's input back on its stage's input topic, once; the stage processes it when it runs."),
    h("table", { id: "letters" }, h("thead", {}, h("tr", {}, ["id", "stage", "error", "attempts", "status", "message", ""]
      .map((t) => h("th", {}, t)))), h("tbody", {}, rows)),
    h("h2", { class: "spaced" }, "Rejected"), h("p", { class: "muted" }, `${rejected.total} rejected records by stage and reason`),
    h("table", { id: "rejected" }, h("thead", {}, h("tr", {}, ["stage", "reason", "records", "examples"].map((t) => h("th", {}, t)))),
      h("tbody", {}, groups)));
};

// Batches of the batch lane ---------------------------------------------------------------------------
PAGES.batches = async (main) => {
  const listed = await api("/api/batches");
  const age = (s) => (s < 120 ? `${s.toFixed(0)}s` : s < 7200 ? `${(s / 60).toFixed(0)}m` : `${(s / 3600).toFixed(1)}h`);
  const rows = listed.batches.map((b) => h("tr", { "data-test": "batch-row" }, h("td", {}, b.batch || `(local ${b.local_id.slice(0, 12)})`),
    h("td", {}, b.stage), h("td", { "data-test": "batch-state" }, b.state), h("td", { class: "num" }, b.requests),
    h("td", { class: "num" }, b.completed), h("td", { class: "num" }, b.failed), h("td", { class: "num" }, age(b.age_s)),
    h("td", { class: "num" }, b.collected ? `$${b.cost_usd.toFixed(4)}` : "-"), h("td", {}, h("div", { class: "text" }, b.error || ""))));
  main.replaceChildren(h("h2", {}, "Batches"),
    h("p", { class: "muted" }, `${listed.batches.length} batches of stages in batch mode, ${listed.open} open; `
      + `batch lane cost so far $${listed.batch_usd.toFixed(4)} of $${listed.total_usd.toFixed(4)} in all. `
      + "Cancel with synthstream batch cancel."),
    h("table", { id: "batches" }, h("thead", {}, h("tr", {}, ["batch", "stage", "state", "requests", "done", "failed", "age",
      "cost", ""].map((t) => h("th", {}, t)))), h("tbody", {}, rows)));
};

async function redriveLetter(letter) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = `Redrive dead letter ${letter.id} (${letter.stage}, `
    + `${letter.error_type})? Its input goes back on ${letter.input_topic} once.`;
  dialog.showModal();
  const answer = await new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
  if (answer !== "ok") return;
  try {
    const done = await postJson("/api/dlq/redrive", { id: letter.id });
    alertLine(done.sent.length ? done.sent.join("; ") : "already redriven before: not sent again");
  } catch (err) { alertLine("redrive failed: " + err.message); }
  await route();
}

function alertLine(text) {
  document.getElementById("warnings").append(h("div", { class: "banner", "data-test": "notice" }, text));
}

// Report ---------------------------------------------------------------------------------------------
PAGES.report = async (main) => {
  main.replaceChildren(h("h2", {}, "Report"), h("p", { class: "muted" }, "reading the store and drawing the charts…"));
  const figures = await api("/api/report");
  if (figures.error) { main.replaceChildren(h("h2", {}, "Report"), errorBox(figures.error)); return; }
  if (figures.simulated_samples) noteSimulated({ simulated: true });
  // A nested figure (rejected by stage, then reason) as one row per leaf: "judge › below threshold  3".
  const leaves = (object, path) => Object.entries(object || {}).flatMap(([k, v]) =>
    (v !== null && typeof v === "object" && !Array.isArray(v) ? leaves(v, [...path, k]) : [[[...path, k].join(" › "), v]]));
  const rows = (object) => leaves(object, []).map(([k, v]) =>
    h("tr", {}, h("td", {}, k), h("td", { class: "num" }, Array.isArray(v) ? v.join(", ") : fmt(v))));
  const table = (title, object) => h("div", {}, h("h3", {}, title),
    h("table", {}, Object.keys(object || {}).length ? rows(object) : h("tr", {}, h("td", { class: "muted" }, "none"))));
  const stamp = `${new Date(figures.made_at * 1000).toLocaleTimeString()}`;
  main.replaceChildren(h("h2", {}, "Report"),
    h("p", { class: "muted" }, `${figures.samples} samples (${figures.simulated_samples} simulated) in ${figures.store}; `
      + `made ${stamp}, again on reload after 30 s.`),
    h("div", { class: "tables", id: "report-tables" }, table("samples by method", figures.samples_by_method),
      table("instruction outcomes", figures.instruction_outcomes), table("rates", figures.rates),
      table("dead letters by stage", figures.dlq_by_stage), table("instruction words", figures.instruction_words),
      table("rejected by stage", figures.rejected_by_stage),
      table("stage versions (samples)", Object.fromEntries((figures.stage_versions || []).map((v) =>
        [`${v.stage} ${v.version}${v.model ? " · " + v.model : ""}`, v.samples]))),
      table("diversity", { "mean pairwise cosine distance": figures.diversity.mean_pairwise_cosine_distance,
        "topic clusters": figures.diversity.topic_clusters, "singletons": figures.diversity.singleton_clusters })),
    h("div", { class: "charts" }, figures.charts.map((name) => h("figure", {},
      h("img", { src: `/api/report/charts/${name}?t=${figures.made_at}`, alt: name }), h("figcaption", { class: "muted" }, name)))));
};
