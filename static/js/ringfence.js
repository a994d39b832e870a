// Small behaviours shared by every page. No inline scripts (the CSP allows only our files).
(function () {
  "use strict";
  // Live countdowns: <time data-countdown datetime="ISO">; text shows the time left.
  function renderCountdowns() {
    const now = Date.now();
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      const due = Date.parse(el.getAttribute("datetime"));
      if (isNaN(due)) return;
      let left = Math.round((due - now) / 1000);
      const late = left < 0;
      left = Math.abs(left);
      const m = Math.floor(left / 60), s = left % 60;
      const text = (m > 0 ? m + " min " : "") + s + " s";
      el.textContent = late ? text + " overdue" : text + " left";
      el.classList.toggle("overdue", late);
    });
  }
  setInterval(renderCountdowns, 1000);
  document.addEventListener("DOMContentLoaded", renderCountdowns);
  document.addEventListener("htmx:afterSwap", renderCountdowns);
})();
