// The recursivemas playground: plain JavaScript over the server's own OpenAI-compatible API, nothing else.
//
// - GET v1/models fills the topology list; POST v1/chat/completions with stream: true streams the answer. fetch and
//   a ReadableStream reader, not EventSource: EventSource can neither POST nor send the Authorization header.
// - A topology whose templates name fields ({context}, ...) lists them in its model card (recursivemas.fields):
//   the page shows a box per field, labelled by its name, and sends what is typed as recursivemas.context (the
//   context field) or recursivemas.fields.NAME; an empty box is not sent, so the server names what is missing.
// - The per-turn timeline grows live: with stream_options.include_turns the server sends a named
//   `recursivemas.turn` event as each agent turn finishes (OpenAI clients skip named events), and a row appears
//   per event while the agents think; the final usage chunk (include_usage) then redraws it with the run's totals.
// - An API key, when the server wants one, lives in sessionStorage (this tab only) and goes out as
//   `Authorization: Bearer KEY`; a 401 asks for it.
// - Text from the server is set with textContent only, never parsed as HTML.
"use strict";

const KEY_STORE = "recursivemas.apiKey";
const SVG_NS = "http://www.w3.org/2000/svg"; // a namespace name, not a URL that is fetched
const $ = (id) => document.getElementById(id);
const CONTEXT = "context";
const modelFields = {}; // topology -> the fields its templates name (from its model card)
const fieldText = {}; // field name -> the text typed, kept across topologies that name the same field

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

function apiHeaders(json) {
  const headers = json ? {"content-type": "application/json"} : {};
  if (apiKey()) headers.authorization = "Bearer " + apiKey();
  return headers;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

function askForKey(message) {
  $("auth").hidden = false;
  $("auth-message").textContent = message;
  $("auth-message").classList.add("error");
  $("api-key").focus();
}

// The message of an OpenAI error body (or the HTTP status), and on a 401 the key field.
async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON: keep the status line */ }
  if (response.status === 401) askForKey(message);
  return new Error(message);
}

async function loadModels() {
  setStatus("Loading topologies...");
  const response = await fetch("v1/models", {headers: apiHeaders(false)});
  if (!response.ok) throw await apiError(response);
  const cards = (await response.json()).data;
  const names = cards.map((m) => m.id);
  for (const card of cards) modelFields[card.id] = (card.recursivemas && card.recursivemas.fields) || [];
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(...names.map((name) => new Option(name, name)));
  if (names.includes(previous)) select.value = previous;
  showFields();
  $("send").disabled = names.length === 0;
  $("auth-message").classList.remove("error");
  if (apiKey()) $("auth-message").textContent = "Key accepted (kept in this tab only).";
  setStatus(`${names.length} topolog${names.length === 1 ? "y" : "ies"} served`);
}

function fieldBoxId(name) {
  return name === CONTEXT ? "context" : "field-" + name;
}

// A labelled box per field the selected topology names (the field's name is the label); none: the boxes hide.
function showFields() {
  const box = $("fields");
  for (const area of box.querySelectorAll("textarea")) fieldText[area.dataset.field] = area.value;
  const names = modelFields[$("model").value] || [];
  box.replaceChildren(...names.map((name) => {
    const label = document.createElement("label");
    const title = document.createElement("span");
    title.textContent = name === CONTEXT ? "Context" : name;
    title.title = `the text of {${name}}: only the agents whose templates name it see it`;
    const area = document.createElement("textarea");
    area.id = fieldBoxId(name);
    area.dataset.field = name;
    area.rows = 3;
    area.placeholder = `{${name}}: text only the agents that name it read`;
    area.value = fieldText[name] || "";
    label.append(title, area);
    return label;
  }));
  box.hidden = names.length === 0;
}

// The recursivemas extension: every non-empty field box (context as recursivemas.context), or null for none.
function fieldsExtension() {
  const ext = {};
  for (const area of $("fields").querySelectorAll("textarea")) {
    if (area.value === "") continue;
    if (area.dataset.field === CONTEXT) ext.context = area.value;
    else (ext.fields = ext.fields || {})[area.dataset.field] = area.value;
  }
  return Object.keys(ext).length ? ext : null;
}

