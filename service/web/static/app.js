// celltype web page: upload a file, score it with the service, draw the results.
// Plain JavaScript, no libraries; every request goes to this service only.
"use strict";

const KEY_STORAGE = "celltype-api-key";
const PAGE_SIZE = 50;
const UNKNOWN_COLOR = "#9e9e9e";
const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
  "#e377c2", "#17becf", "#bcbd22", "#393b79", "#ad494a", "#637939",
  "#7b4173", "#3182bd", "#e6550d", "#31a354",
];
const SVG_NS = "http://www.w3.org/2000/svg";
// Why a cell is Unknown, in the order the model checks (a cell gets the first that applies).
const REASONS = ["no_counts", "too_few_genes", "unlike_training", "low_confidence"];

const state = {
  model: null,
  file: null,
  options: null,
  report: null,
  colors: new Map(),
  matches: [],
  page: 0,
  sort: { key: null, direction: 1 },
};

const $ = (id) => document.getElementById(id);

// ----------------------------------------------------------------------------------------------
// API key and requests
// ----------------------------------------------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

const STATUS_WORDS = {
  400: "The file could not be read.",
  401: "The service needs a valid API key: enter it in the field at the top of the page and press “Use key”.",
  404: "The service does not know this address.",
  413: "The file is too large for the service.",
  415: "The service does not accept this kind of upload.",
  422: "The data cannot be used as sent.",
  500: "The service failed unexpectedly.",
  503: "The service is busy or has no model loaded yet; try again in a moment.",
  504: "The service took too long to answer; try a smaller file.",
};

function detailText(detail) {
  if (detail === undefined || detail === null) return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((item) => {
      if (item && typeof item === "object") {
        const where = Array.isArray(item.loc) ? item.loc.join(".") : "";
        return where ? `${where}: ${item.msg}` : String(item.msg);
      }
      return String(item);
    }).join("; ");
  }
  return JSON.stringify(detail);
}

class ApiError extends Error {
  constructor(status, detail) {
    const words = STATUS_WORDS[status] || `The service answered with status ${status}.`;
    super(detail ? `${words}\n${detail}` : words);
    this.status = status;
    this.words = words;
    this.detail = detail;
  }
}

function parseError(status, text) {
  let detail = "";
  try {
    detail = detailText(JSON.parse(text).detail);
  } catch (_) {
    detail = text ? text.slice(0, 500) : "";
  }
  return new ApiError(status, detail);
}

async function getJson(url) {
  const response = await fetch(url, { headers: authHeaders(), cache: "no-store" });
  const text = await response.text();
  if (!response.ok) throw parseError(response.status, text);
  return JSON.parse(text);
}

// POST the file as multipart field "file"; resolves with the XHR once the answer is complete.
function postFile(url, file, responseType, onUploadProgress, onUploaded) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.responseType = responseType;
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && onUploadProgress) onUploadProgress(event.loaded, event.total);
    });
    xhr.upload.addEventListener("load", () => { if (onUploaded) onUploaded(); });
    xhr.addEventListener("load", async () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(xhr);
        return;
      }
      const text = responseType === "blob" ? await xhr.response.text() : xhr.responseText;
      reject(parseError(xhr.status, text));
    });
    xhr.addEventListener("error", () => {
      const limit = state.model ? state.model.expected_input.max_body_bytes : null;
      const hint = limit && file.size > limit
        ? ` The file (${formatBytes(file.size)}) is larger than the ${formatBytes(limit)} the service accepts.`
        : " The file may be larger than the service accepts, or the service stopped.";
      reject(new ApiError(0, `The connection to the service was lost before it answered.${hint}`));
    });
    const body = new FormData();
    body.append("file", file, file.name);
    xhr.send(body);
  });
}

function reportUrl(format) {
  const params = new URLSearchParams({ format, input: state.options.input });
  if (state.options.geneColumn) params.set("gene_column", state.options.geneColumn);
  return `/v1/report?${params.toString()}`;
}

