/* Calibration job page: follow a queued/running job without reloading over the cancel form.
   Polls GET /api/v1/calibrations/{id} every 2 s and updates the progress in place; when the job reaches a final
   status the page reloads (the results appear). Without JavaScript the page refreshes itself every 3 s instead
   (<noscript> meta refresh). No inline script: the page's CSP allows scripts from this origin only. */
(function () {
  "use strict";
  var form = document.querySelector("form.cal-cancel");
  if (!form) return;
  var id = form.getAttribute("data-job");
  var bar = document.getElementById("job-progress");
  var text = document.getElementById("job-progress-text");
  var status = document.getElementById("job-status");
  document.querySelectorAll(".js-hide").forEach(function (el) { el.hidden = true; });
  function poll() {
    fetch("/api/v1/calibrations/" + encodeURIComponent(id), { headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (job) {
        if (!job) return;
        if (job.status !== "queued" && job.status !== "running") { window.location.reload(); return; }
        if (bar) bar.value = job.progress.percent;
        if (text) text.textContent = job.progress.text;
        if (status) status.textContent = job.status;
        window.setTimeout(poll, 2000);
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, 2000);
})();
