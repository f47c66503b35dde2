// The study view's image viewer, plain JavaScript (app.js drives it through `viewer`).
//
// The radiograph is drawn on a canvas at its full stored resolution and moved and scaled by one CSS transform
// (fit, zoom, pan): the pixels are never resampled by us, only by the browser for display. Window/level and
// invert change the pixel values themselves: a 256-entry lookup table applied to the greyscale source values
// (kept aside once per image), written back with putImageData, so what is read from the canvas is what is
// shown. The activation map is a separate layer under the same transform, with an opacity of its own.
"use strict";

const viewer = (() => {
  // On the 8-bit display values the API serves (a DICOM is already through its own VOI window), so these are
  // ranges of grey, not Hounsfield units: "lung-like" stretches the dark values, "bone-like" the bright ones.
  const PRESETS = [
    { id: "full", name: "Full range", window: 256, level: 128 },
    { id: "lung", name: "Lung-like (dark values)", window: 128, level: 72 },
    { id: "soft", name: "Soft-tissue-like (middle values)", window: 128, level: 140 },
    { id: "bone", name: "Bone-like (bright values)", window: 96, level: 200 },
  ];
  const MIN_SCALE = 0.05;
  const MAX_SCALE = 32;
  const PAN_STEP = 40; // px per arrow key press
  const CAPTION_PX = 34; // the line under the viewer: size, zoom, window, notes

  const v = {
    width: 0, height: 0, grey: null, pixels: null, scale: 1, tx: 0, ty: 0, fitted: true,
    window: 256, level: 128, invert: false, wlMode: false, drag: null, frame: 0, generation: 0,
  };
  const el = {};

  function init() {
    for (const id of ["viewer", "viewer-stage", "study-canvas", "study-image", "heatmap-layer", "wl-preset",
      "wl-mode", "invert", "wl-readout", "viewer-figure"]) el[id] = document.getElementById(id);
    el["wl-preset"].replaceChildren(...PRESETS.map((p, n) =>
      new Option(`${n + 1}. ${p.name} (W ${p.window}, L ${p.level})`, p.id)));
    el["wl-preset"].append(new Option("Custom (dragged)", "custom"));
    const box = el.viewer;
    box.addEventListener("wheel", onWheel, { passive: false });
    box.addEventListener("pointerdown", onPointerDown);
    box.addEventListener("pointermove", onPointerMove);
    box.addEventListener("pointerup", onPointerUp);
    box.addEventListener("pointercancel", onPointerUp);
    box.addEventListener("contextmenu", (e) => e.preventDefault()); // right-drag is window/level
    // Fit again when the space changes (window resized, full screen) unless the reader has zoomed or panned.
    new ResizeObserver(() => { if (v.fitted && v.width) fit(); }).observe(box);
    window.addEventListener("resize", sizeBox);
    document.addEventListener("fullscreenchange", sizeBox);
    el["wl-preset"].addEventListener("change", () => preset(el["wl-preset"].value));
  }

  // The viewer takes the window's height below its own top, less a line for the caption, so the whole image
  // fits without scrolling the page whatever sits above it (status line, image strip). In full screen the
  // stylesheet gives it the screen.
  function sizeBox() {
    const box = el.viewer;
    if (document.fullscreenElement) { box.style.height = ""; return; }
    if (!box.offsetParent) return;
    const top = box.getBoundingClientRect().top + window.scrollY;
    box.style.height = `${Math.max(280, Math.floor(window.innerHeight - top - CAPTION_PX))}px`;
  }

  // A new image (a blob URL of the full-resolution PNG): decode it, keep its grey values, show it fitted.
  async function load(url) {
    const generation = ++v.generation;
    const img = el["study-image"];
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = url;
    await img.decode();
    if (generation !== v.generation) return; // another image was asked for meanwhile
    const canvas = el["study-canvas"];
    canvas.width = v.width = img.naturalWidth;
    canvas.height = v.height = img.naturalHeight;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0);
    const rgba = ctx.getImageData(0, 0, v.width, v.height);
    v.grey = new Uint8Array(v.width * v.height);
    for (let i = 0, j = 0; i < v.grey.length; i++, j += 4) v.grey[i] = rgba.data[j]; // a grey PNG: R = G = B
    v.pixels = rgba;
    layerSize();
    sizeBox();
    reset();
  }

  function layerSize() {
    const layer = el["heatmap-layer"];
    layer.style.width = `${v.width}px`;
    layer.style.height = `${v.height}px`;
  }

  // Default window, no inversion, fitted: the state every image opens in.
  function reset() {
    Object.assign(v, { window: 256, level: 128, invert: false });
    el["wl-preset"].value = "full";
    render();
    fit();
  }

  function fit() {
    const box = el.viewer.getBoundingClientRect();
    if (!v.width || !box.width || !box.height) return;
    v.scale = Math.min(box.width / v.width, box.height / v.height);
    v.tx = (box.width - v.width * v.scale) / 2;
    v.ty = (box.height - v.height * v.scale) / 2;
    v.fitted = true;
    transform();
  }

  function transform() {
    el["viewer-stage"].style.transform = `translate(${v.tx}px, ${v.ty}px) scale(${v.scale})`;
    // Past 2x the reader wants to see the stored pixels, not the browser's smoothing of them.
    el["study-canvas"].style.imageRendering = v.scale >= 2 ? "pixelated" : "auto";
    Object.assign(el.viewer.dataset, { scale: v.scale.toFixed(4), tx: v.tx.toFixed(1), ty: v.ty.toFixed(1) });
    readout();
  }

  // Zoom by ``factor`` keeping the image point under (cx, cy) (viewer coordinates) where it is.
  function zoomAt(factor, cx, cy) {
    if (!v.width) return;
    const scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, v.scale * factor));
    const applied = scale / v.scale;
    v.tx = cx - (cx - v.tx) * applied;
    v.ty = cy - (cy - v.ty) * applied;
    v.scale = scale;
    v.fitted = false;
    transform();
  }

  function zoomCentre(factor) {
    const box = el.viewer.getBoundingClientRect();
    zoomAt(factor, box.width / 2, box.height / 2);
  }

  function panBy(dx, dy) {
    v.tx += dx;
    v.ty += dy;
    v.fitted = false;
    transform();
  }

  function onWheel(event) {
    event.preventDefault();
    const box = el.viewer.getBoundingClientRect();
    zoomAt(Math.exp(-event.deltaY * 0.0015), event.clientX - box.left, event.clientY - box.top);
  }

  // Left drag pans (window/level in W/L mode or with Shift); right drag always sets window/level.
  function onPointerDown(event) {
    if (!v.width) return;
    const wl = event.button === 2 || (event.button === 0 && (v.wlMode || event.shiftKey));
    if (event.button !== 0 && !wl) return;
    el.viewer.focus();
    el.viewer.setPointerCapture(event.pointerId);
    v.drag = { wl, x: event.clientX, y: event.clientY };
    el.viewer.classList.add(wl ? "dragging-wl" : "dragging");
  }

  function onPointerMove(event) {
    if (!v.drag) return;
    const dx = event.clientX - v.drag.x;
    const dy = event.clientY - v.drag.y;
    v.drag.x = event.clientX;
    v.drag.y = event.clientY;
    if (v.drag.wl) setWindow(v.window + dx, v.level + dy, "custom");
    else panBy(dx, dy);
  }

  function onPointerUp() {
    v.drag = null;
    el.viewer.classList.remove("dragging", "dragging-wl");
  }

  // Window wider than 256 lowers the contrast below the full range; level is the centre grey value.
  function setWindow(window, level, presetId) {
    v.window = Math.round(Math.min(512, Math.max(1, window)));
    v.level = Math.round(Math.min(255, Math.max(0, level)));
    el["wl-preset"].value = presetId;
    scheduleRender();
  }

  function preset(id) {
    const p = PRESETS.find((x) => x.id === id);
    if (p) setWindow(p.window, p.level, p.id);
  }

  function presetByNumber(n) {
    if (PRESETS[n - 1]) preset(PRESETS[n - 1].id);
  }

  function toggleInvert() {
    v.invert = !v.invert;
    scheduleRender();
  }

  function toggleWlMode() {
    v.wlMode = !v.wlMode;
    el["wl-mode"].setAttribute("aria-pressed", String(v.wlMode));
    el.viewer.classList.toggle("wl-mode", v.wlMode);
  }

  // Drags arrive faster than frames: render at most once per frame.
  function scheduleRender() {
    if (v.frame) return;
    v.frame = requestAnimationFrame(() => { v.frame = 0; render(); });
  }

  // DICOM PS3.3 C.11.2.1.2's linear window: centre c, width w, on 0..255, then inverted if asked.
  function lut() {
    const table = new Uint32Array(256);
    const c = v.level;
    const w = v.window;
    for (let g = 0; g < 256; g++) {
      let y;
      if (g <= c - 0.5 - (w - 1) / 2) y = 0;
      else if (g > c - 0.5 + (w - 1) / 2) y = 255;
      else y = Math.round(((g - (c - 0.5)) / Math.max(w - 1, 1) + 0.5) * 255);
      y = Math.min(255, Math.max(0, y));
      if (v.invert) y = 255 - y;
      table[g] = (255 << 24 | y << 16 | y << 8 | y) >>> 0; // opaque grey as RGBA bytes (little-endian)
    }
    return table;
  }

  function render() {
    if (!v.grey) return;
    const table = lut();
    const out = new Uint32Array(v.pixels.data.buffer);
    for (let i = 0; i < v.grey.length; i++) out[i] = table[v.grey[i]];
    el["study-canvas"].getContext("2d").putImageData(v.pixels, 0, 0);
    Object.assign(el.viewer.dataset, { window: String(v.window), level: String(v.level), invert: String(v.invert) });
    el.invert.setAttribute("aria-pressed", String(v.invert));
    readout();
  }

  function readout() {
    if (!v.width) { el["wl-readout"].textContent = ""; return; }
    el["wl-readout"].textContent = `${v.width} × ${v.height} px · zoom ${Math.round(v.scale * 100)} % · ` +
      `W ${v.window} L ${v.level}` + (v.invert ? " · inverted" : "");
  }

  function toggleFullscreen() {
    if (document.fullscreenElement) return document.exitFullscreen();
    return el["viewer-figure"].requestFullscreen().catch((error) => {
      say(`Full screen refused by the browser: ${error.message}`, true);
    });
  }

  // Arrow keys move the image when the viewer has the focus (the view moves the other way round).
  function onArrow(key) {
    const d = { ArrowLeft: [PAN_STEP, 0], ArrowRight: [-PAN_STEP, 0], ArrowUp: [0, PAN_STEP], ArrowDown: [0, -PAN_STEP] }[key];
    if (d) panBy(...d);
  }

  function clear() {
    v.generation++;
    Object.assign(v, { width: 0, height: 0, grey: null, pixels: null });
    readout();
  }

  return {
    init, load, clear, reset, sizeBox, fit, zoomCentre, zoomAt, panBy, onArrow, setWindow, presetByNumber, toggleInvert,
    toggleWlMode, toggleFullscreen, layerSize, PRESETS,
  };
})();