// ----------------------------------------------------------------------------------------------
// Small helpers
// ----------------------------------------------------------------------------------------------

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

function percent(share) {
  return `${(100 * share).toFixed(1)} %`;
}

// A novelty score for people: two decimals (none for very large scores); "" when there is none.
function formatScore(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "";
  return Math.abs(value) >= 1000 ? value.toFixed(0) : value.toFixed(2);
}

// 0.999 -> "99.9th"
function percentile(quantile) {
  return `${Number((100 * quantile).toFixed(2))}th`;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fillFacts(list, facts) {
  clear(list);
  for (const [term, value] of facts) {
    if (value === undefined || value === null || value === "") continue;
    list.appendChild(el("dt", term));
    const dd = el("dd");
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = String(value);
    list.appendChild(dd);
  }
}

function colorOf(label) {
  return state.colors.get(label) || UNKNOWN_COLOR;
}

function assignColors(labels, unknownLabel) {
  state.colors = new Map();
  let next = 0;
  for (const label of labels) {
    if (label === unknownLabel) continue;
    state.colors.set(label, PALETTE[next % PALETTE.length]);
    next += 1;
  }
  state.colors.set(unknownLabel, UNKNOWN_COLOR);
}

function showError(error) {
  const box = $("error");
  clear(box);
  if (error instanceof ApiError) {
    box.appendChild(el("strong", error.words));
    if (error.detail) box.appendChild(el("span", error.status ? `The service said: ${error.detail}` : error.detail));
    if (error.status === 401) $("api-key").focus();
  } else {
    box.appendChild(el("strong", "Something went wrong in the page."));
    box.appendChild(el("span", String(error && error.message ? error.message : error)));
  }
  box.hidden = false;
}

function hideError() {
  $("error").hidden = true;
  clear($("error"));
}

// ----------------------------------------------------------------------------------------------
// Model card
// ----------------------------------------------------------------------------------------------

function scoresText(scores) {
  if (!scores || typeof scores !== "object") return null;
  const parts = Object.entries(scores)
    .filter(([, value]) => typeof value === "number")
    .map(([name, value]) => `${name} ${value.toFixed(3)}`);
  return parts.length ? parts.join(", ") : null;
}

function listText(values) {
  return Array.isArray(values) && values.length ? values.join(", ") : null;
}

// A registered model's name, else the last part of its URI (the full URI is in the tooltip).
function modelName(model) {
  if (model.name) return model.name;
  const parts = String(model.uri || "").split(/[\\/]/).filter(Boolean);
  return parts.length ? parts[parts.length - 1] : "(unnamed bundle)";
}

function noveltyText(novelty) {
  if (novelty === undefined) return null;
  if (!novelty || !novelty.method) return "none: this model cannot flag cells unlike its training data";
  if (novelty.threshold === null || novelty.threshold === undefined) return `${novelty.method} (no threshold: flags no cell)`;
  const where = typeof novelty.quantile === "number"
    ? ` (the ${percentile(novelty.quantile)} percentile of validation cells from the training labs)` : "";
  return `${novelty.method}: Unknown above a score of ${formatScore(novelty.threshold)}${where}`;
}

function renderModel(model) {
  state.model = model;
  const name = el("span", modelName(model));
  if (model.uri) name.title = model.uri;
  const digest = model.bundle_sha256 ? el("code", model.bundle_sha256.slice(0, 16) + "…") : null;
  if (digest) digest.title = model.bundle_sha256;
  const alias = model.alias || listText(model.aliases);
  fillFacts($("model-facts"), [
    ["Name", name],
    ["Version", model.version],
    ["Alias", alias],
    ["Digest (sha256)", digest],
    ["Cell types", listText(model.labels)],
    ["Training labs", listText(model.train_batches)],
    ["Held-out labs", listText(model.holdout_batches)],
    ["Held-out scores", scoresText(model.holdout_scores)],
    ["Genes", model.n_genes],
    ["Unknown below confidence", model.unknown_threshold],
    ["Unknown if fewer genes detected than", model.min_detected_genes],
    ["Novelty check (unlike training)", noveltyText(model.novelty)],
    ["Trained", model.trained_at],
    ["Largest upload", formatBytes(model.expected_input.max_body_bytes)],
  ]);
  $("model-loading").hidden = true;
  $("model-facts").hidden = false;
}

async function loadModel() {
  $("model-loading").hidden = false;
  $("model-loading").textContent = "Loading the model description…";
  $("model-facts").hidden = true;
  try {
    renderModel(await getJson("/v1/model"));
    hideError();
  } catch (error) {
    $("model-loading").textContent = error instanceof ApiError && error.status === 401
      ? "Enter the service's API key at the top of the page to see the model."
      : "The model description could not be loaded.";
    showError(error);
  }
}

// ----------------------------------------------------------------------------------------------
// Upload and progress
// ----------------------------------------------------------------------------------------------

function setPhase(phase, text, value) {
  $("progress").hidden = false;
  const order = ["upload", "score", "done"];
  const current = order.indexOf(phase);
  order.forEach((name, index) => {
    const step = $(`phase-${name}`);
    step.classList.toggle("active", index === current);
    step.classList.toggle("done", index < current);
  });
  const bar = $("upload-bar");
  if (value === null) bar.removeAttribute("value"); else bar.value = value;
  $("progress-text").textContent = text;
}

async function annotateFile(file) {
  hideError();
  state.file = file;
  state.options = { input: $("input-kind").value, geneColumn: $("gene-column").value.trim() };
  const limit = state.model ? state.model.expected_input.max_body_bytes : null;
  if (limit && file.size > limit) {
    setPhase("upload", "", 0);
    showError(new ApiError(413, `The file is ${formatBytes(file.size)}; the service accepts at most ` +
      `${formatBytes(limit)} per upload. Send fewer cells, or use \`celltype score\` for large files.`));
    return;
  }
  const started = performance.now();
  setPhase("upload", `Uploading ${file.name} (${formatBytes(file.size)})…`, 0);
  try {
    const xhr = await postFile(
      reportUrl("json"), file, "text",
      (loaded, total) => setPhase("upload", `Uploading ${file.name}: ${formatBytes(loaded)} of ${formatBytes(total)}`,
        Math.round((100 * loaded) / total)),
      () => setPhase("score", `Uploaded ${formatBytes(file.size)}; the service is reading and scoring the cells…`, null),
    );
    const report = JSON.parse(xhr.responseText);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    setPhase("done", `Done: ${report.n_cells.toLocaleString("en")} cells annotated in ${seconds} s.`, 100);
    renderReport(report, file.name);
  } catch (error) {
    setPhase("upload", "", 0);
    $("progress").hidden = true;
    showError(error);
  }
}

function filenameFrom(xhr, fallback) {
  const header = xhr.getResponseHeader("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(header);
  return match ? match[1] : fallback;
}

async function download(format) {
  if (!state.file) return;
  const status = $("download-status");
  const buttons = [$("download-h5ad"), $("download-csv")];
  buttons.forEach((button) => { button.disabled = true; });
  status.textContent = `Preparing the ${format === "h5ad" ? "annotated .h5ad" : "CSV"} file…`;
  try {
    const xhr = await postFile(reportUrl(format), state.file, "blob",
      (loaded, total) => { status.textContent = `Uploading again: ${Math.round((100 * loaded) / total)} %`; },
      () => { status.textContent = "Scoring for the download…"; });
    const name = filenameFrom(xhr, format === "h5ad" ? "cells.annotated.h5ad" : "cells.predictions.csv");
    const url = URL.createObjectURL(xhr.response);
    const link = el("a");
    link.href = url;
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    status.textContent = `Downloaded ${name} (${formatBytes(xhr.response.size)}).`;
  } catch (error) {
    status.textContent = "";
    showError(error);
  } finally {
    buttons.forEach((button) => { button.disabled = false; });
  }
}

// ----------------------------------------------------------------------------------------------
// Why cells are Unknown
// ----------------------------------------------------------------------------------------------

// The model's Unknown checks: from the report, else from the model card.
function unknownChecks(report) {
  const checks = (report && report.unknown && report.unknown.checks) || {};
  const model = state.model || {};
  return {
    minDetectedGenes: checks.min_detected_genes !== undefined ? checks.min_detected_genes : model.min_detected_genes,
    novelty: checks.novelty !== undefined ? checks.novelty : model.novelty,
    threshold: checks.threshold !== undefined ? checks.threshold : report ? report.threshold : model.unknown_threshold,
  };
}

function noveltyChecked(checks) {
  return Boolean(checks.novelty && checks.novelty.method);
}

// One line of plain language per reason.
function reasonExplanation(reason, checks) {
  switch (reason) {
    case "no_counts":
      return "the cell has no counts over the model's genes (empty droplet or failed library)";
    case "too_few_genes":
      return `fewer detected model genes than the model's minimum (${checks.minDetectedGenes ?? "?"})`;
    case "unlike_training": {
      const text = "unlike every cell type the model was trained on — possibly a type the reference lacks";
      if (!noveltyChecked(checks)) return `${text}; not checked: this model has no novelty detector`;
      const limit = checks.novelty.threshold;
      return limit === null || limit === undefined ? text : `${text} (novelty score above ${formatScore(limit)})`;
    }
    case "low_confidence":
      return `the best type's probability is below the threshold (${checks.threshold})`;
    default:
      return reason;
  }
}

function renderReasons(report) {
  const box = $("unknown-reasons");
  const reasons = report.unknown.reasons;
  box.hidden = !reasons;
  if (!reasons) return;
  const checks = unknownChecks(report);
  const count = report.unknown.count;
  $("reasons-title").textContent = count === 0 ? "No cell is Unknown"
    : `Why ${count.toLocaleString("en")} ${count === 1 ? "cell is" : "cells are"} Unknown`;
  const body = $("reasons-table").tBodies[0];
  clear(body);
  const order = [...REASONS, ...Object.keys(reasons).filter((reason) => !REASONS.includes(reason))];
  for (const reason of order) {
    if (!(reason in reasons)) continue;
    const n = reasons[reason];
    const notChecked = reason === "unlike_training" && !noveltyChecked(checks) && n === 0;
    const tr = el("tr", null, n > 0 ? "has-cells" : "no-cells");
    tr.dataset.reason = reason;
    const name = el("td");
    if (n > 0) {
      const button = el("button", reason, "link reason-link");
      button.type = "button";
      button.title = `list the ${n.toLocaleString("en")} cells Unknown for this reason`;
      button.addEventListener("click", () => showReason(reason));
      name.appendChild(button);
    } else {
      name.appendChild(el("code", reason));
    }
    tr.appendChild(name);
    tr.appendChild(el("td", notChecked ? "—" : n.toLocaleString("en"), "num reason-count"));
    tr.appendChild(el("td", reasonExplanation(reason, checks), "reason-text"));
    body.appendChild(tr);
  }
  $("reasons-note").textContent = "Each Unknown cell is counted once, under the first of these checks it fails (in this order)." +
    (count > 0 ? " Click a reason to list its cells." : "");

  const filter = $("reason-filter");
  while (filter.options.length > 3) filter.remove(3);
  for (const reason of order) {
    if (!(reason in reasons)) continue;
    const option = el("option", `Unknown: ${reason} (${reasons[reason].toLocaleString("en")})`);
    option.value = reason;
    filter.appendChild(option);
  }
  filter.value = "all";
}

function showReason(reason) {
  $("reason-filter").value = reason;
  $("cell-search").value = "";
  filterCells();
  $("cells-title").scrollIntoView({ behavior: "smooth", block: "start" });
}

// ----------------------------------------------------------------------------------------------
// Results
// ----------------------------------------------------------------------------------------------

function renderReport(report, filename) {
  state.report = report;
  const unknownLabel = (state.model && state.model.unknown_label) || "Unknown";
  assignColors(report.counts.map((row) => row.label), unknownLabel);
  $("result-file").textContent = filename;
  fillFacts($("summary"), [
    ["Cells", report.n_cells.toLocaleString("en")],
    ["Values read as", report.input === "counts" ? "raw counts" : "log-normalized"],
    ["Unknown", `${report.unknown.count.toLocaleString("en")} cells (${percent(report.unknown.share)})`],
    ["Model", [modelName(report.model), report.model.version && `v${report.model.version}`, report.model.alias]
      .filter(Boolean).join(" ")],
  ]);
  renderReasons(report);
  renderOverlap(report.gene_overlap);
  renderCounts(report.counts, report.n_cells);
  renderHistogram(report.confidence_histogram, report.threshold);
  renderMap(report.map, report.cells.label, unknownLabel);
  $("cell-search").value = "";
  state.sort = { key: null, direction: 1 };
  filterCells();
  $("results").hidden = false;
}

function renderOverlap(overlap) {
  fillFacts($("overlap"), [
    ["Model genes found", `${overlap.n_matched.toLocaleString("en")} of ${overlap.n_model_genes.toLocaleString("en")}` +
      ` (${percent(overlap.overlap)})`],
    ["Matched by identifier", overlap.identifier],
    ["Genes in the file", overlap.n_input_genes.toLocaleString("en")],
    ["File genes the model ignores", overlap.n_ignored.toLocaleString("en")],
    ["Model genes missing (set to 0)", overlap.n_missing.toLocaleString("en")],
    ["Missing, for example", listText(overlap.missing_examples)],
  ]);
}

function renderCounts(counts, nCells) {
  const rowHeight = 26;
  const labelWidth = 110;
  const barSpace = 250;
  const width = labelWidth + barSpace + 60;
  const height = counts.length * rowHeight + 10;
  const largest = Math.max(1, ...counts.map((row) => row.count));
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "bar chart of cells per predicted type; the same numbers are in the table below",
  });
  counts.forEach((row, index) => {
    const y = 5 + index * rowHeight;
    const length = Math.max(row.count > 0 ? 2 : 0, (barSpace * row.count) / largest);
    chart.appendChild(svg("text", { x: labelWidth - 8, y: y + 17, "text-anchor": "end" }, row.label));
    const bar = svg("rect", { x: labelWidth, y: y + 3, width: length, height: rowHeight - 8, fill: colorOf(row.label),
      class: "bar", "data-label": row.label, "data-count": row.count });
    bar.appendChild(svg("title", {}, `${row.label}: ${row.count} cells`));
    chart.appendChild(bar);
    chart.appendChild(svg("text", { x: labelWidth + length + 6, y: y + 17, class: "bar-count" }, row.count.toLocaleString("en")));
  });
  const holder = $("counts-chart");
  clear(holder);
  holder.appendChild(chart);

  const body = $("counts-table").tBodies[0];
  clear(body);
  for (const row of counts) {
    const tr = el("tr");
    tr.appendChild(el("td", row.label));
    tr.appendChild(el("td", row.count.toLocaleString("en"), "num"));
    tr.appendChild(el("td", percent(nCells ? row.count / nCells : 0), "num"));
    body.appendChild(tr);
  }
}

