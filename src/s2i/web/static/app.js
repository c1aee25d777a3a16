// speech2image web app: record / upload / sample -> POST /api/generate -> Server-Sent Events -> page.
// No framework and no external assets: the app serves this file itself.
"use strict";

const $ = (id) => document.getElementById(id);
const GALLERY_KEY = "s2i-gallery";
const GALLERY_MAX = 12;
const state = { options: null, recorder: null, lastAudio: null, controller: null, gallery: [], autoStop: null, jobId: null };

function setStatus(text) { $("status").textContent = text; }

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
  // The app's x-request-id for this job: what an operator searches the logs for.
  const ref = $("job-ref");
  ref.textContent = text && state.jobId ? `Job reference (for a support request): ${state.jobId}` : "";
  ref.hidden = !ref.textContent;
}

function setBusy(busy) {
  for (const id of ["sample", "again", "upload"]) $(id).disabled = busy || (id === "again" && !state.lastAudio);
  $("record").disabled = busy && !state.recorder;
  $("cancel").disabled = !busy;
}

async function loadOptions() {
  const response = await fetch("/api/options");
  if (!response.ok) throw new Error(`options: HTTP ${response.status}`);
  const options = await response.json();
  state.options = options;
  fillSelect($("scheduler"), options.schedulers.map((s) => [s, s]), true);
  fillSelect($("size"), options.sizes.map((s) => [s, s === "default" ? "model default" : s.replace("x", " × ")]));
  fillSelect($("style"), options.styles.map((s) => [s.name, `${s.name} — ${s.description}`]));
  $("style").value = options.default_style;
  fillSelect($("emotion-override"), options.emotions.map((e) => [e, e]), true);
  $("steps").max = options.max_steps;
  $("limits").textContent =
    `Clips up to ${options.max_duration_s} s and ${(options.max_upload_bytes / 1e6).toFixed(0)} MB: ` +
    "WAV, FLAC, Ogg/Opus, WebM, MP3 or M4A.";
  $("sample-text").textContent = `Sample: “${options.sample.hindi}” (${options.sample.english})`;
}

function fillSelect(select, entries, keepFirst = false) {
  if (!keepFirst) select.textContent = "";
  for (const [value, label] of entries) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    select.append(option);
  }
}

function queryString() {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData($("options"))) {
    if (String(value).trim() !== "") params.set(name, String(value).trim());
  }
  return params.toString();
}

// Recording.
async function toggleRecording() {
  if (state.recorder) { state.recorder.stop(); return; }
  showError("");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    showError("The microphone is not available (permission refused, or no microphone). You can upload a file instead.");
    return;
  }
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  recorder.ondataavailable = (event) => { if (event.data.size) chunks.push(event.data); };
  recorder.onstop = () => {
    clearTimeout(state.autoStop);
    stream.getTracks().forEach((track) => track.stop());
    state.recorder = null;
    $("record").setAttribute("aria-pressed", "false");
    $("record").textContent = "● Record";
    const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
    submit(blob, "your recording");
  };
  state.recorder = recorder;
  recorder.start();
  $("record").setAttribute("aria-pressed", "true");
  $("record").textContent = "■ Stop";
  setStatus(`Recording… press Stop when done (at most ${state.options.max_duration_s} s).`);
  // Stop a little before the limit, so the clip is never refused for being long.
  state.autoStop = setTimeout(() => recorder.state === "recording" && recorder.stop(),
    Math.max(1, state.options.max_duration_s - 0.5) * 1000);
}

// One job: upload, then read the event stream.
async function submit(blob, what) {
  state.jobId = null;
  showError("");
  if (blob.size > state.options.max_upload_bytes) {
    showError(`The file is ${(blob.size / 1e6).toFixed(1)} MB; the limit is ${(state.options.max_upload_bytes / 1e6).toFixed(1)} MB.`);
    return;
  }
  state.lastAudio = { blob, what };
  resetResult();
  setStatus(`Sending ${what}…`);
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const started = performance.now();
  try {
    const response = await fetch(`/api/generate?${queryString()}`, {
      method: "POST",
      body: blob,
      headers: { "content-type": blob.type || "application/octet-stream" },
      signal: controller.signal,
    });
    state.jobId = response.headers.get("x-request-id");
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      showError(body.error || `The app refused the request (HTTP ${response.status}).`);
      setStatus("Nothing was made.");
      return;
    }
    await readEvents(response, started);
  } catch (error) {
    if (error.name === "AbortError") {
      setStatus("Cancelled.");
    } else {
      showError("The web app is not reachable; check your connection and try again.");
      setStatus("Nothing was made.");
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

async function readEvents(response, started) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      handleEvent(event, JSON.parse(data || "{}"), started);
    }
  }
}

const handlers = {
  audio(data) {
    const heard = $("heard");
    if (data.wav) { heard.src = data.wav; heard.hidden = false; }
    $("heard-info").textContent = ` ${data.duration_s.toFixed(1)} s (${data.container})`;
    setStatus("Translating and listening for the emotion…");
  },
  text(data) {
    showTexts(data);
    setStatus("Painting…");
  },
  preview(data, elapsed) {
    const image = $("image");
    image.src = data.png;
    image.alt = `Preview after ${data.step} denoising steps`;
    state.previews += 1;
    $("image").dataset.previews = String(state.previews);
    if (state.firstPreview === null) state.firstPreview = elapsed;
    $("progress").textContent = `Step ${data.step}…`;
  },
  image(data, elapsed) {
    showTexts(data);
    const image = $("image");
    image.src = data.png;
    image.alt = `Image for “${data.text}” (${data.emotion}), seed ${data.seed}`;
    image.dataset.final = "true";
    const download = $("download");
    download.href = data.png;
    download.download = `speech2image-${data.seed}.png`;
    download.hidden = false;
    $("progress").textContent = `Done: ${data.step} steps, seed ${data.seed}.`;
    const first = state.firstPreview === null ? "no previews" : `first preview after ${state.firstPreview.toFixed(1)} s`;
    $("timing").textContent = `${first}, image after ${elapsed.toFixed(1)} s`;
    setStatus("Done. The image is below; download it or make another.");
    addToGallery({ png: data.png, text: data.text, emotion: data.emotion, seed: data.seed });
  },
  error(data) {
    showError(data.message);
    setStatus("Nothing was made.");
  },
};