function requestBody(mode) {
  const body = {
    model: $("model").value,
    messages: [{role: "user", content: $("prompt").value}],
    mode,
    stream: true,
    stream_options: {include_usage: true, include_turns: true},
  };
  const fields = [["rounds", "rounds"], ["latent-steps", "latent_steps"], ["max-tokens", "max_tokens"],
                  ["temperature", "temperature"]];
  for (const [id, field] of fields) {
    const raw = $(id).value.trim();
    if (raw !== "") body[field] = Number(raw); // a bad number goes as null: the server says what is wrong
  }
  const ext = fieldsExtension();
  if (ext) body.recursivemas = ext;
  return body;
}

// One server-sent event's data (its `data:` lines joined, one leading space dropped from each).
function eventData(event) {
  return event.split("\n").filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5)).join("\n");
}

// One server-sent event's name (its `event:` line), or null for an unnamed (OpenAI) event.
function eventName(event) {
  const line = event.split("\n").find((l) => l.startsWith("event:"));
  return line ? line.slice(6).trim() : null;
}

// Stream one completion into `panel`; resolves to {text, usage, finish} at [DONE].
async function streamCompletion(body, panel) {
  const response = await fetch("v1/chat/completions",
                               {method: "POST", headers: apiHeaders(true), body: JSON.stringify(body)});
  if (!response.ok) throw await apiError(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const run = {text: "", usage: null, finish: null};
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return run;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      const data = eventData(event);
      buffer = buffer.slice(cut + 2);
      if (!data) continue;
      if (data === "[DONE]") return run;
      const chunk = JSON.parse(data);
      if (eventName(event) === "recursivemas.turn") {
        addTurn(panel, chunk.turn);
        continue;
      }
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) run.usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) {
          run.text += choice.delta.content;
          panel.answer.textContent = run.text;
        }
        if (choice.finish_reason) run.finish = choice.finish_reason;
      }
    }
  }
}

// A result panel from the template; ids get `suffix` ("" for one run, "-latent" / "-text" side by side).
function newPanel(title, suffix) {
  const node = $("run-template").content.firstElementChild.cloneNode(true);
  node.id = "run" + suffix;
  const panel = {
    node,
    answer: node.querySelector(".answer"),
    summary: node.querySelector(".summary"),
    turns: node.querySelector(".turns"),
  };
  node.querySelector(".run-title").textContent = title;
  panel.answer.id = "answer" + suffix;
  panel.summary.id = "summary" + suffix;
  panel.turns.id = "turns" + suffix;
  $("results").append(node);
  return panel;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = String(text);
  if (className) td.className = className;
  return td;
}

// One row of the per-turn table (a timeline: rows in run order, a bar per turn for its wall time), as the turn
// arrives; the bars are scaled again to the longest turn so far.
function addTurn(panel, turn) {
  const tbody = panel.turns.tBodies[0];
  const last = tbody.rows.length ? tbody.rows[tbody.rows.length - 1].dataset.round : null;
  const row = tbody.insertRow();
  row.dataset.agent = turn.agent;
  row.dataset.round = String(turn.round);
  row.dataset.kind = turn.kind;
  row.dataset.wall = String(turn.wall_s);
  if (last !== null && last !== String(turn.round)) row.className = "new-round";
  cell(row, turn.round, "num");
  cell(row, turn.agent);
  cell(row, turn.kind, "kind kind-" + turn.kind);
  cell(row, turn.latent_steps, "num");
  cell(row, turn.decoded_tokens, "num");
  cell(row, turn.prompt_tokens, "num");
  const wall = cell(row, "", "wall");
  const bar = document.createElement("span");
  bar.className = "bar kind-" + turn.kind;
  const seconds = document.createElement("span");
  seconds.textContent = turn.wall_s.toFixed(3);
  wall.append(bar, seconds);
  cell(row, turn.tool_calls, "num");
  const rows = [...tbody.rows];
  const longest = Math.max(1e-9, ...rows.map((r) => Number(r.dataset.wall)));
  for (const r of rows) {
    r.querySelector(".bar").style.width = `${Math.max(2, Math.round(48 * Number(r.dataset.wall) / longest))}px`;
  }
  panel.turns.hidden = false;
}