function renderHistogram(histogram, threshold) {
  const width = 520;
  const height = 240;
  const left = 48;
  const bottom = 34;
  const top = 12;
  const plotWidth = width - left - 12;
  const plotHeight = height - top - bottom;
  const counts = histogram.counts;
  const edges = histogram.edges;
  const largest = Math.max(1, ...counts);
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `histogram of prediction confidence in ${counts.length} bins from 0 to 1`,
  });
  const xOf = (value) => left + plotWidth * value;
  const yOf = (count) => top + plotHeight * (1 - count / largest);
  counts.forEach((count, index) => {
    const x0 = xOf(edges[index]);
    const x1 = xOf(edges[index + 1]);
    const bar = svg("rect", { x: x0 + 1, y: yOf(count), width: Math.max(0, x1 - x0 - 2), height: top + plotHeight - yOf(count),
      fill: edges[index + 1] <= threshold ? UNKNOWN_COLOR : "#2456a6", class: "hist-bar", "data-count": count });
    bar.appendChild(svg("title", {}, `confidence ${edges[index].toFixed(2)}–${edges[index + 1].toFixed(2)}: ${count} cells`));
    chart.appendChild(bar);
  });
  chart.appendChild(svg("line", { x1: left, y1: top + plotHeight, x2: left + plotWidth, y2: top + plotHeight, class: "axis" }));
  chart.appendChild(svg("line", { x1: left, y1: top, x2: left, y2: top + plotHeight, class: "axis" }));
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    chart.appendChild(svg("text", { x: xOf(tick), y: top + plotHeight + 15, "text-anchor": "middle" }, tick));
  }
  chart.appendChild(svg("text", { x: left + plotWidth / 2, y: height - 2, "text-anchor": "middle" }, "confidence"));
  chart.appendChild(svg("text", { x: left - 6, y: top + 10, "text-anchor": "end" }, largest.toLocaleString("en")));
  chart.appendChild(svg("text", { x: left - 6, y: top + plotHeight, "text-anchor": "end" }, 0));
  const tx = xOf(threshold);
  chart.appendChild(svg("line", { x1: tx, y1: top, x2: tx, y2: top + plotHeight, class: "threshold" }));
  const labelRight = threshold > 0.6;
  chart.appendChild(svg("text", { x: labelRight ? tx - 4 : tx + 4, y: top + 12, "text-anchor": labelRight ? "end" : "start" },
    `Unknown (low_confidence) below ${threshold}`));
  const holder = $("histogram");
  clear(holder);
  holder.appendChild(chart);
  const total = counts.reduce((sum, count) => sum + count, 0);
  const sure = counts.reduce((sum, count, index) => sum + (edges[index] >= 0.9 ? count : 0), 0);
  $("histogram-note").textContent =
    `${total.toLocaleString("en")} cells; ${percent(total ? sure / total : 0)} with confidence of 0.9 or more.`;
}

