// cxr-triage worklist page: plain JavaScript, no build step. The token lives in sessionStorage only.
"use strict";

const $ = (sel) => document.querySelector(sel);
const REFRESH_MS = Number(new URLSearchParams(location.search).get("refresh_ms")) || 5000;
const state = {
  token: sessionStorage.getItem("cxr-token"), me: null, study: null, image: null, timer: null, labels: [],
  pendingVerdict: null, listedAt: 0,
};
// The 14 findings in the order of cxr_triage.labels.LABELS (the browser tests check that they match).
const FINDINGS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
  "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
  "Fracture", "Support Devices"];

function say(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    signOut("Your token was not accepted; sign in again.");
    throw new Error("unauthorized");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response;
}

function fmtDuration(seconds) {
  const sign = seconds < 0 ? "−" : "";
  let s = Math.abs(Math.round(seconds));
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  return sign + (h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`);
}

function show(view) {
  for (const id of ["signin-view", "list-view", "study-view", "system-view"]) $(`#${id}`).hidden = id !== view;
}

function applyRole() {
  document.querySelectorAll("[data-role]").forEach((el) => {
    el.hidden = !el.dataset.role.split(" ").includes(state.me.role);
  });
}

async function signIn(token) {
  state.token = token;
  try {
    state.me = await (await api("/me")).json();
  } catch (error) {
    if (error.message !== "unauthorized") say(`Sign-in failed: ${error.message}`, true);
    return;
  }
  sessionStorage.setItem("cxr-token", token);
  $("#who").textContent = `${state.me.name} (${state.me.role})`;
  $("#signout").hidden = false;
  applyRole();
  say("");
  if (state.me.role === "producer") { show("list-view"); $("#worklist").hidden = true; return; }
  await showList();
}

function signOut(message = "") {
  sessionStorage.removeItem("cxr-token");
  Object.assign(state, { token: null, me: null, study: null });
  clearInterval(state.timer);
  $("#who").textContent = "";
  $("#signout").hidden = true;
  $("#system").hidden = true;
  show("signin-view");
  say(message, Boolean(message));
  $("#token").focus();
}

async function showList() {
  state.study = null;
  if (document.fullscreenElement) document.exitFullscreen();
  show("list-view");
  await refreshList();
  clearInterval(state.timer);
  state.timer = setInterval(refreshList, REFRESH_MS);
  const first = $("#worklist tbody tr");
  if (first) first.focus();
}

function worklistQuery() {
  const query = new URLSearchParams({ limit: "100" });
  const tier = $("#tier-filter").value;
  if (tier) query.append("tier", tier);
  const finding = $("#finding-filter").value;
  if (finding) {
    query.append("finding", finding);
    const min = Number($("#finding-min").value);
    if (Number.isFinite(min) && min >= 0 && min <= 1) query.append("min_probability", String(min));
  }
  return query;
}

async function refreshList() {
  if (!state.token || state.study) return;
  let body;
  try {
    body = await (await api(`/worklist?${worklistQuery()}`)).json();
  } catch (error) {
    if (error.message !== "unauthorized") say(`Worklist unavailable: ${error.message}`, true);
    return;
  }
  if (state.study || $("#list-view").hidden) return; // a study was opened while the list was asked for
  replaceRows(body.items);
  $("#total").textContent = `${body.total} unread`;
}

// A refresh must not move the reader: the focused row keeps the focus (or its place, if it left the list)
// and the page keeps its scroll position.
function replaceRows(items) {
  const tbody = $("#worklist tbody");
  const active = document.activeElement;
  const focusedRow = active && active.closest && active.closest("#worklist tbody tr");
  const focusedIndex = focusedRow ? [...tbody.children].indexOf(focusedRow) : -1;
  const scroll = [window.scrollX, window.scrollY];
  state.listedAt = performance.now();
  tbody.replaceChildren(...items.map(rowFor));
  if (focusedRow) {
    const again = tbody.querySelector(`tr[data-study="${CSS.escape(focusedRow.dataset.study)}"]`)
      || tbody.children[Math.min(focusedIndex, tbody.children.length - 1)];
    if (again) again.focus({ preventScroll: true });
  }
  window.scrollTo(...scroll);
}

function rowFor(item) {
  const tr = document.createElement("tr");
  tr.dataset.study = item.study_id;
  tr.tabIndex = 0;
  tr.className = `tier-${item.sla.tier}` + (item.sla.overdue ? " overdue" : "");
  const cells = [
    item.sla.tier, item.priority.toFixed(2), item.sla.effective_priority.toFixed(2), "", "", "",
    item.top_findings.map((f) => `${f.label} ${f.probability.toFixed(2)}`).join(", "),
    item.study_id.slice(0, 16),
  ];
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  // The clocks start from the server's figures and count on between refreshes (tickClocks).
  const [waited, left, reader] = [tr.cells[3], tr.cells[4], tr.cells[5]];
  waited.className = left.className = "num clock";
  waited.dataset.base = String(item.sla.waited_s); waited.dataset.sign = "1";
  left.dataset.base = String(item.sla.time_left_s); left.dataset.sign = "-1";
  if (item.lease) {
    reader.className = "clock";
    reader.dataset.base = String(item.lease.expires_in_s); reader.dataset.sign = "-1";
    reader.dataset.reader = item.lease.radiologist;
  }
  tickRow(tr, 0);
  tr.addEventListener("click", () => openStudy(item.study_id));
  return tr;
}

function tickRow(tr, elapsed) {
  for (const cell of tr.querySelectorAll(".clock")) {
    const seconds = Number(cell.dataset.base) + Number(cell.dataset.sign) * elapsed;
    cell.dataset.seconds = seconds.toFixed(1);
    cell.textContent = cell.dataset.reader
      ? `claimed by ${cell.dataset.reader} · ${fmtDuration(Math.max(seconds, 0))} left` : fmtDuration(seconds);
  }
  if (Number(tr.cells[4].dataset.seconds) < 0) tr.classList.add("overdue");
}

// Every second, between refreshes: the time waited grows, the SLA and lease countdowns run down.
function tickClocks() {
  if ($("#list-view").hidden) return;
  const elapsed = (performance.now() - state.listedAt) / 1000;
  for (const tr of $("#worklist tbody").children) tickRow(tr, elapsed);
}

// ``before``: what the page last said (a saved verdict), kept in front of the claim's own message.
async function claimNext(before = "") {
  say(`${before}Claiming…`);
  try {
    const response = await api("/worklist/claim", { method: "POST" });
    if (response.status === 204) {
      say(`${before}No study is waiting.`);
      if ($("#list-view").hidden) await showList();
      return;
    }
    const study = await response.json();
    say(`${before}Claimed ${study.study_id.slice(0, 16)} until ${new Date(study.lease.expires_at).toLocaleTimeString()}.`);
    await openStudy(study.study_id, study);
  } catch (error) {
    if (error.message !== "unauthorized") say(`${before}Claim failed: ${error.message}`, true);
  }
}

async function openStudy(studyId, known = null) {
  try {
    state.study = known || await (await api(`/studies/${encodeURIComponent(studyId)}`)).json();
  } catch (error) {
    if (error.message !== "unauthorized") say(`Cannot open the study: ${error.message}`, true);
    return;
  }
  const s = state.study;
  show("study-view");
  $("#study-title").textContent = `Study ${s.study_id.slice(0, 24)} — ${s.sla.tier}`;
  const facts = {
    Priority: s.priority.toFixed(3), "Effective priority": s.sla.effective_priority.toFixed(3),
    Model: `${s.model_name} v${s.model_version}`, Waited: fmtDuration(s.sla.waited_s),
    "Time left": fmtDuration(s.sla.time_left_s), Received: new Date(s.received_at).toLocaleString(),
    "Scored in": `${s.scoring_latency_s.toFixed(1)} s`,
    Lease: s.lease ? `${s.lease.radiologist}, ${fmtDuration(s.lease.expires_in_s)} left` : s.status,
  };
  $("#study-facts").replaceChildren(...Object.entries(facts).flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
  $("#top-findings").replaceChildren(...s.top_findings.map((f) => {
    const li = document.createElement("li"); li.textContent = `${f.label}: ${f.probability.toFixed(2)}`; return li;
  }));
  $("#patient-name").textContent = "";
  $("#show-patient").disabled = s.content_type !== "application/dicom";
  $("#show-patient").title = s.content_type === "application/dicom"
    ? "Show who the patient is; every read is audited (p)" : "This study came without a DICOM header";
  fillVerdictForm(s);
  const select = $("#heatmap-finding");
  select.replaceChildren(...Object.keys(s.probabilities).map((label) => new Option(label, label)));
  select.value = s.top_findings.length ? s.top_findings[0].label : "No Finding";
  $("#heatmap-toggle").checked = false;
  $("#heatmap-layer").hidden = true;
  fillImageStrip(s);
  viewer.sizeBox();
  const agree = $("#agree");
  if (!agree.closest("[hidden]")) agree.focus(); else $("#back").focus();
  await selectImage(s.images.find((i) => i.primary) || s.images[0] || null);
}

function fillVerdictForm(s) {
  state.labels = Object.keys(s.probabilities);
  $("#labels tbody").replaceChildren(...state.labels.map((label, i) => {
    const tr = document.createElement("tr");
    const p = s.probabilities[label];
    tr.innerHTML = `<td></td><td>${p.toFixed(2)}</td>` +
      `<td><input type="checkbox" class="present" id="present-${i}"></td>` +
      `<td><input type="checkbox" class="uncertain" id="uncertain-${i}"></td>`;
    tr.firstChild.textContent = label;
    tr.querySelector(".present").checked = p >= 0.5;
    tr.querySelector(".present").dataset.model = String(p >= 0.5);
    tr.querySelector(".present").setAttribute("aria-label", `${label} present`);
    tr.querySelector(".uncertain").setAttribute("aria-label", `${label} uncertain`);
    return tr;
  }));
  $("#note").value = "";
}

// Everything else on the page knows the study by pseudonyms; the name is fetched only when asked (audited).
async function showPatient() {
  const s = state.study;
  if (!s || $("#show-patient").disabled || $("#patient").closest("[hidden]")) return;
  try {
    const p = await (await api(`/studies/${encodeURIComponent(s.study_id)}/patient`)).json();
    const born = p.birth_date ? `, born ${p.birth_date.slice(0, 4)}-${p.birth_date.slice(4, 6)}-${p.birth_date.slice(6, 8)}` : "";
    $("#patient-name").textContent = `${(p.patient_name || "(no name)").replaceAll("^", " ")}${born}` +
      (p.patient_id ? ` · ID ${p.patient_id}` : "") + (p.accession_number ? ` · Acc. ${p.accession_number}` : "");
  } catch (error) {
    if (error.message !== "unauthorized") say(`Cannot show the patient: ${error.message}`, true);
  }
}

// A study's images (PA, lateral, repeats): one button each; the study opens on its most urgent image.
function fillImageStrip(s) {
  $("#image-strip").hidden = s.images.length < 2;
  $("#image-strip").replaceChildren(...s.images.map((image, n) => {
    const b = document.createElement("button");
    b.type = "button";
    b.setAttribute("role", "tab");
    b.dataset.image = image.image_id;
    b.textContent = `${n + 1}. ${image.view}` + (image.scored ? ` · ${image.priority.toFixed(2)}` : " · not read")
      + (image.flags.length ? " ⚑" : "");
    b.title = (image.scored ? `Priority ${image.priority.toFixed(3)} (model v${image.model_version})`
      : "The model does not read this view") + (image.flags.length ? ` · ${image.flags.join(", ")}` : "");
    b.addEventListener("click", () => selectImage(image));
    return b;
  }));
}

async function selectImage(image) {
  const s = state.study;
  state.image = image;
  for (const b of $("#image-strip").children) b.setAttribute("aria-selected", String(b.dataset.image === image?.image_id));
  const maps = image ? image.heatmap_available : s.heatmap_available;
  $("#heatmap-toggle").disabled = !maps;
  if (!maps) $("#heatmap-toggle").checked = false;
  const read = maps ? "" : image && !image.scored
    ? `${image.view}: shown, not read by the model.` : "No activation maps for this image.";
  // What the header says and the model cannot judge (e.g. a body part other than the chest).
  const flags = image?.flags.length ? `Flagged: ${image.flags.map(flagText).join(", ")}.` : "";
  $("#image-note").textContent = [read, flags].filter(Boolean).join(" ");
  await loadImage();
}

function flagText(flag) {
  const [kind, value] = flag.split(":");
  return kind === "body_part" ? `body part ${value}, not chest` : flag;
}

function nextImage() {
  const images = state.study.images;
  if (images.length < 2) return;
  const at = images.findIndex((i) => i.image_id === state.image?.image_id);
  selectImage(images[(at + 1) % images.length]);
}

function imageBase() {
  const s = state.study;
  return state.image
    ? `/studies/${encodeURIComponent(s.study_id)}/images/${encodeURIComponent(state.image.image_id)}`
    : `/studies/${encodeURIComponent(s.study_id)}`;
}

// The image at its full stored resolution (the server renders it once and caches it), then its heatmap layer.
async function loadImage() {
  const studyId = state.study.study_id;
  viewer.clear();
  $("#heatmap-layer").hidden = true; // the last image's map must never lie over this one
  try {
    const blob = await (await api(`${imageBase()}/full`)).blob();
    if (state.study?.study_id !== studyId) return;
    await viewer.load(URL.createObjectURL(blob));
  } catch (error) {
    if (error.message !== "unauthorized") $("#image-note").textContent = `Image unavailable: ${error.message}`;
  }
  await loadHeatmap();
}

// The class-activation map alone (transparent where the model saw nothing), laid over the image by the page.
async function loadHeatmap() {
  const layer = $("#heatmap-layer");
  if (!$("#heatmap-toggle").checked) { layer.hidden = true; return; }
  const finding = $("#heatmap-finding").value;
  try {
    const blob = await (await api(`${imageBase()}/cam?finding=${encodeURIComponent(finding)}`)).blob();
    if (layer.src.startsWith("blob:")) URL.revokeObjectURL(layer.src);
    layer.src = URL.createObjectURL(blob);
    await layer.decode();
    viewer.layerSize();
    layer.hidden = !$("#heatmap-toggle").checked;
  } catch (error) {
    if (error.message !== "unauthorized") $("#image-note").textContent = `Heatmap unavailable: ${error.message}`;
  }
}

function setOpacity(percent) {
  const value = Math.min(100, Math.max(0, percent));
  $("#heatmap-opacity").value = String(value);
  $("#heatmap-layer").style.opacity = String(value / 100);
  $("#heatmap-opacity-value").textContent = `${value} %`;
}

function toggleHeatmap() {
  if ($("#heatmap-toggle").disabled) return;
  $("#heatmap-toggle").checked = !$("#heatmap-toggle").checked;
  loadHeatmap();
}

// Whether the reader changed the pre-filled findings (a mark, an uncertain box or a note).
function formEdited() {
  return [...document.querySelectorAll("#labels .present")].some((box) => String(box.checked) !== box.dataset.model)
    || [...document.querySelectorAll("#labels .uncertain")].some((box) => box.checked)
    || Boolean($("#note").value);
}

// ``next``: claim and open the next study once this verdict is saved, instead of going back to the list.
async function submitVerdict(agreed, next = false) {
  const s = state.study;
  const rows = [...$("#labels tbody").children];
  const labels = {};
  const uncertain = [];
  rows.forEach((tr, i) => {
    const label = state.labels[i];
    labels[label] = agreed ? (s.probabilities[label] >= 0.5 ? 1 : 0) : (tr.querySelector(".present").checked ? 1 : 0);
    if (!agreed && tr.querySelector(".uncertain").checked) uncertain.push(label);
  });
  const body = {
    labels, uncertain, note: $("#note").value || null, agreed_with_model: agreed,
    model_version_seen: s.model_version,
  };
  // One Idempotency-Key per submission: a retry of the same submission (ours below, or the user pressing
  // save again after a failure) reuses it, so the server answers it instead of recording it twice.
  const text = JSON.stringify(body);
  const pending = state.pendingVerdict;
  const key = pending && pending.studyId === s.study_id && pending.body === text ? pending.key : newKey();
  state.pendingVerdict = { studyId: s.study_id, body: text, key };
  say("Saving verdict…");
  try {
    const verdict = await (await postVerdict(s.study_id, text, key)).json();
    state.pendingVerdict = null;
    const saved = `Verdict saved (${verdict.kind}${verdict.replayed ? ", already recorded" : ""}).`;
    say(saved);
    if (next) await claimNext(`${saved} `); else await showList();
  } catch (error) {
    if (error.message !== "unauthorized") say(`Verdict not saved: ${error.message}`, true);
  }
}

const VERDICT_TRIES = 3;

// A lost connection or a 503 (Kafka or Redis unavailable) may hide a verdict that was saved: try again with
// the same key, which is safe. Other refusals are final.
async function postVerdict(studyId, text, key) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await api(`/studies/${encodeURIComponent(studyId)}/verdict`, {
        method: "POST", headers: { "Content-Type": "application/json", "Idempotency-Key": key }, body: text,
      });
    } catch (error) {
      const retriable = error.status === undefined ? error.message !== "unauthorized" : error.status === 503;
      if (!retriable || attempt >= VERDICT_TRIES) throw error;
      say(`Saving verdict… (retry ${attempt})`);
      await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
    }
  }
}

