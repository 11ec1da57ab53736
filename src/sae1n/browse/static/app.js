// sae1n browse: the page. Leaflet (from xstatic-leaflet) in CRS.Simple shows
// deep-zoom tiles; overlay tiles share its grid; everything else is JSON.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const S = {exp: null, slide: null, info: null, unit: null, neuron: null, cmap: "viridis",
             opacity: 0.6, thr: 0, rows: [], notes: {}, sort: {key: "rank", asc: true}, ready: false};
  // requests cut short by a reload or navigation are not errors
  let leaving = false;
  window.addEventListener("beforeunload", () => { leaving = true; });
  window.addEventListener("pagehide", () => { leaving = true; });
  window.addEventListener("unhandledrejection", (ev) => { if (leaving) ev.preventDefault(); });
  const report = (e) => { if (!leaving) console.error(e); };
  let map = null, base = null, ovNeuron = null, ovAtt = null, ovLab = null, outlines = null, marker = null;

  const api = async (url, opts) => {
    const r = await fetch(url, opts);
    if (!r.ok && r.status !== 409) throw new Error(url + ": " + r.status);
    return r;
  };
  const json = async (url, opts) => (await api(url, opts)).json();
  const fmt = (v) => {
    if (v === null || v === undefined || v === "" || (typeof v === "number" && !isFinite(v))) return "–";
    if (typeof v !== "number") return String(v);
    const a = Math.abs(v);
    return (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(2) : (Number.isInteger(v) ? String(v) : v.toPrecision(3));
  };
  const el = (tag, attrs, text) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // ------------------------------------------------------------------ geometry
  const toLatLng = (x, y) => map.unproject([x, y], S.info.max_level);
  const toLevel0 = (latlng) => map.project(latlng, S.info.max_level);

  // ------------------------------------------------------------------ slides
  async function loadSlide(sid) {
    S.slide = sid;
    $("slide").value = sid;
    S.info = await json(`/api/slide/${encodeURIComponent(sid)}`);
    const i = S.info;
    $("slideinfo").textContent = `${i.width}×${i.height} px, ${i.n_patches} patches` +
      (i.label ? `, ${i.label}` : "") + (i.has_file ? "" : " (no slide file: blank canvas)");
    [base, ovNeuron, ovAtt, ovLab, outlines, marker].forEach((l) => l && map.removeLayer(l));
    ovNeuron = ovAtt = ovLab = marker = null;
    const bounds = L.latLngBounds(toLatLng(0, i.height), toLatLng(i.width, 0));
    const opts = {tileSize: i.tile_size, maxNativeZoom: i.max_level, maxZoom: i.max_level + 2,
                  minZoom: 0, noWrap: true, bounds: bounds, keepBuffer: 1};
    S.layerOpts = opts;
    map.setMaxZoom(i.max_level + 2);
    base = L.tileLayer(`/tiles/${encodeURIComponent(sid)}/{z}/{x}/{y}.jpg`, {...opts, zIndex: 1}).addTo(map);
    outlines = L.layerGroup(i.outlines.map((ring) =>
      L.polygon(ring.map((p) => toLatLng(p[0], p[1])), {color: "#00b3ff", weight: 2, fill: false, interactive: false})));
    map.fitBounds(bounds, {animate: false});
    S.fitZoom = map.getZoom();
    $("show-attention").disabled = !i.has_attention;
    $("show-labels").disabled = !i.has_labels;
    $("show-outlines").disabled = !i.outlines.length;
    refreshOverlays();
  }

  function overlayUrl(kind) {
    const q = new URLSearchParams({cmap: S.cmap, thr: String(S.thr)});
    if (kind === "neuron") { q.set("unit", S.unit); if (S.neuron) q.set("vmax", S.neuron.vmax.toPrecision(6)); }
    return `/overlay/${encodeURIComponent(S.slide)}/${kind}/{z}/{x}/{y}.png?${q}`;
  }

  const Z = {neuron: 2, attention: 3, labels: 4};
  function setLayer(current, show, kind, opacity) {
    if (!show) { if (current) map.removeLayer(current); return null; }
    const url = overlayUrl(kind);
    if (current) { if (current._url !== url) current.setUrl(url); current.setOpacity(opacity); if (!map.hasLayer(current)) current.addTo(map); return current; }
    return L.tileLayer(url, {...S.layerOpts, opacity: opacity, zIndex: Z[kind]}).addTo(map);
  }

  function refreshOverlays() {
    if (!S.info) return;
    ovNeuron = setLayer(ovNeuron, $("show-neuron").checked && S.unit !== null, "neuron", S.opacity);
    ovAtt = setLayer(ovAtt, $("show-attention").checked && S.info.has_attention, "attention", S.opacity);
    ovLab = setLayer(ovLab, $("show-labels").checked && S.info.has_labels, "labels", 1.0);
    if ($("show-outlines").checked) outlines.addTo(map); else map.removeLayer(outlines);
    legend().catch(report);
  }

  async function legend() {
    const colours = await json(`/api/colormap/${S.cmap}`);
    $("legend-bar").style.background = `linear-gradient(to right, ${colours.join(",")})`;
    const hi = S.neuron ? S.neuron.vmax : null;
    $("legend-title").textContent = S.unit === null ? "" : `neuron ${S.unit} activation` +
      ($("show-attention").checked ? " / attention percentile" : "");
    $("legend-hi").textContent = hi === null ? "max" : fmt(hi);
    $("thrval").textContent = hi === null ? "" : `≥ ${fmt(S.thr * hi)}`;
    updateExportLink();
  }

  // ------------------------------------------------------------------ neurons
  const COLS = [["rank", "rank"], ["unit_id", "unit"], ["_name", "name"], ["t_statistic", "t"], ["p_value", "p"],
                ["q_value", "q"], ["slide_auroc", "slide AUROC"], ["patch_auroc", "patch AUROC"],
                ["patch_ap", "AP"], ["direction", "dir"], ["firing_frequency", "freq"]];

  function nameOf(r) {
    const n = S.notes[r.unit_id];
    return (n && n.name) || r.note_name || r.prompt_name || "";
  }

  function renderRanking() {
    const head = $("ranking").tHead;
    if (!head.rows.length) {
      const tr = head.insertRow();
      for (const [key, label] of COLS) {
        const th = el("th", {"data-key": key, class: key === "_name" || key === "direction" ? "l" : ""}, label);
        th.addEventListener("click", () => {
          S.sort = {key: key, asc: S.sort.key === key ? !S.sort.asc : key === "rank" || key === "p_value" || key === "q_value"};
          renderRanking();
        });
        tr.appendChild(th);
      }
    }
    const q = $("search").value.trim().toLowerCase();
    const dir = $("direction").value;
    const named = $("named").checked;
    let rows = S.rows.filter((r) => {
      const name = nameOf(r).toLowerCase();
      if (dir && r.direction !== dir) return false;
      if (named && !name) return false;
      if (!q) return true;
      return String(r.unit_id) === q || name.includes(q) || String(r.unit_id).startsWith(q);
    });
    const {key, asc} = S.sort;
    const val = (r) => key === "_name" ? nameOf(r) : r[key];
    rows = rows.slice().sort((a, b) => {
      const va = val(a), vb = val(b);
      const na = va === null || va === undefined || va === "", nb = vb === null || vb === undefined || vb === "";
      if (na || nb) return na - nb;
      return (va < vb ? -1 : va > vb ? 1 : 0) * (asc ? 1 : -1);
    });
    const body = $("ranking").tBodies[0];
    body.textContent = "";
    const shown = rows.slice(0, 300);
    for (const r of shown) {
      const tr = body.insertRow();
      tr.dataset.unit = r.unit_id;
      if (r.unit_id === S.unit) tr.className = "sel";
      for (const [k] of COLS) {
        const td = tr.insertCell();
        const v = k === "_name" ? nameOf(r) : r[k];
        td.textContent = fmt(v);
        if (k === "_name" || k === "direction") td.className = "l";
      }
      tr.addEventListener("click", () => selectUnit(r.unit_id).catch(report));
    }
    $("count").textContent = `${rows.length} of ${S.rows.length} neurons` + (rows.length > shown.length ? ` (first ${shown.length} shown)` : "");
  }

  async function selectUnit(unit) {
    S.unit = Number(unit);
    S.neuron = null;
    for (const tr of $("ranking").tBodies[0].rows) tr.className = Number(tr.dataset.unit) === S.unit ? "sel" : "";
    const row = S.rows.find((r) => r.unit_id === S.unit) || {};
    $("neuron-title").textContent = `neuron ${S.unit}` + (row.rank ? ` (rank ${row.rank})` : "");
    fillNote();
    const n = await json(`/api/neuron/${S.unit}?n=24`);
    if (n.unit !== S.unit) return;
    S.neuron = n;
    refreshOverlays();
    const g = $("gallery");
    g.textContent = "";
    for (const p of n.gallery) {
      const img = el("img", {src: `/patch/${encodeURIComponent(p.slide_id)}/${p.x}/${p.y}.jpg?size=96`,
                             alt: `${p.slide_id} (${p.x}, ${p.y})`, title: `${p.slide_id} (${p.x}, ${p.y}) = ${fmt(p.value)}`,
                             "data-slide": p.slide_id, "data-x": p.x, "data-y": p.y});
      img.addEventListener("click", () => goTo(p.slide_id, p.x, p.y, p.patch_size).catch(report));
      g.appendChild(img);
    }
    $("gallery-note").textContent = `(${n.gallery.length}, fires on ${(100 * n.firing_frequency).toFixed(1)}% of patches)`;
    const b = $("perslide").tBodies[0];
    b.textContent = "";
    for (const s of n.slides) {
      const tr = b.insertRow();
      [s.slide_id, s.label, s.split, fmt(s.max)].forEach((v, i) => { const td = tr.insertCell(); td.textContent = v; if (i < 3) td.className = "l"; });
      tr.addEventListener("click", () => loadSlide(s.slide_id).catch(report));
    }
    S.ready = true;
    if (S.rows.length && S.rows[0].firing_frequency === null) {  // the index is built now
      S.rows = await json("/api/ranking");
      renderRanking();
    }
  }

  async function goTo(sid, x, y, ps) {
    if (sid !== S.slide) await loadSlide(sid);
    const size = ps || S.info.patch_size;
    map.setView(toLatLng(x + size / 2, y + size / 2), S.info.max_level, {animate: false});
    await inspect(x + size / 2, y + size / 2);
    S.landed = `${sid}:${x}:${y}`;
  }

  // ------------------------------------------------------------------ patches
  async function inspect(x, y) {
    const r = await json(`/api/patch_at/${encodeURIComponent(S.slide)}?x=${x}&y=${y}`);
    const box = $("inspector");
    box.textContent = "";
    if (marker) { map.removeLayer(marker); marker = null; }
    const p = r.patch;
    if (!p) { box.textContent = "no patch here"; return; }
    marker = L.rectangle([toLatLng(p.x, p.y + p.patch_size), toLatLng(p.x + p.patch_size, p.y)],
                         {color: "#ff00aa", weight: 2, fill: false, interactive: false}).addTo(map);
    box.appendChild(el("img", {src: `/patch/${encodeURIComponent(p.slide_id)}/${p.x}/${p.y}.jpg`, alt: "patch", id: "patch-img"}));
    const lines = [`${p.slide_id} at (${p.x}, ${p.y}), ${p.patch_size} px`];
    if (p.label !== null) lines.push(`label: ${p.label ? "tumour" : "normal"} (tumour fraction ${fmt(p.tumor_fraction)})`);
    if (p.attention !== null) lines.push(`ABMIL attention percentile: ${fmt(p.attention)}`);
    for (const l of lines) box.appendChild(el("div", {}, l));
    box.appendChild(el("div", {}, "most active neurons:"));
    const u = el("div", {class: "units"});
    for (const t of p.top_neurons) {
      const a = el("a", {href: "#", "data-unit": t.unit}, `${t.unit} (${fmt(t.value)})`);
      const nm = S.notes[t.unit] && S.notes[t.unit].name;
      if (nm) a.title = nm;
      a.addEventListener("click", (ev) => { ev.preventDefault(); selectUnit(t.unit).catch(report); });
      u.appendChild(a);
    }
    box.appendChild(u);
    S.patch = p;
  }

  // ------------------------------------------------------------------ notes
  function fillNote() {
    const n = S.notes[S.unit] || {};
    $("note-name").value = n.name || "";
    $("note-rating").value = n.rating || "";
    $("note-text").value = n.text || "";
    for (const cb of $("note-tags").querySelectorAll("input")) cb.checked = (n.tags || []).includes(cb.value);
    $("note-status").textContent = n.version ? `saved (v${n.version})` : "";
  }

  async function saveNote(ev) {
    ev.preventDefault();
    if (S.unit === null) return;
    const unit = S.unit;
    const old = S.notes[unit] || {};
    const body = {name: $("note-name").value, rating: $("note-rating").value || null, text: $("note-text").value,
                  tags: [...$("note-tags").querySelectorAll("input:checked")].map((c) => c.value),
                  version: old.version || 0};
    const r = await api(`/api/notes/${unit}`, {method: "PUT", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const got = await r.json();
    if (r.status === 409) {
      S.notes[unit] = got.current;
      fillNote();
      $("note-status").textContent = "changed in another tab: its version is shown; edit and save again";
      return;
    }
    S.notes[unit] = got;
    $("note-status").textContent = `saved (v${got.version})`;
    renderRanking();
  }

  function updateExportLink() {
    const a = $("export-geojson");
    if (S.unit === null || !S.slide) { a.removeAttribute("href"); return; }
    const thr = S.neuron ? S.thr * S.neuron.vmax : 0;
    a.href = `/export/geojson/${encodeURIComponent(S.slide)}/${S.unit}.geojson?thr=${thr.toPrecision(6)}`;
  }

  // ------------------------------------------------------------------ start
  async function start() {
    map = L.map("map", {crs: L.CRS.Simple, minZoom: 0, maxZoom: 20, zoomSnap: 1, attributionControl: false});
    map.on("click", (e) => { if (S.info) { const p = toLevel0(e.latlng); inspect(p.x, p.y).catch(report); } });
    S.exp = await json("/api/experiment");
    $("title").textContent = `sae1n browse: ${S.exp.name}`;
    for (const c of S.exp.colormaps) $("cmap").appendChild(el("option", {value: c}, c));
    S.cmap = S.exp.default_cmap;
    $("cmap").value = S.cmap;
    for (const s of S.exp.slides) $("slide").appendChild(el("option", {value: s.slide_id}, s.slide_id + (s.label ? ` (${s.label})` : "")));
    for (const t of S.exp.tags) {
      const lab = el("label");
      lab.appendChild(el("input", {type: "checkbox", value: t}));
      lab.appendChild(document.createTextNode(" " + t));
      $("note-tags").appendChild(lab);
    }
    const [rows, notes] = await Promise.all([json("/api/ranking"), json("/api/notes")]);
    S.rows = rows;
    S.notes = notes;
    for (const d of [...new Set(rows.map((r) => r.direction).filter(Boolean))]) $("direction").appendChild(el("option", {value: d}, d));
    renderRanking();
    $("search").addEventListener("input", renderRanking);
    $("direction").addEventListener("change", renderRanking);
    $("named").addEventListener("change", renderRanking);
    $("slide").addEventListener("change", () => loadSlide($("slide").value).catch(report));
    for (const id of ["show-neuron", "show-attention", "show-labels", "show-outlines"]) $(id).addEventListener("change", refreshOverlays);
    $("cmap").addEventListener("change", () => { S.cmap = $("cmap").value; refreshOverlays(); });
    $("opacity").addEventListener("input", () => { S.opacity = Number($("opacity").value); [ovNeuron, ovAtt].forEach((l) => l && l.setOpacity(S.opacity)); });
    $("thr").addEventListener("change", () => { S.thr = Number($("thr").value); refreshOverlays(); });
    $("note").addEventListener("submit", (ev) => saveNote(ev).catch(report));
    const hash = new URLSearchParams(location.hash.slice(1));
    const first = hash.get("slide") && S.exp.slides.some((s) => s.slide_id === hash.get("slide")) ? hash.get("slide") : S.exp.slides[0].slide_id;
    await loadSlide(first);
    const unit = hash.get("unit") !== null ? Number(hash.get("unit")) : (S.exp.chosen_unit ?? (rows[0] && rows[0].unit_id));
    if (unit !== undefined && unit !== null) await selectUnit(unit);
    S.ready = true;
  }

  window.sae1n = {
    state: S,
    get map() { return map; },
    center() { const c = toLevel0(map.getCenter()); return {x: c.x, y: c.y, zoom: map.getZoom(), slide: S.slide}; },
    goTo: goTo,
  };
  start().catch((e) => { if (!leaving) { console.error(e); document.body.prepend(el("div", {class: "missing"}, String(e))); } });
})();