function renderMap(map, labels, unknownLabel) {
  const canvas = $("map");
  const context = canvas.getContext("2d");
  const width = canvas.width;
  const height = canvas.height;
  const pad = 28;
  context.clearRect(0, 0, width, height);
  context.fillStyle = "#ffffff";
  context.fillRect(0, 0, width, height);
  const n = map.x.length;
  canvas.dataset.points = String(n);
  let [minX, maxX, minY, maxY] = [Infinity, -Infinity, Infinity, -Infinity];
  for (let i = 0; i < n; i += 1) {
    minX = Math.min(minX, map.x[i]); maxX = Math.max(maxX, map.x[i]);
    minY = Math.min(minY, map.y[i]); maxY = Math.max(maxY, map.y[i]);
  }
  const spanX = maxX - minX || 1;
  const spanY = maxY - minY || 1;
  const radius = n > 5000 ? 1.3 : n > 1000 ? 2 : 3;
  context.globalAlpha = 0.75;
  // Unknown cells first, so the typed cells are drawn on top of them.
  for (const pass of [true, false]) {
    for (let i = 0; i < n; i += 1) {
      const label = labels[map.cell[i]];
      if ((label === unknownLabel) !== pass) continue;
      const x = pad + ((map.x[i] - minX) / spanX) * (width - 2 * pad);
      const y = height - pad - ((map.y[i] - minY) / spanY) * (height - 2 * pad);
      context.fillStyle = colorOf(label);
      context.beginPath();
      context.arc(x, y, radius, 0, 2 * Math.PI);
      context.fill();
    }
  }
  context.globalAlpha = 1;
  context.fillStyle = "#5b6675";
  context.font = "12px sans-serif";
  const [ex, ey] = map.explained_variance;
  context.fillText(`PC1 (${percent(ex)} of variance)`, pad, height - 8);
  context.save();
  context.translate(14, height - pad);
  context.rotate(-Math.PI / 2);
  context.fillText(`PC2 (${percent(ey)})`, 0, 0);
  context.restore();

  const legend = $("map-legend");
  clear(legend);
  const present = new Map();
  for (let i = 0; i < n; i += 1) {
    const label = labels[map.cell[i]];
    present.set(label, (present.get(label) || 0) + 1);
  }
  for (const [label] of state.colors) {
    if (!present.has(label)) continue;
    const item = el("li");
    const swatch = el("span", null, "swatch");
    swatch.style.backgroundColor = colorOf(label);
    item.appendChild(swatch);
    item.appendChild(el("span", `${label} (${present.get(label).toLocaleString("en")})`));
    legend.appendChild(item);
  }
  const total = labels.length;
  $("map-note").textContent = `${map.method}: ${n.toLocaleString("en")} cells drawn` +
    (map.subsampled ? ` (an even random sample of the ${total.toLocaleString("en")})` : "") +
    "; cells the model finds alike sit close together.";
}

