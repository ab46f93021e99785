// specsearch web page: calls the /v1 API of the server that served this page.
"use strict";

const $ = sel => document.querySelector(sel);
const fmt = (v, digits) => (v === null || v === undefined || !Number.isFinite(v)) ? "" :
  v.toFixed(digits);

// ---------------------------------------------------------------- API key and requests
function apiKey() { return localStorage.getItem("specsearch-api-key") || ""; }

function initKey() {
  const box = $("#api-key");
  if (!box) return;
  box.value = apiKey();
  box.addEventListener("change", () => localStorage.setItem("specsearch-api-key", box.value));
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey()) headers["X-API-Key"] = apiKey();
  const resp = await fetch(path, Object.assign({}, options, {headers}));
  let body = null;
  // Gaia source_ids exceed 2^53: keep every *source_id integer as a string so it is exact.
  const text = await resp.text();
  try { body = JSON.parse(text.replace(/("[a-z_]*source_id"\s*:\s*)(-?\d{16,})/g, '$1"$2"')); }
  catch (e) { body = null; }
  if (!resp.ok) {
    let msg = body && (body.message || body.detail) || resp.statusText;
    if (Array.isArray(msg)) msg = msg.map(d => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    throw new Error(`${resp.status}: ${msg}`);
  }
  return body;
}

function splitFilters(text) {
  return text.split(/[;\n]/).map(s => s.trim()).filter(Boolean);
}

function showError(err) { $("#error").textContent = err ? String(err.message || err) : ""; }

// ---------------------------------------------------------------- search page
function parsePasted(text) {
  const wavelength = [], flux = [], ivar = [];
  let withIvar = null;
  text.split(/\r?\n/).forEach((line, i) => {
    line = line.trim();
    if (!line || line.startsWith("#")) return;
    const parts = line.split(/[\s,;]+/).map(Number);
    if (parts.length < 2 || !Number.isFinite(parts[0])) {
      if (wavelength.length === 0) return;  // a header line
      throw new Error(`line ${i + 1}: expected 'wavelength flux [ivar]', got '${line}'`);
    }
    if (withIvar === null) withIvar = parts.length >= 3;
    wavelength.push(parts[0]);
    flux.push(Number.isFinite(parts[1]) ? parts[1] : null);
    if (withIvar) ivar.push(Number.isFinite(parts[2]) ? parts[2] : 0);
  });
  if (wavelength.length < 2) throw new Error("paste at least two lines 'wavelength flux'");
  return {wavelength, flux, ivar: withIvar ? ivar : null};
}

function searchParams() {
  const p = new URLSearchParams();
  p.set("k", $("#k").value || "10");
  p.set("target", $("#cross").checked ? "cross" : "same");
  p.set("include_spectra", "true");
  splitFilters($("#filters").value).forEach(f => p.append("filter", f));
  return p;
}

async function runSearch(tab) {
  const params = searchParams();
  const modality = $("#modality").value;
  if (tab === "upload") {
    const file = $("#file").files[0];
    if (!file) throw new Error("choose a file to upload");
    if (modality) params.set("modality", modality);
    const power = $("#resolving-power").value.trim();
    if (power) params.set("resolving_power", power);
    if ($("#medium").value) params.set("medium", $("#medium").value);
    if ($("#telluric").checked) params.set("telluric_uncorrected", "true");
    const form = new FormData();
    form.append("file", file, file.name);
    return api(`/v1/search/upload?${params}`, {method: "POST", body: form});
  }
  if (tab === "paste") {
    const arrays = parsePasted($("#pasted").value);
    const body = Object.assign(arrays, {
      modality: modality || null, air: $("#air").checked, k: Number(params.get("k")),
      resolving_power: Number($("#resolving-power").value) || null,
      telluric_uncorrected: $("#telluric").checked,
      target: params.get("target"), filters: params.getAll("filter"), include_spectra: true});
    return api("/v1/search/spectrum", {method: "POST", body: JSON.stringify(body),
                                       headers: {"Content-Type": "application/json"}});
  }
  const sid = $("#source-id").value.trim();
  if (!/^-?\d+$/.test(sid)) throw new Error("type a numeric source_id");
  if (modality) params.set("modality", modality);
  return api(`/v1/search/source/${sid}?${params}`);
}

function estimate(preds, name, digits) {
  const e = preds && preds[name];
  return e ? fmt(e.value, digits) : "";
}

function rvNote(rv) {
  if (!rv) return "";
  const how = {header: "the file's redshift", measured: "measured: the file gave none",
    "header+measured": "measured: the spectrum contradicted the file's redshift"}[rv.source];
  return ` Read in the rest frame: radial velocity ${fmt(rv.removed_kms, 0)} km/s removed ` +
    `(${how || rv.source}).`;
}

function resolutionNote(r) {
  if (!r) return "";
  return ` The spectrum is broader than the model reads (line FWHM ${fmt(r.input_fwhm_a, 1)} ` +
    `A against ${fmt(r.model_fwhm_a, 1)} A): its [Fe/H] reads too low (about -0.1 dex at ` +
    "R = 1200, -0.2 at R = 1000).";
}

