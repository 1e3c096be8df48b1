// nftlens review page: plain JS over the public API (no framework, no CDN, no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const pct = (p) => `${(100 * p).toFixed(1)} %`;
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};
const tokenImage = (c, t) => `/tokens/${encodeURIComponent(c)}/${encodeURIComponent(t)}/image`;

async function api(path, file, { as = "json" } = {}) {
  const body = new FormData();
  body.append("file", file);
  const res = await fetch(path, { method: "POST", body });
  if (!res.ok) {
    let detail = res.statusText;
    try { const e = await res.json(); detail = `${e.error}: ${typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail)}`; } catch {}
    const err = new Error(detail);
    err.status = res.status;
    throw err;
  }
  return as === "blob" ? URL.createObjectURL(await res.blob()) : res.json();
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// -- tabs -------------------------------------------------------------------------------------------
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${tab.dataset.view}`;
  });
}

// -- model and provider -----------------------------------------------------------------------------
fetch("/model").then((r) => r.json()).then((m) => {
  $("model-info").textContent = `${m.name}@${m.version} on ${m.provider}`;
}).catch(() => { $("model-info").textContent = "model not ready"; });

// -- check an image ---------------------------------------------------------------------------------
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) check(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", (e) => { if (e.target.files.length) check(e.target.files[0]); });

async function check(file) {
  showError("");
  $("result").hidden = false;
  $("query-img").src = URL.createObjectURL(file);
  for (const id of ["class-heat", "copy-heat-query", "copy-heat-original", "copy-original"]) $(id).removeAttribute("src");
  $("label").textContent = "…";
  $("verdict").textContent = "checking…";
  $("copy-pair").hidden = true;
  $("matches").replaceChildren();
  $("neighbours").replaceChildren();
  let result;
  try {
    result = await api("/classify?copies=true&k=5&embedding=false", file).catch((err) =>
      // a model without a copy head answers 409: classify without the copy block
      err.status === 409 ? api("/classify?embedding=false", file) : Promise.reject(err));
  } catch (err) {
    showError(`Could not classify this image: ${err.message}`);
    $("result").hidden = true;
    return;
  }
  showClassification(result);
  $("heat-label").textContent = result.predictions[0].label;
  api("/explain", file, { as: "blob" }).then((url) => { $("class-heat").src = url; })
    .catch((err) => showError(`heatmap: ${err.message}`));
  showCopies(file, result.copies);
  api("/similar?k=12", file).then(showNeighbours).catch((err) => showError(`neighbours: ${err.message}`));
}

function showClassification(r) {
  const top = r.predictions[0];
  $("label").textContent = top.label;
  $("probability").textContent = pct(top.probability);
  const u = r.unknown;
  $("unknown").className = u && u.is_unknown ? "flag" : "ok";
  $("unknown").textContent = !u ? "" : u.is_unknown
    ? `⚠ unknown collection: score ${u.score.toFixed(2)} is past the threshold ${u.threshold.toFixed(2)} (${u.method})`
    : `known collection (${u.method} score ${u.score.toFixed(2)}, threshold ${u.threshold.toFixed(2)})`;
  $("predictions").replaceChildren(...r.predictions.map((p) =>
    el("tr", {}, el("td", { textContent: p.label }), el("td", { className: "num", textContent: pct(p.probability) }),
      el("td", {}, el("span", { className: "bar", style: `width:${Math.round(100 * p.probability)}px` })))));
  $("timings").textContent = `${r.provider} · ${Math.round(r.timings_ms.total)} ms`;
}

// the direct check a match got (app/verify.py): layout for sprites, colour agreement for paintings
function checkText(m) {
  if (m.layout != null) return `layout ${m.layout.toFixed(3)}`;
  if (m.colours != null && m.overlay != null && m.overlay > m.colours)
    return `colours ${m.colours.toFixed(3)}, ${m.overlay.toFixed(3)} with one pasted-on region forgiven`;
  if (m.colours != null) return `colours ${m.colours.toFixed(3)}`;
  return m.keypoints != null ? `${m.keypoints} keypoints` : "";
}

// why a match is called a copy: the same pixels, its score, or its direct check at the collection's minimum
function why(m) {
  if (m.exact) return "the same pixels";
  if (m.lossless) return `every pixel it shows agrees (${checkText(m)}; the image is lossless, its pixels decide)`;
  if (m.score >= m.threshold) return `score ${m.score.toFixed(4)} ≥ threshold ${m.threshold.toFixed(4)}`;
  return `its ${checkText(m)} reaches its collection's check minimum (score ${m.score.toFixed(4)})`;
}

