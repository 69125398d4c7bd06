// carmask web page. The server always returns the transparent RGBA cut-out (edges, shadow and
// canvas are made there); the chosen background is composited here, so switching it is instant.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    fileInput: $("file-input"), dropzone: $("dropzone"), fileName: $("file-name"),
    modelInfo: $("model-info"), status: $("status"), statusText: $("status-text"),
    error: $("error"), errorMessage: $("error-message"),
    warning: $("warning"), warningMessage: $("warning-message"), largest: $("largest"),
    originalFrame: $("original-frame"), originalCanvas: $("original-canvas"), maskCanvas: $("mask-canvas"),
    resultFrame: $("result-frame"), resultCanvas: $("result-canvas"),
    maskToggle: $("mask-toggle"), feather: $("feather"), featherValue: $("feather-value"),
    shadow: $("shadow"), hardEdges: $("hard-edges"), bgColor: $("bg-color"), bgColorValue: $("bg-color-value"),
    canvas: $("canvas"), canvasOptions: $("canvas-options"), margin: $("margin"), marginValue: $("margin-value"),
    bgImageInput: $("bg-image-input"), bgImageName: $("bg-image-name"),
    download: $("download"), downloadHint: $("download-hint"),
  };
  const MASK_TINT = "rgba(37, 99, 235, 0.5)";
  const SLIDER_DEBOUNCE_MS = 300;

  const state = {
    file: null,            // the photo File
    photo: null,           // ImageBitmap of the photo, or null when the browser cannot decode it
    cutoutBlob: null,      // the server's transparent PNG
    cutout: null,          // ImageBitmap of it
    placed: false,         // whether it is on a canvas (not the photo's geometry)
    backdrop: null,        // ImageBitmap of the uploaded background image
    maxBytes: null,
    request: null,         // AbortController of the request in flight
    sequence: 0,           // answers to superseded requests are dropped
  };

  // ---- status, errors ----------------------------------------------------------------------
  function setStatus(text, kind = "idle") {
    el.statusText.textContent = text;
    el.status.dataset.state = kind;
    el.resultFrame.classList.toggle("busy", kind === "busy");
    el.resultFrame.setAttribute("aria-busy", kind === "busy" ? "true" : "false");
  }

  function showError(message) {
    el.errorMessage.textContent = message;
    el.error.hidden = false;
    setStatus("Failed: see the message below.", "error");
  }

  function clearError() {
    el.error.hidden = true;
    el.errorMessage.textContent = "";
  }

  // The server's doubts about a mask (a JSON list): shown beside the result, never hidden.
  function showWarnings(header) {
    let warnings = [];
    try { warnings = JSON.parse(header || "[]"); } catch (_) { /* an older server */ }
    el.warningMessage.textContent = warnings.join(" ");
    el.warning.hidden = warnings.length === 0;
  }

  async function errorMessageOf(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) { /* not JSON */ }
    return `The server answered ${response.status} ${response.statusText || ""}`.trim();
  }

  const megabytes = (bytes) => (bytes < 2 ** 20 ? `${Math.max(1, Math.round(bytes / 1024))} KB`
    : `${(bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 1 : 0)} MB`);
  const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  // ---- model info --------------------------------------------------------------------------
  async function loadModelInfo() {
    try {
      const response = await fetch("/v1/models");
      if (!response.ok) throw new Error(await errorMessageOf(response));
      const info = await response.json();
      state.maxBytes = info.limits && info.limits.max_bytes;
      // one entry per model, by role: "studio" (Carvana's turntable) and "general" (anywhere)
      const parts = Object.entries(info.loaded || {}).map(([role, model]) => {
        const size = Array.isArray(model.input_size) ? model.input_size.join("×") : model.input_size;
        return `${escapeHtml(role)} model <b>${escapeHtml(model.architecture || "?")}</b>` +
          (size ? ` ${escapeHtml(size)}` : "");
      });
      if (state.maxBytes) parts.push(`uploads up to ${megabytes(state.maxBytes)}`);
      el.modelInfo.innerHTML = parts.join(" · ");
    } catch (error) {
      el.modelInfo.textContent = "model info unavailable";
    }
  }

  // ---- drawing -----------------------------------------------------------------------------
  function sizeCanvas(canvas, width, height) {
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
  }

  function setAspect(frames, width, height) {
    for (const frame of frames) frame.style.setProperty("--aspect", `${width} / ${height}`);
  }

  function drawOriginal() {
    if (!state.photo) return;
    const { width, height } = state.photo;
    sizeCanvas(el.originalCanvas, width, height);
    el.originalCanvas.getContext("2d").drawImage(state.photo, 0, 0);
    el.originalFrame.classList.remove("empty");
  }

  // The mask overlay: the tint wherever the cut-out is opaque (its alpha, so feathering and a
  // kept shadow show as they will come out). A cut-out on a canvas no longer lies over the photo.
  function drawMask() {
    const canvas = el.maskCanvas;
    el.maskToggle.disabled = state.placed;
    const show = el.maskToggle.checked && state.cutout && !state.placed &&
      !el.originalFrame.classList.contains("empty");
    canvas.hidden = !show;
    if (!show) return;
    const { width, height } = state.cutout;
    sizeCanvas(canvas, width, height);
    const ctx = canvas.getContext("2d");
    ctx.globalCompositeOperation = "copy";
    ctx.fillStyle = MASK_TINT;
    ctx.fillRect(0, 0, width, height);
    ctx.globalCompositeOperation = "destination-in";
    ctx.drawImage(state.cutout, 0, 0);
    ctx.globalCompositeOperation = "source-over";
  }

  function backgroundMode() {
    return document.querySelector('input[name="bg-mode"]:checked').value;
  }

  // Scale `image` to cover width x height, centred (as the server's own composite does).
  function drawCover(ctx, image, width, height) {
    const scale = Math.max(width / image.width, height / image.height);
    const w = image.width * scale, h = image.height * scale;
    ctx.drawImage(image, (width - w) / 2, (height - h) / 2, w, h);
  }

  // The full-resolution composite into `canvas`: the background, then the cut-out over it.
  function composeInto(canvas) {
    const { width, height } = state.cutout;
    sizeCanvas(canvas, width, height);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    const mode = backgroundMode();
    if (mode === "color") {
      ctx.fillStyle = el.bgColor.value;
      ctx.fillRect(0, 0, width, height);
    } else if (mode === "image" && state.backdrop) {
      ctx.imageSmoothingQuality = "high";
      drawCover(ctx, state.backdrop, width, height);
    }
    ctx.drawImage(state.cutout, 0, 0);
  }

  function drawResult() {
    const mode = backgroundMode();
    el.resultFrame.classList.toggle("checker", mode === "transparent" || (mode === "image" && !state.backdrop));
    if (!state.cutout) return;
    composeInto(el.resultCanvas);
    el.resultFrame.classList.remove("empty");
    updateDownload();
  }

  function updateDownload() {
    const mode = backgroundMode();
    el.download.disabled = !state.cutout;
    const what = mode === "transparent" ? "transparent PNG"
      : mode === "color" ? `PNG on ${el.bgColor.value}`
        : state.backdrop ? "PNG on your background image" : "transparent PNG (no background image yet)";
    const size = state.cutout ? ` · ${state.cutout.width}×${state.cutout.height}` : "";
    el.downloadHint.textContent = `${what}${size}`;
  }

  function resetPanes() {
    for (const bitmap of [state.photo, state.cutout]) if (bitmap) bitmap.close();
    state.photo = state.cutout = state.cutoutBlob = null;
    state.placed = false;
    el.originalFrame.classList.add("empty");
    el.resultFrame.classList.add("empty");
    el.maskCanvas.hidden = true;
    el.warning.hidden = true;
    updateDownload();
  }

  // ---- the request -------------------------------------------------------------------------
  async function requestCutout() {
    if (!state.file) return;
    if (state.request) state.request.abort();
    const controller = new AbortController();
    state.request = controller;
    const sequence = ++state.sequence;
    const form = new FormData();
    form.append("image", state.file, state.file.name || "photo");
    form.append("background", "transparent");
    // a feathered edge is soft: hard edges turn the slider off, and the server refuses both
    form.append("feather", el.hardEdges.checked ? "0" : el.feather.value);
    form.append("shadow", el.shadow.checked ? "true" : "false");
    form.append("hard_edges", el.hardEdges.checked ? "true" : "false");
    form.append("largest", el.largest.checked ? "true" : "false");
    form.append("format", "png");
    const canvas = el.canvas.value;
    if (canvas) { // margin and align only mean something on a canvas; the server refuses them alone
      form.append("canvas", canvas);
      form.append("margin", el.margin.value);
      form.append("align", document.querySelector('input[name="align"]:checked').value);
    }
    clearError();
    setStatus(state.cutout ? "Updating the cut-out…" : "Cutting out the car…", "busy");
    const started = performance.now();
    try {
      const response = await fetch("/v1/cutout", { method: "POST", body: form, signal: controller.signal });
      if (!response.ok) {
        const message = await errorMessageOf(response);
        if (sequence !== state.sequence) return;
        resetPanes();
        showError(message);
        return;
      }
      // arrayBuffer, not blob(): Chromium's devtools keep no copy of bodies read as blobs, so
      // the end-to-end test could not see the PNG
      const type = response.headers.get("Content-Type") || "image/png";
      const blob = new Blob([await response.arrayBuffer()], { type });
      const bitmap = await createImageBitmap(blob);
      if (sequence !== state.sequence) { bitmap.close(); return; }
      if (state.cutout) state.cutout.close();
      state.cutout = bitmap;
      state.cutoutBlob = blob;
      state.placed = Boolean(canvas);
      setAspect(state.photo ? [el.resultFrame] : [el.originalFrame, el.resultFrame], bitmap.width, bitmap.height);
      drawResult();
      drawMask();
      const total = (performance.now() - started) / 1000;
      const server = Number(response.headers.get("X-Carmask-Seconds"));
      const model = response.headers.get("X-Carmask-Model") || "?";
      const size = (response.headers.get("X-Image-Size") || `${bitmap.width}x${bitmap.height}`).replace("x", "×");
      const onto = state.placed ? ` onto a ${bitmap.width}×${bitmap.height} canvas` : "";
      setStatus(`Done: ${size} cut out${onto} by the ${model} model in ${server.toFixed(2)} s on the server ` +
        `(${total.toFixed(2)} s round trip).`, "done");
      showWarnings(response.headers.get("X-Carmask-Warnings"));
    } catch (error) {
      if (error.name === "AbortError" || sequence !== state.sequence) return;
      showError(error instanceof TypeError
        ? "Could not reach the server. Is it still running?"
        : `Could not read the server's answer (${error.message}).`);
    } finally {
      if (state.request === controller) state.request = null;
    }
  }

  // ---- inputs ------------------------------------------------------------------------------
  async function takePhoto(file) {
    if (!file) return;
    clearError();
    el.fileName.textContent = `${file.name} · ${megabytes(file.size)}`;
    if (state.maxBytes && file.size > state.maxBytes) {
      resetPanes();
      state.file = null;
      showError(`${file.name} is ${megabytes(file.size)}, over the upload limit of ${megabytes(state.maxBytes)}.`);
      return;
    }
    resetPanes();
    state.file = file;
    const request = requestCutout(); // the server judges the file; its message is the one shown
    try {
      const photo = await createImageBitmap(file);
      if (state.file !== file) { photo.close(); return; }
      state.photo = photo;
      setAspect(state.cutout ? [el.originalFrame] : [el.originalFrame, el.resultFrame], photo.width, photo.height);
      drawOriginal();
      drawMask();
    } catch (_) {
      // the browser cannot decode it; the server's answer says why (or cuts it out anyway)
    }
    await request;
  }

  async function takeBackdrop(file) {
    if (!file) return;
    try {
      const bitmap = await createImageBitmap(file);
      if (state.backdrop) state.backdrop.close();
      state.backdrop = bitmap;
      el.bgImageName.textContent = `${file.name} · ${bitmap.width}×${bitmap.height}`;
      $("bg-mode-image").checked = true;
      drawResult();
      updateDownload();
    } catch (_) {
      showError(`${file.name} is not an image this browser can read.`);
    }
  }

  function download() {
    if (!state.cutout) return;
    const stem = (state.file && state.file.name ? state.file.name : "photo").replace(/\.[^.]+$/, "");
    const mode = backgroundMode();
    const save = (blob, name) => {
      const url = URL.createObjectURL(blob);
      const link = document.createElement("a");
      link.href = url;
      link.download = name;
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    };
    if (mode === "transparent" || (mode === "image" && !state.backdrop)) {
      save(state.cutoutBlob, `${stem}-cutout.png`); // the server's own PNG, byte for byte
      return;
    }
    composeInto(el.resultCanvas); // already full resolution; redraw in case anything changed
    el.resultCanvas.toBlob((blob) => {
      if (blob) save(blob, `${stem}-cutout-${mode === "color" ? el.bgColor.value.slice(1) : "background"}.png`);
      else showError("The browser could not encode the image.");
    }, "image/png");
  }

  // sliders ask again once they rest, not at every step
  let sliderTimer = null;
  const requestSoon = () => {
    clearTimeout(sliderTimer);
    sliderTimer = setTimeout(requestCutout, SLIDER_DEBOUNCE_MS);
  };
  el.feather.addEventListener("input", () => {
    el.featherValue.textContent = `${Number(el.feather.value)} px`;
    requestSoon();
  });
  el.margin.addEventListener("input", () => {
    el.marginValue.textContent = `${Math.round(Number(el.margin.value) * 100)}%`;
    requestSoon();
  });
  el.canvas.addEventListener("change", () => {
    el.canvasOptions.disabled = !el.canvas.value;
    requestCutout();
  });
  for (const radio of document.querySelectorAll('input[name="align"]')) {
    radio.addEventListener("change", () => requestCutout());
  }
  el.hardEdges.addEventListener("change", () => {
    el.feather.disabled = el.hardEdges.checked;
    requestCutout();
  });
  for (const box of [el.shadow, el.largest]) box.addEventListener("change", () => requestCutout());
  el.maskToggle.addEventListener("change", drawMask);
  for (const radio of document.querySelectorAll('input[name="bg-mode"]')) {
    radio.addEventListener("change", () => {
      if (radio.value === "image" && !state.backdrop) el.bgImageInput.click();
      drawResult();
      updateDownload();
    });
  }
  el.bgColor.addEventListener("input", () => {
    el.bgColorValue.textContent = el.bgColor.value;
    $("bg-mode-color").checked = true;
    drawResult();
    updateDownload();
  });
  el.bgImageInput.addEventListener("change", () => takeBackdrop(el.bgImageInput.files[0]));
  el.fileInput.addEventListener("change", () => takePhoto(el.fileInput.files[0]));
  el.download.addEventListener("click", download);

  // drag and drop anywhere on the page
  let dragDepth = 0;
  const hasFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    el.dropzone.classList.add("dragging");
  });
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) el.dropzone.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    el.dropzone.classList.remove("dragging");
    const file = Array.from(event.dataTransfer.files).find((f) => !f.type || f.type.startsWith("image/"))
      || event.dataTransfer.files[0];
    takePhoto(file);
  });

  // a reload may restore the form's values: the page follows them
  el.canvasOptions.disabled = !el.canvas.value;
  el.marginValue.textContent = `${Math.round(Number(el.margin.value) * 100)}%`;
  updateDownload();
  loadModelInfo();
})();
