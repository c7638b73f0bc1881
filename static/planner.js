/* peft-planner: progressive enhancement of the planner page (no framework, no CDN).
   Without this file the page is a plain GET form whose URL carries the plan. With it, changing an input asks
   GET /compare.json (the same view as JSON), updates the compare view's numbers and bars in place, swaps the
   server-rendered fragments below it, and keeps the URL shareable with history.replaceState. */
(function () {
  "use strict";
  var form = document.getElementById("plan");
  var results = document.getElementById("results");
  if (!form || !results || !window.fetch || !window.URLSearchParams) return;
  var status = document.getElementById("status");
  var errorsBox = document.getElementById("errors");
  var SKIP = { config: 1, config_file: 1, train_config: 1, train_files: 1 };
  // empty means "default" for these, so the shared URL can leave them out (not target_modules: empty = PEFT's default)
  var DROP_EMPTY = { tokens: 1, mfu: 1, price: 1, qlora_slowdown: 1, dora_slowdown: 1, modules_to_save: 1,
    attn_implementation: 1, usd_per_kwh: 1, buy_price: 1, target_parameters: 1, layers_to_transform: 1,
    enable_lora: 1, use_reentrant: 1, momentum: 1, num_output_chunks: 1, custom_sharded_layers: 1 };
  var timer = null;
  var seq = 0;

  Array.prototype.forEach.call(document.querySelectorAll(".js-only"), function (el) { el.hidden = false; });
  var phone = window.matchMedia && window.matchMedia("(max-width: 900px)");
  var inputs = document.getElementById("inputs");
  if (inputs && phone && phone.matches) inputs.open = false;  // a compact bar above the results

  // wide tables on a phone: scroll the selected method's column into view, right of the sticky row heads
  function revealSelected() {
    document.querySelectorAll(".table-wrap").forEach(function (wrap) {
      var th = wrap.querySelector("thead th.sel");
      if (!th || wrap.scrollWidth <= wrap.clientWidth) return;
      var head = wrap.querySelector("thead th");
      var left = th.offsetLeft - (head ? head.offsetWidth : 0);
      if (left < wrap.scrollLeft || th.offsetLeft + th.offsetWidth > wrap.scrollLeft + wrap.clientWidth) {
        wrap.scrollLeft = Math.max(0, left - 4);
      }
    });
  }
  revealSelected();

  function query() {
    var params = new URLSearchParams();
    new FormData(form).forEach(function (value, key) {
      if (SKIP[key] || typeof value !== "string" || (value === "" && DROP_EMPTY[key])) return;
      params.append(key, value);
    });
    return params.toString();
  }

  function pastedConfig() {
    var ta = document.getElementById("config");
    return ta && ta.value.trim() !== "";
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function showErrors(list) {
    errorsBox.textContent = "";
    if (!list || !list.length) return;
    var box = document.createElement("div");
    box.className = "errors";
    box.setAttribute("role", "alert");
    var h = document.createElement("h2");
    h.textContent = "Cannot estimate this plan";
    var ul = document.createElement("ul");
    list.forEach(function (e) {
      var li = document.createElement("li");
      li.textContent = e;
      ul.appendChild(li);
    });
    box.appendChild(h);
    box.appendChild(ul);
    errorsBox.appendChild(box);
  }

  function updateCompare(data) {
    var compare = document.getElementById("compare");
    // view-wide values
    Object.keys(data.globals).forEach(function (key) {
      Array.prototype.forEach.call(compare.querySelectorAll('[data-g="' + key + '"]'), function (el) {
        setText(el, data.globals[key]);
      });
    });
    Array.prototype.forEach.call(compare.querySelectorAll("[data-show-if]"), function (el) {
      el.hidden = !data.globals[el.getAttribute("data-show-if")];
    });
    // per-method cells: text, refused state, tooltips
    Object.keys(data.methods).forEach(function (m) {
      var d = data.methods[m];
      Array.prototype.forEach.call(compare.querySelectorAll('td[data-m="' + m + '"]'), function (td) {
        td.classList.toggle("refused", !d.ok);
        td.classList.toggle("sel", m === data.selected);
        var keyed = td.querySelector(".v [data-k], .v[data-k]");
        var key = keyed ? keyed.getAttribute("data-k") : null;
        if (key && d.titles[key]) td.title = d.titles[key]; else td.removeAttribute("title");
      });
      Array.prototype.forEach.call(compare.querySelectorAll('[data-m="' + m + '"][data-k]'), function (el) {
        var key = el.getAttribute("data-k");
        if (key === "error") setText(el, d.error || "");
        else if (key === "bar_label") {
          setText(el, d.bar_label);
          el.classList.toggle("bad", !d.ok);
        } else {
          setText(el, d.ok ? (d.cells[key] || "") : "—");
          if (key === "fits_selected") el.className = d.ok ? "fit-" + d.cells[key] : "";
        }
      });
      // stacked bar: one rect per component, x and width in percent of the common scale
      var row = compare.querySelector('g.row[data-m="' + m + '"]');
      if (row) {
        var byKey = {};
        d.segments.forEach(function (s) { byKey[s.key] = s; });
        Array.prototype.forEach.call(row.querySelectorAll("rect[data-component]"), function (rect) {
          var s = byKey[rect.getAttribute("data-component")];
          rect.setAttribute("x", (s ? s.x : 0) + "%");
          rect.setAttribute("width", (s ? s.width : 0) + "%");
          var t = rect.querySelector("title");
          if (t) t.textContent = s ? s.title : "";
        });
      }
    });
    compare.querySelectorAll("thead th").forEach(function (th, i) {
      if (i > 0) th.classList.toggle("sel", th.querySelector("[data-tab]").getAttribute("data-tab") === data.selected);
    });
    // axis ticks (their number varies with the scale: clone the first gridline and label as needed)
    ["g.grid line", "g.ticks text"].forEach(function (sel) {
      var nodes = compare.querySelectorAll(sel);
      var first = nodes[0];
      if (!first) return;
      for (var i = nodes.length - 1; i >= 1; i--) nodes[i].parentNode.removeChild(nodes[i]);
      data.ticks.forEach(function (t, j) {
        var el = j === 0 ? first : first.parentNode.appendChild(first.cloneNode(false));
        if (el.tagName.toLowerCase() === "line") {
          el.setAttribute("x1", t.x + "%");
          el.setAttribute("x2", t.x + "%");
        } else {
          el.setAttribute("x", t.x + "%");
          el.setAttribute("text-anchor", j === 0 ? "start" : (j === data.ticks.length - 1 ? "end" : "middle"));
          el.textContent = t.label;
        }
      });
    });
    var vram = document.getElementById("vram-line");
    if (vram) {
      if (data.vram_x === null) vram.setAttribute("visibility", "hidden");
      else {
        vram.removeAttribute("visibility");
        vram.setAttribute("x1", data.vram_x + "%");
        vram.setAttribute("x2", data.vram_x + "%");
      }
    }
    compare.querySelectorAll("a[data-tab]").forEach(function (a) {
      a.href = "/?" + withMethod(data.query, a.getAttribute("data-tab")) + "#details";
    });
  }

  function withMethod(q, m) {
    var p = new URLSearchParams(q);
    p.set("method", m);
    return p.toString();
  }

  function swap(id, html) {
    var el = document.getElementById(id);
    if (el && typeof html === "string") {
      var open = [];  // keep open <details> open across the swap
      el.querySelectorAll("details[open] > summary").forEach(function (s) { open.push(s.textContent); });
      el.innerHTML = html;
      el.querySelectorAll("details > summary").forEach(function (s) {
        if (open.indexOf(s.textContent) >= 0) s.parentNode.open = true;
      });
    }
  }

  function apply(data) {
    showErrors(data.errors);
    if (!document.getElementById("compare")) {
      // the page was first rendered without results (e.g. an invalid input): reload it for this plan
      window.location.assign("/?" + data.query);
      return;
    }
    updateCompare(data);
    swap("notes", data.fragments.notes);
    swap("levers", data.fragments.levers);
    swap("costs", data.fragments.costs);
    swap("details", data.fragments.details);
    swap("snippets", data.fragments.snippets);
    enhanceSnippets();
    revealSelected();
    Array.prototype.forEach.call(document.querySelectorAll("#inputs-summary [data-g]"), function (el) {
      var v = data.globals[el.getAttribute("data-g")];
      if (typeof v === "string") setText(el, v);
    });
    var sel = data.methods[data.selected];
    status.textContent = "Updated. " + (sel && sel.ok ? sel.label + ": " + sel.cells.total + " per GPU." : "");
  }

  function refresh(after) {
    if (pastedConfig()) {
      status.textContent = "A pasted config.json needs the “Estimate with pasted config” button.";
      return;
    }
    var q = query();
    var mine = ++seq;
    results.setAttribute("aria-busy", "true");
    fetch("/compare.json?" + q, { headers: { Accept: "application/json" } })
      .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
      .then(function (res) {
        if (mine !== seq) return;  // a newer request is on its way
        history.replaceState(null, "", "/?" + q + window.location.hash);
        if (res.ok) {
          apply(res.body);
          if (after) after();
        }
        else {
          showErrors(res.body.errors || ["The planner refused this plan."]);
          status.textContent = "Not updated: see the error above.";
        }
      })
      .catch(function () {
        if (mine === seq) status.textContent = "Could not reach the planner; press Estimate to reload.";
      })
      .then(function () { if (mine === seq) results.removeAttribute("aria-busy"); });
  }

  function schedule(delay) {
    clearTimeout(timer);
    timer = setTimeout(refresh, delay);
  }

  form.addEventListener("input", function (e) {
    // the model field may be a Hub id: fetch on "change" (a pick or leaving the field), not on every keystroke
    if (e.target && (SKIP[e.target.name] || e.target.name === "model")) return;
    schedule(300);
  });
  form.addEventListener("change", function (e) {
    if (e.target && SKIP[e.target.name]) return;
    schedule(50);
  });

  // method tabs and column links: switch the details without a page load
  results.addEventListener("click", function (e) {
    var a = e.target.closest ? e.target.closest("a[data-tab]") : null;
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button || pastedConfig()) return;
    e.preventDefault();
    var fromTabs = !!a.closest("nav.tabs");
    form.elements.method.value = a.getAttribute("data-tab");
    refresh(function () {
      var current = document.querySelector("nav.tabs a[aria-current=page]");
      if (fromTabs && current) current.focus();  // the tabs were re-rendered: keep the keyboard focus there
      var details = document.getElementById("details");
      if (!fromTabs && details) details.scrollIntoView({ behavior: "smooth", block: "start" });
    });
  });

  // "Change the inputs": open the inputs panel and put the focus in it
  results.addEventListener("click", function (e) {
    var a = e.target.closest ? e.target.closest("a.to-inputs") : null;
    if (!a || !inputs) return;
    e.preventDefault();
    inputs.open = true;
    var first = inputs.querySelector("select, input");
    if (first) first.focus();
  });

  // "make it fit": a lever's link carries the whole plan; set the form to it and update in place
  results.addEventListener("click", function (e) {
    var a = e.target.closest ? e.target.closest("a[data-apply]") : null;
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button || pastedConfig()) return;
    e.preventDefault();
    var params = new URLSearchParams(a.getAttribute("href").split("?")[1].split("#")[0]);
    params.forEach(function (value, key) {
      var el = form.elements[key];
      if (el && !SKIP[key]) el.value = value;
    });
    refresh(function () {
      var box = document.getElementById("make-it-fit");
      if (box) box.scrollIntoView({ behavior: "smooth", block: "start" });
      status.textContent = "Applied: " + a.textContent + ". " + status.textContent;
    });
  });

  // copy buttons (the <pre> blocks stay for reading and manual copying)
  function enhanceSnippets() {
    document.querySelectorAll(".export-buttons").forEach(function (el) { el.hidden = false; });
  }
  enhanceSnippets();
  results.addEventListener("click", function (e) {
    var b = e.target.closest ? e.target.closest("button[data-copy]") : null;
    if (!b) return;
    var pre = document.getElementById(b.getAttribute("data-copy"));
    if (!pre) return;
    var text = pre.textContent;
    var done = function () { status.textContent = "Copied " + b.textContent.replace("Copy as ", "") + " to the clipboard."; };
    var fallback = function () {
      pre.parentNode.open = true;
      var range = document.createRange();
      range.selectNodeContents(pre);
      var s = window.getSelection();
      s.removeAllRanges();
      s.addRange(range);
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (err) { ok = false; }
      status.textContent = ok ? "Copied." : "Selected: press Ctrl+C (⌘C) to copy.";
    };
    if (navigator.clipboard && navigator.clipboard.writeText) navigator.clipboard.writeText(text).then(done, fallback);
    else fallback();
  });

  // explanations: one open at a time, Escape closes
  document.addEventListener("toggle", function (e) {
    var d = e.target;
    if (!d.classList || !d.classList.contains("why") || !d.open) return;
    document.querySelectorAll("details.why[open]").forEach(function (o) { if (o !== d) o.open = false; });
  }, true);
  document.addEventListener("keydown", function (e) {
    if (e.key !== "Escape") return;
    document.querySelectorAll("details.why[open]").forEach(function (o) {
      o.open = false;
      o.querySelector("summary").focus();
    });
  });
  document.addEventListener("click", function (e) {
    if (e.target.closest && e.target.closest("details.why")) return;
    document.querySelectorAll("details.why[open]").forEach(function (o) { o.open = false; });
  });
})();