function showCopies(file, copies) {
  if (!copies) {
    $("verdict").textContent = "This model has no copy detector.";
    return;
  }
  const best = copies.matches.find((m) => m.is_copy) || copies.matches[0];
  $("verdict").className = `verdict ${copies.is_copy ? "flag" : "ok"}`;
  $("verdict").textContent = !best ? "The catalog is empty." : copies.is_copy
    ? `Copy of ${best.collection}/${best.token_id}: ${why(best)}. Route to review.`
    : best.lossless && best.score >= best.threshold
      ? `No copy found: the closest token ${best.collection}/${best.token_id} scores ${best.score.toFixed(4)}, but its pixels differ (${checkText(best)}): a sibling, not a copy.`
      : best.threshold > 1
        ? `No copy found: the closest token ${best.collection}/${best.token_id} scores ${best.score.toFixed(4)}; in its collection only a direct check decides (the score threshold is above 1), and ${checkText(best) ? `its ${checkText(best)} did not make it one` : "it was not checked"}.`
        : `No copy found: the closest token ${best.collection}/${best.token_id} scores ${best.score.toFixed(4)} < threshold ${best.threshold.toFixed(4)}.`;
  $("matches").replaceChildren(
    el("tr", {}, ...["", "token", "score", "threshold", "check", "verdict"].map((h) => el("th", { textContent: h }))),
    ...copies.matches.map((m) => el("tr", {},
      el("td", {}, el("img", { className: "thumb", src: tokenImage(m.collection, m.token_id), alt: m.token_id })),
      el("td", { textContent: `${m.collection}/${m.token_id}` }),
      el("td", { className: "num", textContent: m.score.toFixed(4) }),
      el("td", { className: "num", textContent: m.threshold.toFixed(4) }),
      el("td", { className: "num", textContent: checkText(m) }),
      el("td", { className: m.is_copy ? "flag" : "", textContent: m.is_copy ? (m.exact ? "exact copy" : "copy") : "distinct" }))));
  if (!best) return;
  const ref = `${best.collection}/${best.token_id}`;
  $("copy-pair").hidden = false;
  $("copy-original-name").textContent = ref;
  $("copy-original").src = tokenImage(best.collection, best.token_id);
  const q = encodeURIComponent(ref);
  api(`/explain?copy_of=${q}&side=query`, file, { as: "blob" }).then((url) => { $("copy-heat-query").src = url; })
    .catch((err) => showError(`copy heatmap: ${err.message}`));
  api(`/explain?copy_of=${q}&side=original`, file, { as: "blob" }).then((url) => { $("copy-heat-original").src = url; })
    .catch((err) => showError(`copy heatmap: ${err.message}`));
}

function showNeighbours(r) {
  $("neighbours").replaceChildren(...r.results.map((n) => el("figure", { className: "neighbour" },
    el("img", { src: tokenImage(n.collection, n.token_id), alt: `${n.collection}/${n.token_id}`, loading: "lazy" }),
    el("figcaption", { textContent: `${n.collection}/${n.token_id} · ${n.score.toFixed(3)}` }))));
}

// -- scan results -----------------------------------------------------------------------------------
const PAGE = 25;
const scan = { rows: [], images: new Map(), page: 0 };

function parseCsv(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field); field = "";
      if (row.some((f) => f !== "")) rows.push(row);
      row = [];
    } else field += c;
  }
  if (field !== "" || row.length) { row.push(field); rows.push(row); }
  const [header, ...body] = rows;
  return body.map((r) => Object.fromEntries(header.map((h, i) => [h, r[i] ?? ""])));
}

const baseName = (path) => path.split(/[\\/]/).pop();

function scanRows() {
  const rows = $("only-copies").checked ? scan.rows.filter((r) => r.is_copy === "True") : scan.rows;
  return rows;
}

function renderScan() {
  const rows = scanRows();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  scan.page = Math.min(scan.page, pages - 1);
  const flagged = scan.rows.filter((r) => r.is_copy === "True").length;
  $("scan-summary").textContent = `${scan.rows.length} images scanned, ${flagged} flagged as copies.`;
  $("page").textContent = `page ${scan.page + 1} of ${pages}`;
  $("prev").disabled = scan.page === 0;
  $("next").disabled = scan.page >= pages - 1;
  const slice = rows.slice(scan.page * PAGE, (scan.page + 1) * PAGE);
  $("scan-table").replaceChildren(
    el("tr", {}, ...["query", "", "best match", "", "score", "verdict"].map((h) => el("th", { textContent: h }))),
    ...slice.map((r) => {
      const local = scan.images.get(baseName(r.query));
      const verdict = r.error ? `error: ${r.error}` : r.is_copy === "True" ? (r.exact === "True" ? "exact copy" : "copy") : "distinct";
      return el("tr", { className: "scan-row" },
        el("td", { textContent: r.query }),
        el("td", {}, local ? el("img", { className: "thumb", src: local, alt: r.query }) : ""),
        el("td", { textContent: r.best_collection ? `${r.best_collection}/${r.best_token_id}` : "—" }),
        el("td", {}, r.best_collection ? el("img", { className: "thumb", src: tokenImage(r.best_collection, r.best_token_id), alt: r.best_token_id, loading: "lazy" }) : ""),
        el("td", { className: "num", textContent: r.score ? Number(r.score).toFixed(4) : "" }),
        el("td", { className: r.is_copy === "True" ? "flag" : "", textContent: verdict }));
    }));
}

$("scan-csv").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  scan.rows = parseCsv(await file.text()).sort((a, b) => (Number(b.score) || 0) - (Number(a.score) || 0));
  scan.page = 0;
  renderScan();
});
$("scan-images").addEventListener("change", (e) => {
  scan.images = new Map([...e.target.files].map((f) => [f.name, URL.createObjectURL(f)]));
  renderScan();
});
$("only-copies").addEventListener("change", () => { scan.page = 0; renderScan(); });
$("prev").addEventListener("click", () => { scan.page--; renderScan(); });
$("next").addEventListener("click", () => { scan.page++; renderScan(); });
