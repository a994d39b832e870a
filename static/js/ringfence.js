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

// A request htmx could not complete (a server error, the server unreachable, a refusal no panel
// shows in place) is said at the top of the page, never dropped silently; the next request that
// succeeds clears it.
(function () {
  "use strict";
  function say(text) {
    const box = document.getElementById("request-failed");
    if (!box) return;
    box.textContent = text;
    box.hidden = false;
  }
  document.addEventListener("htmx:responseError", function (evt) {
    const status = evt.detail.xhr.status;
    if (status === 503) {
      say("Ringfence cannot reach its database or task queue right now. What you sent may not have been saved: " +
          "reload the page in a moment and check it before you try again.");
    } else if (status >= 500) {
      say("Something went wrong on our side (" + status + "). Reload the page to see what was saved before you try again.");
    } else if (status === 403) {
      say("You may not do this.");
    } else if (status === 404) {
      say("This no longer exists, or is not in your scope.");
    } else if (status === 429) {
      say("Too many requests: wait a moment, then try again.");
    } else {
      say("The request was refused (" + status + "). Reload the page and try again.");
    }
  });
  document.addEventListener("htmx:sendError", function () {
    say("Ringfence could not be reached. Check your connection, then reload the page.");
  });
  document.addEventListener("htmx:afterRequest", function (evt) {
    const box = document.getElementById("request-failed");
    if (box && evt.detail.successful) box.hidden = true;
  });
})();

// "Add a row" in the editors' formsets without reloading the page: a button marked
// data-add-row="PREFIX" copies the <template data-row-template="PREFIX"> (the formset's empty form)
// into [data-rows="PREFIX"], numbers it and counts it in PREFIX-TOTAL_FORMS. Without JavaScript the
// button submits the form and the server adds the row.
(function () {
  "use strict";
  document.addEventListener("click", function (evt) {
    const button = evt.target.closest("[data-add-row]");
    if (!button) return;
    const prefix = button.getAttribute("data-add-row");
    const form = button.form || document;
    const template = form.querySelector('template[data-row-template="' + prefix + '"]');
    const rows = form.querySelector('[data-rows="' + prefix + '"]');
    const total = form.querySelector('input[name="' + prefix + '-TOTAL_FORMS"]');
    const max = form.querySelector('input[name="' + prefix + '-MAX_NUM_FORMS"]');
    if (!template || !rows || !total) return;
    evt.preventDefault();
    const index = parseInt(total.value, 10) || 0;
    if (max && index >= parseInt(max.value, 10)) {
      button.disabled = true;
      return;
    }
    const html = template.innerHTML.replace(/__prefix__/g, String(index)).replace(/__number__/g, String(index + 1));
    const holder = document.createElement("div");
    holder.innerHTML = html;
    const row = holder.firstElementChild;
    rows.appendChild(row);
    total.value = String(index + 1);
    const first = row.querySelector("input:not([type=hidden]), select, textarea");
    if (first) first.focus();
  });
})();
