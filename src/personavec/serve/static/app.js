// personavec dashboard: a chat whose tokens are coloured by their persona readings.
// Plain JavaScript, no build step; talks to the same server's OpenAI-compatible API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, vectors: [], messages: [], answers: [], busy: false };

function headers() {
  const key = localStorage.getItem("personavec-key") || "";
  const out = { "Content-Type": "application/json" };
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function getJson(path) {
  const response = await fetch(path, { headers: headers() });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) throw new Error("This server needs an API key: enter it above.");
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

async function load() {
  showError("");
  try {
    const models = await getJson("/v1/models");
    state.model = models.data[0].id;
    $("model").textContent = state.model;
    state.vectors = (await getJson("/v1/vectors")).data;
    renderVectors();
  } catch (err) {
    $("model").textContent = "not connected";
    showError(err.message);
  }
}

function sliderRange(vector) {
  const c = vector.calibration ? Math.abs(vector.calibration.coef) : 0;
  const max = c > 0 ? 3 * c : 10;
  return { max, step: max / 60 };
}

function renderVectors() {
  const box = $("vectors");
  const select = $("colour-by");
  box.innerHTML = "";
  select.innerHTML = "";
  if (!state.vectors.length) {
    box.innerHTML = '<p class="muted">No vectors loaded (start the server with --vectors DIR).</p>';
  }
  for (const v of state.vectors) {
    const range = sliderRange(v);
    const unit = v.calibration ? v.calibration.unit : "raw";
    const calibrated = v.calibration ? `calibrated coef ${v.calibration.coef} (${unit})` : "uncalibrated";
    const el = document.createElement("div");
    el.className = "vector";
    el.dataset.vector = v.name;
    el.innerHTML = `
      <div class="name">${escapeHtml(v.name)}</div>
      <div class="meta">trait ${escapeHtml(v.trait)} · layer ${v.recommended_layer ?? "?"} · ${calibrated}</div>
      <label>steer <input type="range" class="slider" min="${-range.max}" max="${range.max}"
        step="${range.step}" value="0"><span class="coef">0</span></label>
      <label>warn above <input type="number" class="threshold" step="any" placeholder="none"></label>
      <div class="meter" data-vector="${escapeHtml(v.name)}" data-last="" data-mean="">
        last <b class="last">–</b> · mean <b class="mean">–</b>
        <div class="bar"><span></span></div>
      </div>`;
    const slider = el.querySelector(".slider");
    slider.addEventListener("input", () => {
      el.querySelector(".coef").textContent = Number(slider.value).toFixed(2);
    });
    box.appendChild(el);
    const option = document.createElement("option");
    option.value = option.textContent = v.name;
    select.appendChild(option);
  }
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function steering() {
  const out = [];
  for (const el of document.querySelectorAll(".vector")) {
    const coef = Number(el.querySelector(".slider").value);
    if (coef !== 0) out.push({ vector: el.dataset.vector, coef });
  }
  return out;
}

function thresholds() {
  const out = {};
  for (const el of document.querySelectorAll(".vector")) {
    const raw = el.querySelector(".threshold").value;
    if (raw !== "") out[el.dataset.vector] = Number(raw);
  }
  return out;
}

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = "msg " + role;
  el.innerHTML = `<span class="who">${role}</span>`;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  el.appendChild(body);
  $("conversation").appendChild(el);
  el.scrollIntoView({ block: "end" });
  return body;
}

// ---- readings -----------------------------------------------------------------------------
class Answer {
  constructor(body) {
    this.body = body;
    this.text = "";
    this.spans = [];
    this.values = {}; // vector → list of values over the answer
  }

  addToken(token) {
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = token.text;
    span.dataset.id = token.id;
    span.dataset.values = JSON.stringify(token.values || {});
    span.title = Object.entries(token.values || {}).map(([k, v]) => `${k}: ${v.toFixed(3)}`).join("\n");
    this.body.appendChild(span);
    this.spans.push(span);
    this.text += token.text;
    for (const [name, value] of Object.entries(token.values || {})) {
      (this.values[name] = this.values[name] || []).push(value);
    }
    this.recolour();
    this.updateMeters();
    this.body.parentElement.scrollIntoView({ block: "end" });
  }

  recolour() {
    const name = $("colour-by").value;
    const all = this.values[name] || [];
    const scale = Math.max(1e-6, ...all.map(Math.abs));
    for (const span of this.spans) {
      const value = JSON.parse(span.dataset.values)[name];
      if (value === undefined) { span.style.background = ""; continue; }
      const alpha = (0.65 * Math.abs(value)) / scale;
      const rgb = value >= 0 ? "var(--pos)" : "var(--neg)";
      span.style.background = `rgba(${rgb}, ${alpha.toFixed(3)})`;
    }
  }

  updateMeters() {
    for (const meter of document.querySelectorAll(".meter")) {
      const values = this.values[meter.dataset.vector];
      if (!values || !values.length) continue;
      const last = values[values.length - 1];
      const mean = values.reduce((a, b) => a + b, 0) / values.length;
      meter.dataset.last = String(last);
      meter.dataset.mean = String(mean);
      meter.querySelector(".last").textContent = last.toFixed(2);
      meter.querySelector(".mean").textContent = mean.toFixed(2);
      const scale = Math.max(1e-6, ...values.map(Math.abs));
      const bar = meter.querySelector(".bar span");
      const width = 50 * Math.min(1, Math.abs(mean) / scale);
      bar.style.left = mean >= 0 ? "50%" : `${50 - width}%`;
      bar.style.width = `${width}%`;
      bar.style.background = mean >= 0 ? "rgba(var(--pos), .7)" : "rgba(var(--neg), .7)";
    }
  }
}

function showWarning(promptLast) {
  const box = $("warning");
  if (!promptLast) { box.hidden = true; return; }
  const limits = thresholds();
  const over = Object.entries(promptLast).filter(([k, v]) => limits[k] !== undefined && v > limits[k]);
  const parts = Object.entries(promptLast).map(([k, v]) => `${k} ${v.toFixed(2)}`);
  box.textContent = (over.length ? "⚠ Warning before answering — " : "Last prompt token, before answering: ") + parts.join(" · ");
  box.dataset.values = JSON.stringify(promptLast);
  box.classList.toggle("alert", over.length > 0);
  box.hidden = false;
}

// ---- sending ------------------------------------------------------------------------------
async function send(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || state.busy) return;
  state.busy = true;
  $("send").disabled = true;
  showError("");
  state.messages.push({ role: "user", content: text });
  addMessage("user", text);
  $("message").value = "";
  const answer = new Answer(addMessage("assistant", ""));
  state.answers.push(answer);
  document.body.dataset.state = "streaming";
  const body = {
    model: state.model,
    messages: state.messages,
    stream: true,
    temperature: Number($("temperature").value || 0),
    max_tokens: Number($("max-tokens").value || 64),
    monitor: state.vectors.map((v) => v.name),
    steering: steering(),
  };
  try {
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || response.statusText);
    }
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      const persona = choice.persona || {};
      if ("prompt_last" in persona) showWarning(persona.prompt_last);
      for (const token of persona.tokens || []) answer.addToken(token);
      if (!persona.tokens && choice.delta && choice.delta.content) answer.addToken({ text: choice.delta.content, id: -1, values: {} });
      if (choice.finish_reason) answer.body.parentElement.dataset.finish = choice.finish_reason;
    });
    state.messages.push({ role: "assistant", content: answer.text });
  } catch (err) {
    state.messages.pop();
    showError(err.message);
  } finally {
    state.busy = false;
    $("send").disabled = false;
    document.body.dataset.state = "idle";
  }
}

async function readEvents(response, onChunk) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onChunk(JSON.parse(data));
      }
    }
  }
}

// ---- wiring -------------------------------------------------------------------------------
$("api-key").value = localStorage.getItem("personavec-key") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("personavec-key", $("api-key").value.trim());
  load();
});
$("composer").addEventListener("submit", send);
$("message").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("reset").addEventListener("click", () => {
  state.messages = [];
  state.answers = [];
  $("conversation").innerHTML = "";
  $("warning").hidden = true;
  showError("");
});
$("colour-by").addEventListener("change", () => {
  for (const answer of state.answers) answer.recolour();
});
document.body.dataset.state = "idle";
load();
