// The service's page: classify dropped or chosen images, show their nearest neighbours, and
// search the index by text when the model embeds text too.
// Plain script, no build step and no network beyond this service: it ships in the package.
"use strict";

(() => {
  const TOP_K = 5;
  const NEIGHBORS = 8;
  const KEY_STORE = "headstart-api-key";
  // A few requests at a time: the service batches them, and a hundred dropped files must not
  // open a hundred connections at once.
  const PARALLEL = 4;

  const page = {
    key: sessionStorage.getItem(KEY_STORE),
    info: null,
    waiting: [], // images dropped before the service was ready (or before the key was given)
  };

  class ServiceError extends Error {}

  const element = (id) => document.getElementById(id);

  function setStatus(text, isError = false) {
    const status = element("status");
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  // Every refusal of the service is {"error": "one line"}; anything else (a proxy's page, a
  // dropped connection) still becomes one readable line.
  async function refusal(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") return body.error;
    } catch (_) {
      // not JSON: fall through
    }
    return `the service answered ${response.status} ${response.statusText}`.trim();
  }

  async function call(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (page.key) headers.set("Authorization", `Bearer ${page.key}`);
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch (_) {
      throw new ServiceError("the service cannot be reached");
    }
    if (response.status === 401) {
      askForKey(page.key ? "that key was refused; enter it again" : null);
      throw new ServiceError("the service needs its API key");
    }
    if (!response.ok) throw new ServiceError(await refusal(response));
    return response;
  }

  function askForKey(problem) {
    page.key = null;
    sessionStorage.removeItem(KEY_STORE);
    element("key-form").hidden = false;
    element("key").focus();
    if (problem) setStatus(problem, true);
  }

  async function loadInfo() {
    let response;
    try {
      response = await call("/v1/info");
    } catch (error) {
      if (!page.key && !element("key-form").hidden) return; // waits for the key
      setStatus(`${error.message}; trying again…`, true);
      setTimeout(loadInfo, 1000);
      return;
    }
    page.info = await response.json();
    showInfo(page.info);
    setStatus("");
    const waiting = page.waiting.splice(0);
    if (waiting.length) await classifyAll(waiting);
  }

  function showInfo(info) {
    element("model").textContent = `${info.model} (${info.dim}-d)`;
    element("head").textContent = info.head;
    const classes = info.classes;
    element("classes").textContent =
      classes.length <= 6 ? classes.join(", ") : `${classes.length} classes`;
    element("classes").title = classes.join(", ");
    element("index").textContent =
      info.index_size == null ? "none" : `${info.index_size.toLocaleString()} items`;
    // Search by text needs a model that embeds text and an index to search.
    element("text-form").hidden = !(info.text && info.index_size);
  }

  function newCard(title) {
    const card = element("result").content.firstElementChild.cloneNode(true);
    card.querySelector(".name").textContent = title;
    element("results").prepend(card);
    return card;
  }

  function addCard(file) {
    const card = newCard(file.name);
    const preview = card.querySelector(".preview");
    preview.src = URL.createObjectURL(file);
    preview.alt = file.name;
    // A damaged file shows no preview; the service's answer says why.
    preview.addEventListener(
      "error",
      () => {
        preview.removeAttribute("src");
        preview.alt = "";
      },
      { once: true },
    );
    return card;
  }

  function showError(card, message) {
    const error = card.querySelector(".error");
    error.textContent = message;
    error.hidden = false;
  }

  function showBars(card, top) {
    const bars = card.querySelector(".bars");
    bars.replaceChildren(
      ...top.map(({ label, probability }) => {
        const row = document.createElement("li");
        const name = document.createElement("span");
        name.className = "label";
        name.textContent = label;
        name.title = label;
        const track = document.createElement("span");
        track.className = "track";
        const fill = document.createElement("span");
        fill.className = "fill";
        fill.style.display = "block";
        fill.style.width = `${(probability * 100).toFixed(1)}%`;
        track.append(fill);
        const value = document.createElement("span");
        value.className = "value";
        value.textContent = `${(probability * 100).toFixed(1)}%`;
        row.append(name, track, value);
        return row;
      }),
    );
  }

  async function thumbnailOf(neighbor) {
    if (!neighbor.thumbnail) return null;
    try {
      // Fetched rather than linked, so the API key travels with it.
      const response = await call(neighbor.thumbnail);
      return URL.createObjectURL(await response.blob());
    } catch (_) {
      return null;
    }
  }

  async function showNeighbors(card, neighbors) {
    const section = card.querySelector(".neighbors");
    const items = await Promise.all(
      neighbors.map(async (neighbor) => {
        const item = document.createElement("li");
        const source = await thumbnailOf(neighbor);
        let picture;
        if (source) {
          picture = document.createElement("img");
          picture.src = source;
          picture.alt = neighbor.caption ?? neighbor.label ?? `item ${neighbor.id}`;
        } else {
          picture = document.createElement("span");
          picture.className = "no-thumbnail";
          picture.textContent = "no image";
        }
        const label = document.createElement("span");
        label.className = "neighbor-label";
        label.textContent = neighbor.label ?? "(unlabelled)";
        const similarity = document.createElement("span");
        similarity.className = "similarity";
        similarity.textContent = neighbor.similarity.toFixed(3);
        item.append(picture, label, similarity);
        if (neighbor.caption) item.title = neighbor.caption; // a shard's or table's caption
        return item;
      }),
    );
    section.querySelector("ul").replaceChildren(...items);
    section.hidden = items.length === 0;
  }

  async function classifyOne(file) {
    const card = addCard(file);
    const form = () => {
      const body = new FormData();
      body.append("files", file, file.name);
      return body;
    };
    try {
      const answer = await call(`/v1/classify?top_k=${TOP_K}`, { method: "POST", body: form() });
      const { results } = await answer.json();
      showBars(card, results[0].top);
      if (page.info && page.info.index_size) {
        const found = await call(`/v1/neighbors?k=${NEIGHBORS}`, { method: "POST", body: form() });
        await showNeighbors(card, (await found.json()).neighbors);
      }
      card.classList.add("done");
    } catch (error) {
      showError(card, error.message);
      card.classList.add("failed");
    }
  }

  async function classifyAll(files) {
    if (!page.info) {
      page.waiting.push(...files);
      setStatus("waiting for the service…");
      return;
    }
    const queue = [...files];
    setStatus(`classifying ${queue.length} image${queue.length === 1 ? "" : "s"}…`);
    const worker = async () => {
      while (queue.length) await classifyOne(queue.shift());
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, queue.length) }, worker));
    setStatus("");
  }

  async function searchText(text) {
    const card = newCard(`“${text}”`);
    card.classList.add("text-result");
    card.querySelector(".preview").remove(); // a text has no picture
    try {
      const answer = await call("/v1/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text, k: NEIGHBORS }),
      });
      await showNeighbors(card, (await answer.json()).neighbors);
      card.classList.add("done");
    } catch (error) {
      showError(card, error.message);
      card.classList.add("failed");
    }
  }

  function wireTextForm() {
    element("text-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = element("text").value;
      setStatus("searching…");
      await searchText(text);
      setStatus("");
    });
  }

  function wireDropZone() {
    const zone = element("drop");
    const picker = element("files");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const files = [...(event.dataTransfer?.files ?? [])];
      if (files.length) classifyAll(files);
    });
    zone.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") picker.click();
    });
    picker.addEventListener("change", () => {
      const files = [...picker.files];
      picker.value = ""; // the same file chosen again is a new request
      if (files.length) classifyAll(files);
    });
  }

  function wireKeyForm() {
    element("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      page.key = element("key").value.trim();
      if (!page.key) return;
      sessionStorage.setItem(KEY_STORE, page.key);
      element("key-form").hidden = true;
      setStatus("");
      loadInfo();
    });
  }

  wireDropZone();
  wireTextForm();
  wireKeyForm();
  loadInfo();
})();
