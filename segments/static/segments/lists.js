// Make-a-list form: shows the fields of the chosen origin and the live member count.
(function () {
  "use strict";
  const form = document.getElementById("list-make-form");
  const panel = document.getElementById("list-preview");
  if (!form || !panel) return;
  const count = document.getElementById("list-preview-count");
  const definition = document.getElementById("list-preview-definition");
  const problems = document.getElementById("list-preview-problems");
  let timer = null;
  let sequence = 0;

  function origin() {
    const checked = form.querySelector("input[name=origin]:checked");
    return checked ? checked.value : "";
  }

  function showOrigin() {
    for (const fieldset of form.querySelectorAll(".list-origin")) {
      fieldset.hidden = fieldset.dataset.origin !== origin();
    }
  }

  function showProblems(list) {
    panel.classList.add("is-invalid");
    count.textContent = "—";
    definition.textContent = "";
    problems.replaceChildren();
    for (const p of list) {
      const li = document.createElement("li");
      li.textContent = (p.line ? `line ${p.line}, column ${p.column}: ` : "") + p.message;
      problems.appendChild(li);
    }
    problems.hidden = false;
  }

  async function preview() {
    const mine = ++sequence;
    const body = new FormData(form);
    body.delete("csv_file");
    if (origin() === "csv") {
      count.textContent = panel.dataset.csvLabel;
      definition.textContent = "";
      problems.hidden = true;
      return;
    }
    count.textContent = panel.dataset.checkingLabel;
    let data;
    try {
      const response = await fetch(panel.dataset.url, { method: "POST", body, credentials: "same-origin" });
      data = await response.json();
    } catch (error) {
      if (mine === sequence) showProblems([{ message: String(error) }]);
      return;
    }
    if (mine !== sequence) return;  // a newer request is on its way
    if (!data.ok) return showProblems(data.problems);
    panel.classList.remove("is-invalid");
    problems.hidden = true;
    if (data.count === null) { count.textContent = "—"; return; }
    const strong = document.createElement("strong");
    strong.textContent = data.count.toLocaleString();
    const held = data.held_out ? ` · ${data.held_out.toLocaleString()} ${panel.dataset.heldLabel}` : "";
    count.replaceChildren(strong, ` ${panel.dataset.membersLabel}${held}`);
    definition.textContent = data.definition;
  }

  function schedule() {
    clearTimeout(timer);
    sequence++;  // an answer still on its way is for what the form held before: not shown
    timer = setTimeout(preview, 300);
  }

  form.addEventListener("change", (event) => {
    if (event.target.name === "origin") showOrigin();
    schedule();
  });
  form.addEventListener("input", schedule);
  showOrigin();
  schedule();
})();
