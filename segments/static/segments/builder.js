// Segment builder: validates the query and shows the live member count as the user types.
(function () {
  "use strict";
  const panel = document.getElementById("segment-preview");
  const query = document.getElementById("id_query");
  if (!panel || !query) return;
  const storeSelect = document.getElementById("id_store");
  const slugInput = document.getElementById("id_slug");
  const count = document.getElementById("segment-preview-count");
  const problems = document.getElementById("segment-problems");
  const sample = document.getElementById("segment-sample");
  const tree = document.getElementById("segment-tree");
  const csrf = document.querySelector("[name=csrfmiddlewaretoken]");
  let timer = null;
  let sequence = 0;
  let inFlight = null;
  // Names this page to the server: a newer preview from it cancels the one still running there.
  const page = Math.random().toString(36).slice(2, 12) + Date.now().toString(36);

  function storeId() { return storeSelect ? storeSelect.value : panel.dataset.store; }
  function slug() { return slugInput ? slugInput.value : panel.dataset.slug; }

  function showProblems(list) {
    panel.classList.add("is-invalid");
    problems.replaceChildren();
    for (const p of list) {
      const li = document.createElement("li");
      const where = p.line ? `line ${p.line}, column ${p.column}: ` : (p.path ? `${p.path}: ` : "");
      li.textContent = where + p.message;
      problems.appendChild(li);
    }
    problems.hidden = false;
    sample.hidden = true;
    count.textContent = "—";
    tree.textContent = "";
  }

  function showResult(data) {
    panel.classList.remove("is-invalid");
    problems.hidden = true;
    const strong = document.createElement("strong");
    if (data.estimated) {
      // A large store's count over orders: an estimate from a sample now, the exact count next.
      strong.textContent = `≈ ${data.count.toLocaleString()} ± ${data.margin.toLocaleString()}`;
      const note = panel.dataset.estimatedLabel.replace("{n}", data.sampled.toLocaleString());
      count.replaceChildren(strong, ` ${panel.dataset.membersLabel} (${note})`);
      count.dataset.estimated = "true";
    } else {
      strong.textContent = data.count.toLocaleString();
      count.replaceChildren(strong, ` ${panel.dataset.membersLabel} (${panel.dataset.asOfLabel} ${data.as_of})`);
      delete count.dataset.estimated;
    }
    tree.textContent = JSON.stringify(data.tree, null, 2);
    const body = sample.querySelector("tbody");
    body.replaceChildren();
    for (const c of data.sample) {
      const tr = document.createElement("tr");
      for (const value of [c.name, c.email, c.orders, c.spent]) {
        const td = document.createElement("td");
        td.textContent = value;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    sample.hidden = data.sample.length === 0;
  }

  async function run(exact) {
    const mine = ++sequence;
    if (!query.value.trim()) return;
    if (!exact) count.textContent = panel.dataset.checkingLabel;
    const body = new FormData();
    body.append("query", query.value);
    body.append("store", storeId() || "");
    body.append("slug", slug() || "");
    body.append("page", page);
    if (exact) body.append("exact", "1");
    if (inFlight) inFlight.abort(); // the page no longer waits for it (the server cancels it too)
    const controller = new AbortController();
    inFlight = controller;
    let data;
    try {
      const response = await fetch(panel.dataset.url, {
        method: "POST", body, signal: controller.signal,
        headers: { "X-CSRFToken": csrf ? csrf.value : "" }, credentials: "same-origin",
      });
      data = await response.json();
    } catch (error) {
      if (error.name === "AbortError") return;
      throw error;
    }
    if (mine !== sequence || data.superseded) return; // a newer request is on its way
    if (data.ok) showResult(data); else showProblems(data.problems);
    if (data.ok && data.estimated) run(true);
  }

  function schedule() {
    clearTimeout(timer);
    sequence++; // an answer still on its way is for the query as it was: not shown
    timer = setTimeout(() => run(false), 300);
  }
  query.addEventListener("input", schedule);
  if (storeSelect) storeSelect.addEventListener("change", schedule);

  const picker = document.getElementById("segment-template");
  if (picker) {
    picker.addEventListener("change", function () {
      const option = picker.selectedOptions[0];
      if (!option || !option.value) return;
      query.value = option.value;
      const name = document.getElementById("id_name");
      const description = document.getElementById("id_description");
      if (name && !name.value) name.value = option.dataset.name;
      if (slugInput && !slugInput.value) slugInput.value = option.dataset.slug;
      if (description && !description.value) description.value = option.dataset.description;
      run(false);
    });
  }
  if (query.value.trim()) run(false);
})();
