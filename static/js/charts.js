// Draws the server-built Plotly figures: <div data-chart="ID"> reads <script type="application/json" id="ID">.
// A file of our own because the CSP allows no inline script.
(function () {
  "use strict";
  function draw(root) {
    if (!window.Plotly) return;
    (root || document).querySelectorAll("[data-chart]").forEach(function (el) {
      if (el.dataset.drawn) return;
      var source = document.getElementById(el.dataset.chart);
      if (!source) return;
      var figure = JSON.parse(source.textContent);
      el.dataset.drawn = "pending";
      window.Plotly.newPlot(el, figure.data, figure.layout, {responsive: true, displaylogo: false}).then(function () {
        el.dataset.drawn = "done";
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSwap", function (event) { draw(event.target); });
})();
