/* taskhub console: live refresh of a change list (tasks, units) that keeps the filters (it re-reads
   the same URL) and the selection (checkbox cells are never replaced: only the other cells of the rows
   still listed are updated). When the rows themselves change, the list reloads if nothing is selected;
   otherwise it says so and waits, so a selection is never lost. Off while the action menu is in use. */
(function () {
  "use strict";
  var EVERY_MS = 5000;

  function rowsById(tbody) {
    var out = {};
    Array.prototype.forEach.call(tbody.rows, function (tr) {
      var box = tr.querySelector("input.action-select");
      var key = box ? box.value : (tr.querySelector("th a, td a") || {}).textContent;
      if (key) out[key] = tr;
    });
    return out;
  }

  function start() {
    var table = document.getElementById("result_list");
    if (!table || !window.fetch || !window.DOMParser) return;
    var tbody = table.tBodies[0];
    var bar = document.createElement("p");
    bar.className = "th-refresh";
    bar.id = "th-live";
    bar.setAttribute("data-refreshes", "0");
    var toggle = document.createElement("input");
    toggle.type = "checkbox";
    toggle.id = "th-live-toggle";
    toggle.checked = window.localStorage ? localStorage.getItem("th-live-off") !== "1" : true;
    var label = document.createElement("label");
    label.htmlFor = toggle.id;
    label.textContent = " live (every " + EVERY_MS / 1000 + " s)";
    var note = document.createElement("span");
    note.id = "th-live-note";
    bar.append(toggle, label, " \u00b7 ", note);
    var form = document.getElementById("changelist-form") || table;
    form.parentNode.insertBefore(bar, form);
    toggle.addEventListener("change", function () {
      if (window.localStorage) localStorage.setItem("th-live-off", toggle.checked ? "0" : "1");
    });

    function busy() {
      var active = document.activeElement;
      return !toggle.checked || document.hidden ||
        (active && (active.name === "action" || active.tagName === "TEXTAREA" ||
          (active.tagName === "INPUT" && active.type !== "checkbox")));
    }

    function selected() {
      return tbody.querySelectorAll("input.action-select:checked").length;
    }

    function apply(html) {
      var doc = new DOMParser().parseFromString(html, "text/html");
      var fresh = doc.getElementById("result_list");
      if (!fresh) return;
      var now = rowsById(tbody), next = rowsById(fresh.tBodies[0]);
      var added = Object.keys(next).filter(function (k) { return !now[k]; });
      var gone = Object.keys(now).filter(function (k) { return !next[k]; });
      Object.keys(next).forEach(function (key) {
        var tr = now[key];
        if (!tr) return;
        var cells = tr.cells, newCells = next[key].cells;
        for (var i = 0; i < cells.length && i < newCells.length; i++) {
          if (cells[i].querySelector("input.action-select")) continue; // keep the selection
          if (cells[i].innerHTML !== newCells[i].innerHTML) cells[i].innerHTML = newCells[i].innerHTML;
        }
        tr.classList.remove("th-gone");
      });
      gone.forEach(function (key) { now[key].classList.add("th-gone"); });
      if ((added.length || gone.length) && !selected()) {
        window.location.reload();
        return;
      }
      note.textContent = added.length || gone.length
        ? (added.length + " new, " + gone.length + " no longer matching: kept while you have a selection")
        : "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    }

    function tick() {
      if (busy()) { setTimeout(tick, EVERY_MS); return; }
      fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
        .then(function (html) {
          apply(html);
          bar.setAttribute("data-refreshes", String(parseInt(bar.getAttribute("data-refreshes"), 10) + 1));
        })
        .catch(function () { note.textContent = "refresh failed, retrying"; })
        .finally(function () { setTimeout(tick, EVERY_MS); });
    }
    // Not a URL parameter: the admin would take it for a filter. Tests set it to refresh faster.
    var every = parseInt((window.localStorage && localStorage.getItem("th-live-ms")) || "", 10);
    if (every > 0) EVERY_MS = every;
    label.textContent = " live (every " + EVERY_MS / 1000 + " s)";
    setTimeout(tick, EVERY_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