function telluricNote(t) {
  if (!t || t.source !== "detected") return "";
  return " Telluric absorption left in (the O2 A band lies " +
    `${fmt(t.a_band_depth * 100, 0)}% below the model's redrawing of the star): the ` +
    "telluric bands were masked before reading.";
}

function spikesNote(n) {
  if (!n) return "";
  return ` ${n} pixel${n === 1 ? "" : "s"} narrower than any spectral line (cosmic rays, ` +
    "hot pixels) masked before reading.";
}

function renderResults(res) {
  $("#results").hidden = false;
  const q = res.query, p = q.predictions || {};
  const what = q.kind === "source_id" ? `source_id ${q.source_id}` :
    (q.filename || "pasted spectrum");
  const pe = n => p[n] ? `${fmt(p[n].value, n === "teff" ? 0 : 2)} \u00b1 ${fmt(p[n].err, n === "teff" ? 0 : 2)}` : "?";
  $("#query-summary").innerHTML = "";
  const line = document.createElement("p");
  line.textContent = `Query: ${what} (${q.modality}) \u2192 ${res.neighbours.length} ` +
    `${res.target_modality} neighbours${res.cross_modal ? " (cross-modal)" : ""}` +
    `${res.ranked_by === "embedding+identity" ? ", ranked by embedding + identity " +
      "(the star's other visits first)" : ""}` +
    `${res.ranked_by === "embedding+parameters" ? ", ranked by embedding + parameter " +
      "agreement (neighbours whose parameters match the query's first)" : ""} in ` +
    `${res.took_ms.toFixed(1)} ms. Predicted Teff ${pe("teff")} K, log g ${pe("logg")}, ` +
    `[Fe/H] ${pe("feh")}.` + rvNote(q.radial_velocity) +
    resolutionNote(q.broader_than_model) + spikesNote(q.spikes_masked) +
    telluricNote(q.telluric);
  $("#query-summary").appendChild(line);
  if (q.domain && q.domain.out_of_domain) {
    const warn = document.createElement("p");
    warn.className = "error";
    const d = q.domain;
    const short = d.window_coverage != null && d.min_coverage != null &&
      d.coverage_window_a != null && d.window_coverage < d.min_coverage;
    const missed = d.recon_relative != null && d.threshold != null &&
      d.recon_relative > d.threshold;
    warn.textContent = (short
      ? "The spectrum lacks the part the model reads most: only " +
        `${fmt(d.window_coverage * 100, 0)}% of ${d.coverage_window_a.join("-")} A has ` +
        "data (it needs " +
        `${fmt(d.min_coverage * 100, 0)}%). `
      : !missed && q.broader_than_model
      ? "The spectrum is broader than the model reads. "
      : "The model does not know stars like this one (or the spectrum is too noisy to " +
        "read): it redraws the spectrum with a median error of " +
        `${fmt(d.recon_relative * 100, 0)}% (its threshold is ` +
        `${fmt(d.threshold * 100, 0)}%). `) +
      "Treat the predicted parameters as unreliable; the neighbours are the closest " +
      "known stars.";
    $("#query-summary").appendChild(warn);
  }
  const tbody = $("#neighbours tbody");
  tbody.innerHTML = "";
  res.neighbours.forEach(n => {
    const tr = document.createElement("tr");
    const cells = [n.rank, n.source_id, n.modality, fmt(n.similarity, 4),
      estimate(n.predictions, "teff", 0), estimate(n.predictions, "logg", 2),
      estimate(n.predictions, "feh", 2), fmt(n.snr, 1), fmt(n.ra, 4), fmt(n.dec, 4)];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      if (i === 1) {
        td.className = "text";
        const a = document.createElement("a");
        a.textContent = String(c);
        a.title = "search with this star";
        a.addEventListener("click", () => {
          selectTab("source"); $("#source-id").value = String(c);
          $("#modality").value = n.modality; $("#search-form").requestSubmit();
        });
        td.appendChild(a);
      } else {
        if (i === 2) td.className = "text";
        td.textContent = String(c);
      }
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
  });
  const legend = $("#legend");
  legend.innerHTML = "";
  if (res.spectra && res.spectra.length) {
    plotCurves($("#plot"), res.spectra).forEach(item => {
      const s = document.createElement("span");
      const i = document.createElement("i");
      i.style.background = item.colour;
      s.appendChild(i);
      s.appendChild(document.createTextNode(item.label));
      legend.appendChild(s);
    });
  }
}

function selectTab(name) {
  document.querySelectorAll(".tabs button").forEach(b =>
    b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".pane").forEach(p => { p.hidden = p.dataset.pane !== name; });
}