// crypto.randomUUID exists only in secure contexts (https, localhost); random bytes exist everywhere.
function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

async function release() {
  try {
    await api(`/studies/${encodeURIComponent(state.study.study_id)}/release`, { method: "POST" });
    say("Study released to the worklist.");
    await showList();
  } catch (error) {
    if (error.message !== "unauthorized") say(`Release failed: ${error.message}`, true);
  }
}

async function upload(event) {
  event.preventDefault();
  const file = $("#upload-file").files[0];
  if (!file) { say("Choose a file first.", true); return; }
  say("Uploading…");
  try {
    const result = await (await api("/studies", {
      method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file,
    })).json();
    say(`Uploaded as study ${result.study_id.slice(0, 16)}; it appears once scored.`);
  } catch (error) {
    if (error.message !== "unauthorized") say(`Upload refused: ${error.message}`, true);
  }
}

// The system view: every dashboard panel as a small table (series -> latest value), and the alerts.
function fmtValue(value, unit) {
  if (value === null) return "n/a";
  if (unit === "s") return value >= 60 ? fmtDuration(value) : `${value.toFixed(2)} s`;
  if (unit === "percentunit") return `${(100 * value).toFixed(1)} %`;
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

function seriesName(labels) {
  const shown = Object.entries(labels).filter(([k]) => k !== "__name__");
  return shown.length ? shown.map(([k, v]) => `${k}=${v}`).join(", ") : "(all)";
}

function panelFor(panel) {
  const table = document.createElement("table");
  table.className = "panel";
  const caption = table.createCaption();
  caption.textContent = panel.title;
  const body = table.createTBody();
  const rows = panel.error ? [["query refused", panel.error]]
    : panel.series.length ? panel.series.map((s) => [seriesName(s.labels), fmtValue(s.value, panel.unit)])
    : [["no data yet", ""]];
  for (const [name, value] of rows) {
    const tr = body.insertRow();
    tr.insertCell().textContent = name;
    tr.insertCell().textContent = value;
  }
  return table;
}

async function refreshSystem() {
  if ($("#system-view").hidden) return;
  let body;
  try {
    body = await (await api("/system")).json();
  } catch (error) {
    if (error.message !== "unauthorized") say(`System figures unavailable: ${error.message}`, true);
    return;
  }
  say("");
  $("#system-time").textContent = `at ${new Date(body.evaluated_at).toLocaleTimeString()}`;
  const alerts = body.alerts.map((a) => {
    const li = document.createElement("li");
    li.className = `alert-${a.severity}`;
    li.textContent = `${a.name} (${a.severity}, ${a.state}): ${a.summary}`;
    return li;
  });
  if (!alerts.length) alerts.push(Object.assign(document.createElement("li"), { textContent: "none pending or firing" }));
  $("#system-alerts").replaceChildren(...alerts);
  $("#system-dashboards").replaceChildren(...body.dashboards.map((d) => {
    const section = document.createElement("section");
    const heading = document.createElement("h3");
    heading.textContent = d.title;
    const grid = document.createElement("div");
    grid.className = "panels";
    grid.replaceChildren(...d.panels.map(panelFor));
    section.replaceChildren(heading, grid);
    return section;
  }));
}

async function showSystem() {
  state.study = null;
  show("system-view");
  $("#system-back").focus();
  clearInterval(state.timer);
  await refreshSystem();
  state.timer = setInterval(refreshSystem, REFRESH_MS);
}

// Save (agree, or the reader's findings once edited) and go on to the next study.
function saveAndNext() {
  if ($("#verdict-form").hidden) return;
  submitVerdict(!formEdited(), true);
}

// In the findings table: up and down move between findings (same column), u marks the row uncertain, Enter
// submits the findings as edited. True when the key was one of these.
function onFindingsKey(event) {
  const box = event.target;
  const tr = box.closest("#labels tbody tr");
  if (!tr) return false;
  const column = box.classList.contains("uncertain") ? ".uncertain" : ".present";
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    const other = event.key === "ArrowDown" ? tr.nextElementSibling : tr.previousElementSibling;
    if (other) other.querySelector(column).focus();
  } else if (event.key === "u") {
    tr.querySelector(".uncertain").click();
  } else if (event.key === "Enter") {
    submitVerdict(false);
  } else return false;
  event.preventDefault();
  return true;
}