// The final table, from the usage chunk (every turn, in run order), and the summary line.
function showTurns(panel, run) {
  const ext = run.usage.recursivemas;
  panel.turns.tBodies[0].replaceChildren();
  for (const turn of ext.turns) addTurn(panel, turn);
  panel.turns.hidden = false;
  panel.summary.textContent = `${ext.mode}, ${ext.rounds} round${ext.rounds === 1 ? "" : "s"}, ` +
    `${ext.latent_steps_total} latent steps, ${ext.decoded_tokens} decoded tokens (${ext.answer_tokens} in the ` +
    `answer), ${run.usage.prompt_tokens} prompt tokens, ${ext.wall_s.toFixed(2)} s, finish: ${run.finish}`;
}

function svg(name, attributes, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// Side by side: horizontal bars, latent vs text, for wall time and decoded tokens (each metric on its own scale).
function drawChart(runs) {
  const metrics = [
    ["wall time (s)", "wall_s", (u) => u.recursivemas.wall_s, (v) => v.toFixed(2)],
    ["decoded tokens", "decoded_tokens", (u) => u.recursivemas.decoded_tokens, (v) => String(v)],
  ];
  const modes = ["latent", "text"];
  const [left, width, barHeight, gap] = [120, 280, 16, 10];
  const height = metrics.length * (modes.length * barHeight + gap) + 4;
  const chart = svg("svg", {id: "chart", width: left + width + 110, height, role: "img",
                            "aria-label": "latent vs text: wall time and decoded tokens"});
  let y = 2;
  for (const [label, key, value, format] of metrics) {
    const values = modes.map((mode) => value(runs[mode].usage));
    const top = Math.max(...values, 1e-9);
    chart.append(svg("text", {x: 0, y: y + barHeight + 4, class: "metric"}, label));
    modes.forEach((mode, i) => {
      const length = Math.max(1, Math.round(width * values[i] / top));
      chart.append(svg("rect", {x: left, y, width: length, height: barHeight - 3, class: "kind-" + mode,
                                "data-mode": mode, "data-metric": key, "data-value": values[i]}));
      chart.append(svg("text", {x: left + length + 6, y: y + barHeight - 6, class: "value"},
                       `${mode} ${format(values[i])}`));
      y += barHeight;
    });
    y += gap;
  }
  const box = $("chart-box");
  const old = $("chart");
  if (old) old.remove();
  box.prepend(chart);
  box.hidden = false;
}

async function send(event) {
  event.preventDefault();
  if ($("send").disabled || !$("model").value) return;
  const mode = $("mode").value;
  const modes = mode === "compare" ? ["latent", "text"] : [mode];
  $("results").replaceChildren();
  $("chart-box").hidden = true;
  $("send").disabled = true;
  const runs = {};
  try {
    for (const m of modes) { // one after the other: side by side, their wall times must not share the machine
      const panel = newPanel(`${$("model").value}: ${m}`, modes.length > 1 ? "-" + m : "");
      setStatus(`Running ${m}...`);
      const run = await streamCompletion(requestBody(m), panel);
      if (!run.usage) throw new Error("the stream ended without its usage chunk");
      showTurns(panel, run);
      runs[m] = run;
    }
    if (modes.length > 1) drawChart(runs);
    setStatus("Done");
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    $("send").disabled = false;
  }
}

function saveKey() {
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  $("api-key").value = "";
  loadModels().catch((err) => setStatus(err.message, true));
}

function init() {
  $("request").addEventListener("submit", send);
  $("model").addEventListener("change", showFields);
  $("save-key").addEventListener("click", saveKey);
  $("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") saveKey(); });
  $("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORE); askForKey("Key forgotten."); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("request").requestSubmit();
  });
  if (apiKey()) $("auth").hidden = false;
  loadModels().catch((err) => setStatus(err.message, true));
}

document.addEventListener("DOMContentLoaded", init);