function initSearch() {
  document.querySelectorAll(".tabs button").forEach(b =>
    b.addEventListener("click", () => selectTab(b.dataset.tab)));
  const url = new URLSearchParams(location.search);
  $("#search-form").addEventListener("submit", async ev => {
    ev.preventDefault();
    const tab = document.querySelector(".tabs button.active").dataset.tab;
    const button = $("#go");
    button.disabled = true;
    showError(null);
    try { renderResults(await runSearch(tab)); }
    catch (err) { showError(err); }
    finally { button.disabled = false; }
  });
  if (url.get("source_id")) {  // a link from a list page: search for that star at once
    selectTab("source");
    $("#source-id").value = url.get("source_id");
    if (url.get("modality")) $("#modality").value = url.get("modality");
    $("#search-form").requestSubmit();
  }
}

// ---------------------------------------------------------------- candidate list pages
const listState = {offset: 0, limit: 50};
// Columns shown first on the list pages (when present); the API returns many more.
const LIST_COLUMNS = {
  "anomalies": ["rank", "source_id", "spectrum_id", "anomaly_score", "anomaly_driver",
                "artefact_reasons", "teff_pred", "logg_pred", "feh_pred", "snr", "mag_g",
                "ra", "dec", "normal_neighbour_source_id"],
  "metal-poor": ["rank", "source_id", "modalities", "p_metal_poor", "feh_cal", "feh_cal_err",
                 "expected_purity", "expected_completeness", "teff_pred", "logg_pred", "snr",
                 "mag_g", "ra", "dec"],
};

async function loadList() {
  const page = document.body.dataset.page;
  const p = new URLSearchParams();
  p.set("modality", $("#list-modality").value);
  p.set("offset", String(listState.offset));
  p.set("limit", String(listState.limit));
  splitFilters($("#list-filters").value).forEach(f => p.append("filter", f));
  let path;
  if (page === "anomalies") {
    p.set("kind", $("#list-kind").value);
    path = `/v1/candidates/anomalies?${p}`;
  } else {
    p.set("feh_max", $("#feh-max").value || "-2");
    p.set("min_prob", $("#min-prob").value || "0.5");
    if ($("#adapt-prior").checked) p.set("adapt_prior", "true");
    path = `/v1/candidates/metal-poor?${p}`;
  }
  showError(null);
  let res;
  try { res = await api(path); } catch (err) { showError(err); return; }
  const table = $("#list-table");
  table.innerHTML = "";
  const head = document.createElement("tr");
  const columns = LIST_COLUMNS[page].filter(c => res.columns.includes(c));
  columns.forEach(c => {
    const th = document.createElement("th"); th.textContent = c; head.appendChild(th);
  });
  const thead = document.createElement("thead"); thead.appendChild(head);
  const tbody = document.createElement("tbody");
  res.rows.forEach(r => {
    const tr = document.createElement("tr");
    columns.forEach(c => {
      const td = document.createElement("td");
      const v = r[c];
      if (c === "source_id") {
        const a = document.createElement("a");
        const m = ["lamost", "xp"].includes(res.modality) ? `&modality=${res.modality}` : "";
        a.href = `/?source_id=${v}${m}`;
        a.textContent = String(v);
        a.title = "find similar stars";
        td.className = "text";
        td.appendChild(a);
      } else if (typeof v === "number" && !Number.isInteger(v)) td.textContent = v.toPrecision(4);
      else { td.textContent = v === null || v === undefined ? "" : String(v);
             if (typeof v === "string") td.className = "text"; }
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
  });
  table.appendChild(thead); table.appendChild(tbody);
  $("#list-status").textContent = res.total === 0 ? "no candidates pass these filters" :
    `rows ${res.offset + 1}-${res.offset + res.rows.length} of ${res.total}`;
  const info = res.info || {};
  if (info.calibrated === false) $("#list-status").textContent += " \u2014 probabilities " +
    "from uncalibrated head uncertainties";
  if (info.artefact_screening === false) $("#list-status").textContent += " \u2014 no " +
    "artefact screening (the server has no catalog of the observed spectra)";
  if (info.prior === "refitted to this pool" && Number.isFinite(info.prior_fraction))
    $("#list-status").textContent += ` \u2014 prior refitted to this pool: ` +
      `${(100 * info.prior_fraction).toPrecision(3)}% below the threshold` +
      (Number.isFinite(info.prior_fraction_se)
        ? ` \u00b1 ${(100 * info.prior_fraction_se).toPrecision(2)}%` : "");
  $("#prev").disabled = res.offset === 0;
  $("#next").disabled = res.offset + res.rows.length >= res.total;
}

function initList() {
  $("#list-form").addEventListener("submit", ev => {
    ev.preventDefault(); listState.offset = 0; loadList();
  });
  $("#prev").addEventListener("click", () => {
    listState.offset = Math.max(0, listState.offset - listState.limit); loadList();
  });
  $("#next").addEventListener("click", () => { listState.offset += listState.limit; loadList(); });
  loadList();
}

document.addEventListener("DOMContentLoaded", () => {
  initKey();
  if (document.body.dataset.page === "search") initSearch(); else initList();
});
