// Draws the charts described by the JSON in <script id="metrics-charts"> (metrics/charts.py) with Chart.js.
(function () {
  "use strict";
  function draw() {
    var source = document.getElementById("metrics-charts");
    if (!source || typeof Chart === "undefined") { return; }
    var data = JSON.parse(source.textContent);
    var approximate = new Set(data.approximate || []);
    window.ecpCharts = [];
    data.charts.forEach(function (spec) {
      var canvas = document.getElementById("chart-" + spec.id);
      if (!canvas) { return; }
      var scales = {
        x: { stacked: !!spec.stacked, ticks: { maxTicksLimit: 12, autoSkip: true } },
        y: { stacked: !!spec.stacked, beginAtZero: true }
      };
      if (spec.dual) { scales.y1 = { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } }; }
      var chart = new Chart(canvas, {
        data: { labels: data.labels, datasets: spec.datasets },
        options: {
          animation: false, responsive: true, maintainAspectRatio: false,
          interaction: { mode: "index", intersect: false },
          plugins: {
            title: { display: true, text: spec.title },
            tooltip: { callbacks: { footer: function (items) {
              return items.length && approximate.has(items[0].label) ? canvas.dataset.approximateLabel : "";
            } } }
          },
          scales: scales
        }
      });
      canvas.dataset.rendered = "1";
      window.ecpCharts.push(chart);
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", draw); } else { draw(); }
})();
