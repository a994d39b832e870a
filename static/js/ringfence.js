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

// Approvals: a refusal (403) inside an element marked data-swap-refusals is shown in place,
// like the 409 and 422 answers, instead of being dropped as an error.
(function () {
  "use strict";
  document.addEventListener("htmx:beforeSwap", function (evt) {
    const target = evt.detail.target;
    if (evt.detail.xhr.status === 403 && target && target.closest("[data-swap-refusals]")) {
      evt.detail.shouldSwap = true;
      evt.detail.isError = false;
    }
  });
})();