function handleEvent(event, data, started) {
  const handler = handlers[event];
  if (handler) handler(data, (performance.now() - started) / 1000);
}

function resetResult() {
  state.previews = 0;
  state.firstPreview = null;
  const image = $("image");
  image.removeAttribute("src");
  image.alt = "No image yet";
  delete image.dataset.final;
  image.dataset.previews = "0";
  $("download").hidden = true;
  $("heard").hidden = true;
  for (const id of ["heard-info", "translation", "transcript", "emotion", "prompt", "timing"]) $(id).textContent = "—";
  $("emotion-chart").textContent = "";
  $("progress").textContent = "Working…";
}

function showTexts(data) {
  $("translation").textContent = data.text || "(nothing recognised)";
  $("transcript").textContent = data.transcript || "—";
  const detected = data.detected_emotion;
  $("emotion").textContent = data.emotion === detected
    ? `${detected} (${(100 * data.scores[detected]).toFixed(0)}%)`
    : `${data.emotion} (chosen; detected ${detected})`;
  $("emotion").dataset.emotion = data.emotion;
  $("prompt").textContent = data.prompt;
  drawChart(data.scores, detected);
}

// Emotion probabilities as a horizontal bar chart in plain SVG.
function drawChart(scores, top) {
  const svg = $("emotion-chart");
  const ns = "http://www.w3.org/2000/svg";
  svg.textContent = "";
  const entries = Object.entries(scores);
  const row = 200 / entries.length;
  const make = (tag, attributes, text) => {
    const element = document.createElementNS(ns, tag);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    if (text !== undefined) element.textContent = text;
    svg.append(element);
  };
  entries.forEach(([label, p], index) => {
    const y = index * row;
    make("text", { x: 0, y: y + row * 0.7 }, label);
    make("rect", { class: label === top ? "bar top" : "bar", x: 80, y: y + 3, height: row - 6, width: Math.max(1, 170 * p) });
    make("text", { x: 255, y: y + row * 0.7 }, `${(100 * p).toFixed(1)}%`);
  });
  svg.setAttribute("aria-label",
    "Emotion probabilities: " + entries.map(([label, p]) => `${label} ${(100 * p).toFixed(0)}%`).join(", "));
}

// The session's gallery (this tab only: sessionStorage, bounded).
function addToGallery(item) {
  state.gallery.unshift(item);
  state.gallery = state.gallery.slice(0, GALLERY_MAX);
  try { sessionStorage.setItem(GALLERY_KEY, JSON.stringify(state.gallery)); } catch (error) { /* full: keep in memory */ }
  renderGallery();
}

function renderGallery() {
  const list = $("gallery");
  list.textContent = "";
  $("gallery-empty").hidden = state.gallery.length > 0;
  for (const item of state.gallery) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.title = `${item.text} (${item.emotion}, seed ${item.seed})`;
    button.setAttribute("aria-label", `Show image: ${item.text} (${item.emotion}, seed ${item.seed})`);
    const image = document.createElement("img");
    image.src = item.png;
    image.alt = "";  // the button's label describes it
    button.append(image);
    button.addEventListener("click", () => {
      $("image").src = item.png;
      $("image").alt = `Image for “${item.text}” (${item.emotion}), seed ${item.seed}`;
      $("download").href = item.png;
      $("download").download = `speech2image-${item.seed}.png`;
      $("download").hidden = false;
      $("results").focus();
    });
    li.append(button);
    list.append(li);
  }
}

async function useSample() {
  showError("");
  setStatus("Fetching the sample…");
  try {
    const response = await fetch("/api/sample.wav");
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      showError(body.error || `The sample is not available (HTTP ${response.status}).`);
      return;
    }
    await submit(await response.blob(), "the sample");
  } catch (error) {
    showError("The web app is not reachable; check your connection and try again.");
  }
}

function init() {
  try { state.gallery = JSON.parse(sessionStorage.getItem(GALLERY_KEY) || "[]"); } catch (error) { state.gallery = []; }
  renderGallery();
  $("record").addEventListener("click", toggleRecording);
  $("sample").addEventListener("click", useSample);
  $("again").addEventListener("click", () => state.lastAudio && submit(state.lastAudio.blob, state.lastAudio.what));
  $("cancel").addEventListener("click", () => state.controller && state.controller.abort());
  $("upload").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (file) submit(file, file.name);
  });
  $("options").addEventListener("submit", (event) => event.preventDefault());
  if (!window.MediaRecorder || !navigator.mediaDevices) {
    $("record").disabled = true;
    $("record").title = "This browser cannot record; upload a file instead.";
  }
  loadOptions().then(() => { setStatus("Ready. Record, upload or use the sample."); setBusy(false); })
    .catch(() => showError("The web app is not reachable; reload the page."));
}

document.addEventListener("DOMContentLoaded", init);
