// The page's behaviour: upload -> caption, word buttons -> attention heat map, search -> photo grid.
"use strict";

const $ = (id) => document.getElementById(id);
let attention = [];  // one G x G grid per caption word

// The access token of a page shared on a network: given once in the address, as /#token=... (a
// fragment never reaches the server or its log) or /?token=...; kept for this tab only and taken
// out of the address bar; sent as a header on every API call, never in a URL.
const token = (() => {
  const params = new URLSearchParams(window.location.search);
  const given = new URLSearchParams(window.location.hash.slice(1)).get("token") || params.get("token");
  if (given) {
    sessionStorage.setItem("token", given);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", window.location.pathname + (rest ? `?${rest}` : ""));
  }
  return sessionStorage.getItem("token");
})();

function api(path, options = {}) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  return fetch(path, { ...options, headers });
}

function showMessage(element, text) {
  element.textContent = text;
  element.hidden = !text;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.detail || `The server answered ${response.status}.`;
  } catch {
    return `The server answered ${response.status}.`;
  }
}

// jet-like colour of a weight in [0, 1]
function colour(value) {
  const r = Math.min(1, Math.max(0, 1.5 - Math.abs(4 * value - 3)));
  const g = Math.min(1, Math.max(0, 1.5 - Math.abs(4 * value - 2)));
  const b = Math.min(1, Math.max(0, 1.5 - Math.abs(4 * value - 1)));
  return [255 * r, 255 * g, 255 * b];
}

// draw one word's grid over the photo: a G x G image, scaled up with smoothing (bilinear)
function drawHeatmap(grid) {
  const canvas = $("heatmap");
  const image = $("preview");
  canvas.width = image.naturalWidth || image.width;
  canvas.height = image.naturalHeight || image.height;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!grid) return;
  const size = grid.length;
  const peak = Math.max(...grid.flat()) || 1;
  const small = document.createElement("canvas");
  small.width = small.height = size;
  const pixels = small.getContext("2d").createImageData(size, size);
  grid.flat().forEach((weight, i) => {
    const [r, g, b] = colour(weight / peak);
    pixels.data.set([r, g, b, 150], 4 * i);
  });
  small.getContext("2d").putImageData(pixels, 0, 0);
  context.imageSmoothingEnabled = true;
  context.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function selectWord(index) {
  document.querySelectorAll("#words button").forEach((button, i) => {
    button.setAttribute("aria-pressed", String(i === index));
  });
  drawHeatmap(attention[index]);
  $("heatmap").dataset.word = String(index);
}

async function caption(file) {
  showMessage($("message"), "");
  $("result").hidden = true;
  $("caption").textContent = "";
  const form = new FormData();
  form.append("photo", file);
  let response;
  try {
    response = await api("/api/caption", { method: "POST", body: form });
  } catch {
    showMessage($("message"), "The server cannot be reached.");
    return;
  }
  if (!response.ok) {
    showMessage($("message"), await errorText(response));
    return;
  }
  const body = await response.json();
  attention = body.attention;
  const image = $("preview");
  image.onload = () => drawHeatmap(null);
  image.src = URL.createObjectURL(file);
  image.alt = body.caption;
  $("caption").textContent = body.caption || "(the model found no words for this photo)";
  const words = $("words");
  words.replaceChildren();
  body.words.forEach((word, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = word;
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", () => selectWord(i));
    words.append(button);
  });
  $("result").hidden = false;
}

async function search(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  const results = $("results");
  results.replaceChildren();
  if (!query) {
    showMessage($("search-message"), "Type what the photos should show, then search.");
    return;
  }
  showMessage($("search-message"), "");
  let response;
  try {
    response = await api(`/api/search?q=${encodeURIComponent(query)}&top=12`);
  } catch {
    showMessage($("search-message"), "The server cannot be reached.");
    return;
  }
  if (!response.ok) {
    showMessage($("search-message"), await errorText(response));
    return;
  }
  const body = await response.json();
  if (body.unknown.length && !body.notice) {
    showMessage($("search-message"), `The model has never seen: ${body.unknown.join(", ")}.`);
  }
  if (body.notice) {  // no word of the query is known: the order says nothing, and the results say so
    const notice = document.createElement("p");
    notice.className = "notice results-notice";
    notice.textContent = `${body.notice[0].toUpperCase()}${body.notice.slice(1)}.`;
    results.append(notice);
  }
  for (const hit of body.results) {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.alt = hit.caption;
    showPhoto(image, hit.url);
    const text = document.createElement("figcaption");
    text.textContent = hit.caption;
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = body.notice ? `${hit.name} · no known word` : `${hit.name} · score ${hit.score.toFixed(2)}`;
    text.append(score);
    figure.append(image, text);
    results.append(figure);
  }
}

// a searched photo, fetched with the token (an <img src> could not send it)
async function showPhoto(image, url) {
  try {
    const response = await api(url);
    if (response.ok) image.src = URL.createObjectURL(await response.blob());
  } catch {
    // the photo stays empty; its caption and name are shown
  }
}

async function start() {
  let response;
  try {
    response = await api("/api/status");
  } catch {
    showMessage($("status"), "The server cannot be reached.");
    return;
  }
  if (!response.ok) {
    showMessage($("status"), await errorText(response));
    return;
  }
  const body = await response.json();
  const photos = body.photos ? `${body.photos} photos to search.` : "";
  showMessage($("status"), [body.message, photos].filter(Boolean).join(" "));
  showMessage($("notice"), body.notice ? `Note: ${body.notice}.` : "");
  $("photo").addEventListener("change", (event) => {
    if (event.target.files.length) caption(event.target.files[0]);
    event.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) caption(event.dataTransfer.files[0]);
  });
  $("speak").addEventListener("click", () => {
    const utterance = new SpeechSynthesisUtterance($("caption").textContent);
    window.speechSynthesis.cancel();
    window.speechSynthesis.speak(utterance);
  });
  $("search").addEventListener("submit", search);
}

start();
