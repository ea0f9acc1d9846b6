// hst review: keyboard-driven accept / reject / unknown of suggested labels. Every decision is sent to the
// server at once (it writes the manifest and the decision log); this page keeps no state of its own. With the
// loop on, the server re-ranks the questions after every round of answers: the page polls which model ranks it
// and takes the new order when the version changes.
"use strict";

const S = { I: 0, C: 1, V: 2, CONF: 3, P: 4, TAU: 5, IST: 6, IST_VOTE: 7, CST: 8, CST_VOTE: 9, SCORE: 10, RANK: 11 };
const ACTION_KEYS = { a: "accept", r: "reject", u: "unknown" };
const view = {
  state: null,
  decisions: new Map(),  // "i,c" -> {action, value}
  groups: [],            // filtered suggestions grouped by image, in review order
  group: 0,
  pos: 0,
  progress: null,
  chain: Promise.resolve(),  // key presses run one after the other, each on the cursor its predecessor left
  version: null,         // the model version that ranked view.state (loop only)
  reranking: false,
};
const POLL_MS = 1000;

const $ = (id) => document.getElementById(id);
const key = (s) => `${s[S.I]},${s[S.C]}`;
const fmt = (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(2));

function status(text, error = false) {
  const el = $("status");
  el.textContent = text;
  el.className = error ? "error" : "";
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// Same order as hst.review.session.order, on the filtered subset: images by their first entry, each entry's place
// (its entry rank, sent by the server) deciding. With the loop, the ranking is entry by entry: consecutive entries
// of one image form a group, and an image may come back later.
function buildGroups() {
  const cls = Number($("filter-class").value);
  const lo = Number($("filter-min").value) || 0.5;
  const hi = Number($("filter-max").value) || 1;
  const kept = view.state.suggestions.filter((s) =>
    (cls < 0 || s[S.C] === cls) && s[S.CONF] >= lo - 1e-9 && s[S.CONF] <= hi + 1e-9);
  if (view.state.loop) {
    view.groups = [];
    for (const s of kept) {
      const last = view.groups[view.groups.length - 1];
      if (last && last[0][S.I] === s[S.I]) last.push(s); else view.groups.push([s]);
    }
    return;
  }
  const byImage = new Map();
  for (const s of kept) {
    if (!byImage.has(s[S.I])) byImage.set(s[S.I], []);
    byImage.get(s[S.I]).push(s);
  }
  // each image's entries came in server order, so its first one has its lowest rank
  view.groups = [...byImage.values()].sort((a, b) => a[0][S.RANK] - b[0][S.RANK]);
}

function flatIndex() { return view.groups.slice(0, view.group).reduce((n, g) => n + g.length, 0) + view.pos; }
function flatCount() { return view.groups.reduce((n, g) => n + g.length, 0); }
function at(flat) {
  for (let g = 0; g < view.groups.length; g++) {
    if (flat < view.groups[g].length) return [g, flat];
    flat -= view.groups[g].length;
  }
  return null;
}
function current() { const g = view.groups[view.group]; return g ? g[view.pos] : null; }

// The first undecided suggestion from flat position `start` on (wrapping); stays put when all are decided.
function seekUndecided(start) {
  const total = flatCount();
  for (let k = 0; k < total; k++) {
    const place = at((start + k) % total);
    const s = view.groups[place[0]][place[1]];
    if (!view.decisions.has(key(s))) { [view.group, view.pos] = place; return true; }
  }
  return false;
}

function moveTo(i, c) {
  for (let g = 0; g < view.groups.length; g++) {
    const p = view.groups[g].findIndex((s) => s[S.I] === i && s[S.C] === c);
    if (p >= 0) { view.group = g; view.pos = p; return; }
  }
}

function renderProgress(progress) {
  view.progress = progress;
  const c = progress.counts;
  let inFilter = 0;
  for (const g of view.groups) for (const s of g) if (view.decisions.has(key(s))) inFilter++;
  $("progress").textContent =
    `decided ${progress.decided} / ${progress.total} · accepted ${c.accept} · rejected ${c.reject} · ` +
    `unknown ${c.unknown} · in filter ${inFilter} / ${flatCount()}`;
  document.body.dataset.decided = String(progress.decided);
}

// The loop: which model ranked the order shown, the next update, a failed one (the previous model still ranks).
function renderLoop(loop) {
  if (!loop) return;
  const shown = view.version === null ? loop.version : view.version;
  let text = `model v${shown}, trained on ${loop.learnt} answers · ${loop.policy} questions first`;
  if (loop.updating) text += " · updating: learning the answers so far…";
  else text += ` · next update after ${loop.next_in} more answers`;
  if (loop.error) text += ` · update failed: ${loop.error} (model v${loop.version} keeps ranking)`;
  const el = $("model");
  el.textContent = text;
  el.className = loop.error ? "error" : "";
  document.body.dataset.version = String(shown);
  document.body.dataset.updating = loop.updating ? "1" : "";
  document.body.dataset.updateError = loop.error || "";
  if (loop.version !== null && loop.version !== view.version && !view.reranking) {
    view.reranking = true;  // one reload per new version, queued behind the key presses already made
    view.chain = view.chain.then(rerank).catch((error) => status(`could not re-rank: ${error.message}`, true))
      .finally(() => { view.reranking = false; });
  }
}

// A new model ranked the open questions: take its order and go to the question it wants answered first.
async function rerank() {
  const before = view.version;
  view.state = await api("api/state");
  view.decisions.clear();
  for (const [i, c, action, value] of view.state.decisions) view.decisions.set(`${i},${c}`, { action, value });
  view.version = view.state.loop.version;
  buildGroups();
  view.group = 0; view.pos = 0;
  seekUndecided(0);
  renderProgress(view.state.progress);
  render();
  renderLoop(view.state.loop);
  if (before !== null) status(`re-ranked by model v${view.version}`);
}

async function poll() {
  try {
    renderLoop(await api("api/loop"));
  } catch (error) {
    status(`no answer from the server: ${error.message} (is hst review still running?)`, true);
  }
  setTimeout(poll, POLL_MS);
}

// --precision: the class's rule for one polarity (+1 present, -1 absent), or null when not asked for
function rule(c, sign) {
  const found = view.state.promise.classes[c];
  return sign === 1 ? found.positive : found.negative;
}

function ruleText(found, sign) {
  if (!found) return "";
  const word = sign === 1 ? "present" : "absent";
  if (found.threshold === null) return `${word}: refused`;  // the reason is in the promise's table
  return `${word} if ${sign === 1 ? "≥" : "≤"} ${fmt(found.threshold)}`;
}

function calibratedEvidence(s) {
  const score = `score ${fmt(s[S.SCORE])}`;
  if (s[S.V] !== 0) return `${score} ${s[S.V] === 1 ? "≥" : "≤"} ${fmt(rule(s[S.C], s[S.V]).threshold)}`;
  const rules = [1, -1].map((sign) => ruleText(rule(s[S.C], sign), sign)).filter(Boolean);
  return [score, ...rules].join(" · ");
}

function evidence(s) {
  if (view.state.promise) return calibratedEvidence(s);
  const p3 = (x) => Number(x).toFixed(3);  // p and τ can agree to two decimals on either side
  const parts = [`p ${p3(s[S.P])} ${s[S.P] >= s[S.TAU] ? "≥" : "<"} τ ${p3(s[S.TAU])}`];
  for (const [name, score, vote] of [["IST", s[S.IST], s[S.IST_VOTE]], ["CST", s[S.CST], s[S.CST_VOTE]]]) {
    if (score === null) continue;
    // IST and CST only ever vote "present" (as HST's pseudo labels); no vote is no evidence either way
    const says = vote ? " <span class='yes' title='score above the learned threshold: votes present'>▲</span>" : "";
    parts.push(`${name} ${fmt(score)}${says}`);
  }
  return parts.join(" · ");
}

function decisionText(d, s) {
  if (!d) return "";
  if (d.action === "unknown") return "unknown";
  if (s[S.V] === 0) return `marked ${d.value === 1 ? "present" : "absent"}`;
  return `${d.action === "accept" ? "accepted" : "rejected"} → ${d.value === 1 ? "present" : "absent"}`;
}

function suggestionCell(s) {
  if (s[S.V] === 0) return `<span class='sug-none'>no suggestion at ${view.state.promise.precision}</span>`;
  return `<span class='${s[S.V] === 1 ? "sug-pos" : "sug-neg"}'>${s[S.V] === 1 ? "present" : "absent"}</span>`;
}

function confidenceCell(s) {
  if (s[S.V] === 0) return "–";
  const bar = `<span class='bar'><span data-w='${Math.round(100 * (s[S.CONF] - 0.5) / 0.5)}'></span></span>`;
  if (!view.state.promise) return `${bar}${fmt(s[S.CONF])}`;
  // the precision the class's threshold measured on known entries: correct of those past it
  const found = rule(s[S.C], s[S.V]);
  return `${bar}${fmt(s[S.CONF])} <span class='hint'>(${found.correct} of ${found.known})</span>`;
}

// --precision: the promise, stated once above the suggestions and per class in a table under it.
function renderPromise() {
  const promise = view.state.promise;
  const box = $("promise");
  box.hidden = !promise;
  if (!promise) return;
  const count = (key) => promise.classes.filter((c) => c[key] && c[key].threshold !== null).length;
  const both = Boolean(promise.classes[0] && promise.classes[0].negative);  // false: --positives-only
  const asked = both ? "present labels, and separately its absent ones," : "present labels";
  $("promise-summary").textContent =
    `Promise: each suggestion comes from a rule calibrated per class so that its ${asked} are at least ` +
    `${promise.precision} precise (a lower bound, measured on the known labels of ${promise.calibrated_on}; never ` +
    `on this review's decisions). Calibrated for present: ${count("positive")} of ${promise.classes.length} ` +
    `classes` + (both ? `; for absent: ${count("negative")}` : "") +
    `. ${promise.unsuggested} entries have no suggestion at ${promise.precision} and come last.`;
  $("promise-note").textContent = promise.note ? `warning: ${promise.note}` : "";
  const tbody = $("promise-table").tBodies[0];
  tbody.textContent = "";
  const cell = (found, sign) => {
    if (!found) return "—";
    if (found.threshold === null) return `refused: ${found.reason}`;
    const p = found.known ? (100 * found.correct / found.known).toFixed(1) : "–";
    return `score ${sign === 1 ? "≥" : "≤"} ${fmt(found.threshold)}: ${found.correct} of ${found.known} known ` +
      `correct (${p}%) · ${found.suggested} suggested`;
  };
  for (const found of promise.classes) {
    const tr = document.createElement("tr");
    for (const [text, refused] of [
      [found.name, false],
      [cell(found.positive, 1), Boolean(found.positive && found.positive.threshold === null)],
      [cell(found.negative, -1), Boolean(found.negative && found.negative.threshold === null)],
    ]) {
      const td = document.createElement("td");
      td.textContent = text;
      if (refused) td.className = "refused";
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
}

function render() {
  const names = view.state.classes;
  const group = view.groups[view.group];
  const tbody = $("suggestions").tBodies[0];
  tbody.textContent = "";
  $("empty").hidden = Boolean(group);
  if (!group) {
    $("photo").removeAttribute("src");
    $("image-name").textContent = "";
    $("known").textContent = "";
    $("image-position").textContent = "";
    document.body.dataset.current = "";
    return;
  }
  const row = group[0][S.I];
  const photo = $("photo");
  if (photo.dataset.row !== String(row)) {
    photo.src = `image/${row}`;
    photo.dataset.row = String(row);
    photo.alt = view.state.images[row];
  }
  $("image-name").textContent = view.state.images[row];
  $("image-position").textContent =
    `image ${view.group + 1} of ${view.groups.length} in this filter · row ${row + 1} of the manifest`;
  const known = $("known");
  known.textContent = "";
  const labels = view.state.known[row];
  if (!labels.length) known.innerHTML = "<span class='none'>none</span>";
  for (const [c, v] of labels) {
    const chip = document.createElement("span");
    chip.className = `chip ${v === 1 ? "pos" : "neg"}`;
    chip.textContent = `${v === 1 ? "+" : "−"} ${names[c]}`;
    known.appendChild(chip);
  }
  group.forEach((s, p) => {
    const d = view.decisions.get(key(s));
    const tr = document.createElement("tr");
    tr.dataset.image = String(s[S.I]);
    tr.dataset.label = names[s[S.C]];
    tr.className = [p === view.pos ? "current" : "", d ? d.action : ""].join(" ").trim();
    const cells = [
      names[s[S.C]],
      suggestionCell(s),
      confidenceCell(s),
      `<span class='ev'>${evidence(s)}</span>`,
      decisionText(d, s),
    ];
    cells.forEach((html, k) => {
      const td = document.createElement("td");
      if (k === 0) td.textContent = html; else td.innerHTML = html;
      if (k === 4) td.className = "decision";
      tr.appendChild(td);
    });
    // the page's CSP forbids inline style attributes; the CSSOM is allowed
    for (const bar of tr.querySelectorAll("span[data-w]")) bar.style.width = `${bar.dataset.w}%`;
    tr.addEventListener("click", () => { view.pos = p; render(); });
    tbody.appendChild(tr);
  });
  const cur = tbody.querySelector("tr.current");
  if (cur) cur.scrollIntoView({ block: "nearest" });
  const s = current();
  document.body.dataset.current = s ? `${view.state.images[s[S.I]]}|${names[s[S.C]]}` : "";
}

async function decide(action) {
  const s = current();
  if (!s) return;
  const here = flatIndex();
  const result = await api("api/decide", { image: s[S.I], label: s[S.C], action });
  view.decisions.set(key(s), { action: result.action, value: result.value });
  const more = seekUndecided(here + 1);
  renderProgress(result);
  render();
  renderLoop(result.loop);
  status(`saved: ${view.state.classes[s[S.C]]} ${action}` + (more ? "" : " · every suggestion in this filter is decided"));
}

async function undo() {
  const result = await api("api/undo", {});
  if (result.image === null) { status("nothing to undo"); return; }
  const k = `${result.image},${result.label}`;
  if (result.action) view.decisions.set(k, { action: result.action, value: result.value });
  else view.decisions.delete(k);
  moveTo(result.image, result.label);
  renderProgress(result);
  render();
  renderLoop(result.loop);
  status(`undone: ${view.state.classes[result.label]}`);
}

function step(delta) {
  const total = flatCount();
  if (!total) return;
  const place = at(Math.min(total - 1, Math.max(0, flatIndex() + delta)));
  [view.group, view.pos] = place;
  render();
}

function jumpImage(delta) {
  if (!view.groups.length) return;
  view.group = Math.min(view.groups.length - 1, Math.max(0, view.group + delta));
  const g = view.groups[view.group];
  const open = g.findIndex((s) => !view.decisions.has(key(s)));
  view.pos = open >= 0 ? open : 0;
  render();
}

function onKey(event) {
  if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const k = event.key.toLowerCase();
  let job = null;
  if (k in ACTION_KEYS) job = () => decide(ACTION_KEYS[k]);
  else if (k === "z") job = undo;
  else if (k === "j" || k === "arrowdown") job = () => step(1);
  else if (k === "k" || k === "arrowup") job = () => step(-1);
  else if (k === "n" || k === "arrowright") job = () => jumpImage(1);
  else if (k === "p" || k === "arrowleft") job = () => jumpImage(-1);
  if (!job) return;
  event.preventDefault();
  document.body.dataset.busy = "1";
  view.chain = view.chain
    .then(job)
    .catch((error) => status(`not saved: ${error.message} (is hst review still running?)`, true))
    .finally(() => { document.body.dataset.busy = ""; });
}

function refilter() {
  const s = current();
  buildGroups();
  view.group = 0; view.pos = 0;
  if (s) moveTo(s[S.I], s[S.C]);
  if (!current() || view.decisions.has(key(current()))) seekUndecided(flatIndex());
  renderProgress(view.progress);
  render();
}

async function main() {
  view.state = await api("api/state");
  for (const [i, c, action, value] of view.state.decisions) view.decisions.set(`${i},${c}`, { action, value });
  const select = $("filter-class");
  view.state.classes.forEach((name, c) => {
    const option = document.createElement("option");
    option.value = String(c);
    option.textContent = name;
    select.appendChild(option);
  });
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  for (const id of ["filter-class", "filter-min", "filter-max"]) $(id).addEventListener("change", refilter);
  if (view.state.promise) {
    $("order-hint").textContent =
      `(least precise class first, nearest its threshold first; no suggestion at ${view.state.promise.precision} last)`;
    $("evidence-head").textContent = "evidence: score against the class's thresholds";
    $("evidence-head").title = "the cross-fitted score hst complete --precision calibrates: an entry is filled " +
      "where it passes its class's threshold";
    $("no-suggestion-keys").hidden = false;
  }
  if (view.state.loop) {
    view.version = view.state.loop.version;
    $("order-hint").textContent = `(most wanted first by the model's ${view.state.loop.policy} policy; ` +
      `re-ranked after every ${view.state.loop.round_size} answers)`;
  }
  renderPromise();
  buildGroups();
  seekUndecided(0);  // resume: the first suggestion nobody decided yet
  renderProgress(view.state.progress);
  render();
  renderLoop(view.state.loop);
  document.addEventListener("keydown", onKey);
  status(`evidence: ${view.state.evidence.join(" + ")} · saving to ${view.state.output}`);
  document.body.dataset.ready = "1";
  if (view.state.loop) setTimeout(poll, POLL_MS);
}

main().catch((error) => status(`could not load: ${error.message}`, true));
