// A kept insight report (metrics/templates/admin/metrics/kept_report.html): while a new table is computed, show
// how long it has run (against how long the last one took) and reload the page once it is ready.
(function () {
  const script = document.currentScript;
  const box = document.getElementById("kept-report");
  if (!box) return;
  const computedAt = box.dataset.computedAt;
  const lastSeconds = parseFloat(box.dataset.lastSeconds);
  const started = Date.parse(box.dataset.startedAt) || Date.now();
  const progress = document.getElementById("kept-progress");
  const say = (template, seconds) => template.replace("%(seconds)s", seconds);

  function show(report) {
    box.dataset.status = report.status;
    document.getElementById("kept-status").textContent = report.status_label;
    const computing = report.status === "queued" || report.status === "running";
    document.getElementById("kept-computing").hidden = !computing;
    document.getElementById("kept-failed").hidden = report.status !== "failed";
    document.getElementById("kept-error").textContent = report.error || "";
    if (computing) {
      const elapsed = Math.max(0, Math.round((Date.now() - started) / 1000));
      let text = say(script.dataset.elapsed, elapsed);
      if (lastSeconds > 0) {
        text += " (" + say(script.dataset.last, Math.round(lastSeconds)) + ")";
        progress.value = Math.min(95, Math.round(100 * elapsed / lastSeconds));
      }
      document.getElementById("kept-elapsed").textContent = text;
    }
    return computing;
  }

  function tick() {
    fetch(box.dataset.statusUrl, {credentials: "same-origin"}).then(r => r.json()).then(report => {
      if (report.status === "done" && report.computed_at && Date.parse(report.computed_at) !== Date.parse(computedAt)) {
        window.location.reload();  // a new table: show it
        return;
      }
      if (show(report)) setTimeout(tick, 1500);
    }).catch(() => setTimeout(tick, 5000));
  }

  if (box.dataset.status === "queued" || box.dataset.status === "running") tick();
})();