// ----------------------------------------------------------------------------------------------
// Cell table: search and pages
// ----------------------------------------------------------------------------------------------

function reasonOf(index) {
  const reasons = state.report.cells.unknown_reason;
  return reasons ? reasons[index] || "" : "";
}

function noveltyOf(index) {
  const scores = state.report.cells.novelty_score;
  const value = scores ? scores[index] : null;
  return value === null || value === undefined ? null : value;
}

// Cells matching the search box (cell id, type or reason) and the "Show" choice, in the chosen order.
function filterCells() {
  const cells = state.report.cells;
  const needle = $("cell-search").value.trim().toLowerCase();
  const show = $("reason-filter").value;
  const unknownLabel = (state.model && state.model.unknown_label) || "Unknown";
  const matches = [];
  for (let i = 0; i < cells.cell_id.length; i += 1) {
    const reason = reasonOf(i);
    const unknown = cells.label[i] === unknownLabel;
    if (show === "typed" && unknown) continue;
    if (show === "unknown" && !unknown) continue;
    if (show !== "all" && show !== "typed" && show !== "unknown" && reason !== show) continue;
    if (!needle || cells.cell_id[i].toLowerCase().includes(needle) || cells.label[i].toLowerCase().includes(needle) ||
        (reason && reason.toLowerCase().includes(needle))) {
      matches.push(i);
    }
  }
  state.matches = sortCells(matches);
  state.page = 0;
  renderCellPage();
}

