// Tag mapping form: show what the mapping would read from the store's current tags, before saving.
(function () {
  "use strict";
  function init() {
    var box = document.getElementById("mapping-preview");
    var button = document.getElementById("mapping-preview-button");
    if (!box || !button) { return; }
    var form = button.closest("form");
    button.addEventListener("click", function () {
      var data = new FormData();
      ["store", "kind", "pattern"].forEach(function (name) {
        var field = form.querySelector("[name=" + name + "]");
        data.append(name, field ? field.value : "");
      });
      data.append("csrfmiddlewaretoken", form.querySelector("[name=csrfmiddlewaretoken]").value);
      fetch(box.dataset.url, { method: "POST", body: data, credentials: "same-origin" })
        .then(function (response) { return response.json(); })
        .then(function (result) {
          var errors = document.getElementById("mapping-preview-errors");
          var table = document.getElementById("mapping-preview-table");
          var body = table.querySelector("tbody");
          errors.innerHTML = ""; body.innerHTML = "";
          if (!result.ok) {
            result.errors.forEach(function (message) {
              var li = document.createElement("li"); li.textContent = message; errors.appendChild(li);
            });
            errors.hidden = false; table.hidden = true;
            document.getElementById("mapping-preview-summary").textContent = "";
            return;
          }
          errors.hidden = true;
          result.values.forEach(function (row) {
            var tr = document.createElement("tr");
            [row.value, row.customers, row.examples.join(", ")].forEach(function (text) {
              var td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
            });
            body.appendChild(tr);
          });
          table.hidden = result.values.length === 0;
          document.getElementById("mapping-preview-summary").textContent = result.summary;
        });
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