function editFindings() {
  if ($("#verdict-form").hidden) return;
  $("#labels .present").focus();
}

// The viewer's keys, anywhere in the study view (arrows only when the image has the focus).
function onViewerKey(event) {
  const key = event.key;
  if (key === "+" || key === "=") viewer.zoomCentre(1.25);
  else if (key === "-" || key === "_") viewer.zoomCentre(0.8);
  else if (key === "0") viewer.reset();
  else if (key === "v") viewer.toggleInvert();
  else if (key === "w") viewer.toggleWlMode();
  else if (key === "f") viewer.toggleFullscreen();
  else if (key >= "1" && key <= "9" && key.length === 1) viewer.presetByNumber(Number(key));
  else if (key === "[" || key === "]") setOpacity(Number($("#heatmap-opacity").value) + (key === "]" ? 10 : -10));
  else if (key.startsWith("Arrow") && event.target.id === "viewer") viewer.onArrow(key);
  else return false;
  event.preventDefault();
  return true;
}

function onKey(event) {
  if (!state.me || event.altKey || event.ctrlKey || event.metaKey) return;
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName)
    && !["checkbox", "range"].includes(event.target.type);
  if (typing) return;
  const inList = !$("#list-view").hidden;
  const inStudy = !$("#study-view").hidden;
  if (inStudy && event.target.closest && event.target.closest("#labels") && onFindingsKey(event)) return;
  if (inStudy && event.target.type === "range" && event.key.startsWith("Arrow")) return; // the slider's own
  if (inStudy && onViewerKey(event)) return;
  const row = event.target.closest && event.target.closest("#worklist tbody tr");
  if (inList && (event.key === "c" || event.key === "n") && !$("#claim").hidden) { event.preventDefault(); claimNext(); }
  else if (inList && row && event.key === "Enter") { event.preventDefault(); openStudy(row.dataset.study); }
  else if (inList && row && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
    event.preventDefault();
    const next = event.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling;
    if (next) next.focus();
  }
  else if (inStudy && event.key === "Escape") { event.preventDefault(); showList(); }
  else if (!$("#system-view").hidden && event.key === "Escape") { event.preventDefault(); showList(); }
  else if (inStudy && event.key === "a" && !$("#verdict-form").hidden) { event.preventDefault(); submitVerdict(true); }
  else if (inStudy && event.key === "n") { event.preventDefault(); saveAndNext(); }
  else if (inStudy && event.key === "e") { event.preventDefault(); editFindings(); }
  else if (inStudy && event.key === "r" && !$("#release").hidden) { event.preventDefault(); release(); }
  else if (inStudy && event.key === "p") showPatient();
  else if (inStudy && event.key === "i") { event.preventDefault(); nextImage(); }
  else if (inStudy && event.key === "h") { event.preventDefault(); toggleHeatmap(); }
}