const TEXT_ORDER = new Intl.Collator("en", { numeric: true, sensitivity: "base" });

// Sorted copy of ``indices`` by state.sort; missing values (no score, no reason) always last; ties in file order.
function sortCells(indices) {
  const { key, direction } = state.sort;
  if (!key) return indices;
  const cells = state.report.cells;
  let value;
  let compare;
  if (key === "cell_id" || key === "label") {
    value = (i) => cells[key][i];
    compare = (a, b) => TEXT_ORDER.compare(a, b);
  } else if (key === "confidence") {
    value = (i) => cells.confidence[i];
    compare = (a, b) => a - b;
  } else if (key === "novelty_score") {
    value = noveltyOf;
    compare = (a, b) => a - b;
  } else {
    value = (i) => {
      const reason = reasonOf(i);
      if (!reason) return null;
      const rank = REASONS.indexOf(reason);
      return rank < 0 ? REASONS.length : rank;
    };
    compare = (a, b) => a - b;
  }
  return indices.slice().sort((a, b) => {
    const va = value(a);
    const vb = value(b);
    if (va === null && vb === null) return a - b;
    if (va === null) return 1;
    if (vb === null) return -1;
    return direction * compare(va, vb) || a - b;
  });
}

function sortBy(key) {
  if (state.sort.key === key) {
    state.sort.direction = -state.sort.direction;
  } else {
    // Numbers start with the largest (most confident, most novel), words with A.
    state.sort = { key, direction: key === "confidence" || key === "novelty_score" ? -1 : 1 };
  }
  for (const th of $("cells-table").tHead.rows[0].cells) {
    const sorted = th.dataset.key === state.sort.key;
    th.setAttribute("aria-sort", sorted ? (state.sort.direction > 0 ? "ascending" : "descending") : "none");
  }
  state.matches = sortCells(state.matches);
  state.page = 0;
  renderCellPage();
}

function renderCellPage() {
  const cells = state.report.cells;
  const checks = unknownChecks(state.report);
  const limit = noveltyChecked(checks) ? checks.novelty.threshold : null;
  const pages = Math.max(1, Math.ceil(state.matches.length / PAGE_SIZE));
  state.page = Math.min(Math.max(0, state.page), pages - 1);
  const start = state.page * PAGE_SIZE;
  const body = $("cells-table").tBodies[0];
  clear(body);
  for (const index of state.matches.slice(start, start + PAGE_SIZE)) {
    const tr = el("tr");
    tr.appendChild(el("td", cells.cell_id[index]));
    const type = el("td");
    const swatch = el("span", null, "swatch");
    swatch.style.backgroundColor = colorOf(cells.label[index]);
    type.appendChild(swatch);
    type.appendChild(document.createTextNode(` ${cells.label[index]}`));
    tr.appendChild(type);
    tr.appendChild(el("td", cells.confidence[index].toFixed(3), "num"));
    const score = noveltyOf(index);
    const novelty = el("td", formatScore(score), "num novelty");
    if (score === null) {
      novelty.textContent = "—";
      novelty.title = "no novelty score: this model has no novelty check";
    } else if (typeof limit === "number" && score > limit) {
      novelty.classList.add("over");
      novelty.title = `above the model's novelty threshold (${formatScore(limit)})`;
    }
    tr.appendChild(novelty);
    const reason = reasonOf(index);
    const why = el("td", null, "reason");
    if (reason) {
      const tag = el("span", reason, `reason-tag reason-${reason}`);
      tag.title = reasonExplanation(reason, checks);
      why.appendChild(tag);
    }
    tr.appendChild(why);
    body.appendChild(tr);
  }
  $("cells-count").textContent = `${state.matches.length.toLocaleString("en")} of ${cells.cell_id.length.toLocaleString("en")} cells`;
  $("page-info").textContent = `Page ${state.page + 1} of ${pages}`;
  $("page-prev").disabled = state.page === 0;
  $("page-next").disabled = state.page >= pages - 1;
}