document.addEventListener("DOMContentLoaded", () => {
  viewer.init();
  $("#finding-filter").append(...FINDINGS.map((label) => new Option(label, label)));
  $("#finding-filter").addEventListener("change", refreshList);
  $("#finding-min").addEventListener("change", refreshList);
  setInterval(tickClocks, 1000);
  $("#zoom-in").addEventListener("click", () => viewer.zoomCentre(1.25));
  $("#zoom-out").addEventListener("click", () => viewer.zoomCentre(0.8));
  $("#reset-view").addEventListener("click", () => viewer.reset());
  $("#wl-mode").addEventListener("click", () => viewer.toggleWlMode());
  $("#invert").addEventListener("click", () => viewer.toggleInvert());
  $("#fullscreen").addEventListener("click", () => viewer.toggleFullscreen());
  $("#heatmap-opacity").addEventListener("input", () => setOpacity(Number($("#heatmap-opacity").value)));
  $("#save-next").addEventListener("click", saveAndNext);
  setOpacity(50);
  $("#signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("#token").value.trim()); });
  $("#signout").addEventListener("click", () => signOut());
  $("#claim").addEventListener("click", claimNext);
  $("#tier-filter").addEventListener("change", refreshList);
  $("#back").addEventListener("click", showList);
  $("#system").addEventListener("click", showSystem);
  $("#system-back").addEventListener("click", showList);
  $("#release").addEventListener("click", release);
  $("#agree").addEventListener("click", () => submitVerdict(true));
  $("#verdict-form").addEventListener("submit", (e) => { e.preventDefault(); submitVerdict(false); });
  $("#show-patient").addEventListener("click", showPatient);
  $("#heatmap-toggle").addEventListener("change", loadHeatmap);
  $("#heatmap-finding").addEventListener("change", loadHeatmap);
  $("#upload-form").addEventListener("submit", upload);
  document.addEventListener("keydown", onKey);
  if (state.token) signIn(state.token); else show("signin-view");
});