// ----------------------------------------------------------------------------------------------
// Wiring
// ----------------------------------------------------------------------------------------------

function wire() {
  const keyInput = $("api-key");
  keyInput.value = apiKey();
  $("key-status").textContent = apiKey() ? "key set for this tab" : "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
    $("key-status").textContent = key ? "key set for this tab" : "";
    loadModel();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    keyInput.value = "";
    $("key-status").textContent = "";
  });

  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) annotateFile(input.files[0]);
    input.value = "";
  });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) annotateFile(file);
  });

  let searchTimer = null;
  $("cell-search").addEventListener("input", (event) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => filterCells(), 150);
  });
  $("reason-filter").addEventListener("change", () => { if (state.report) filterCells(); });
  for (const th of $("cells-table").tHead.rows[0].cells) {
    const button = th.querySelector("button.sort");
    if (button) button.addEventListener("click", () => { if (state.report) sortBy(th.dataset.key); });
  }
  $("page-prev").addEventListener("click", () => { state.page -= 1; renderCellPage(); });
  $("page-next").addEventListener("click", () => { state.page += 1; renderCellPage(); });
  $("download-h5ad").addEventListener("click", () => download("h5ad"));
  $("download-csv").addEventListener("click", () => download("csv"));
  loadModel();
}

document.addEventListener("DOMContentLoaded", wire);
