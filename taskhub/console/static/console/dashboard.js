/* taskhub dashboard: renders the numbers, the per-minute chart (inline SVG, no library, no CDN)
   and the recent failures from /admin/dashboard/data.json, and refreshes them every few seconds. */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var W = 720, H = 220, LEFT = 36, RIGHT = 24, TOP = 10, BOTTOM = 26;

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function pick(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? undefined : o[k]; }, obj);
  }

  function drawChart(box, flow) {
    var done = flow.completed, failed = flow.failed, labels = flow.minutes, n = done.length;
    var max = 1;
    for (var i = 0; i < n; i++) max = Math.max(max, done[i] + failed[i]);
    var plotW = W - LEFT - RIGHT, plotH = H - TOP - BOTTOM, step = plotW / n, barW = Math.max(step - 2, 1);
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, width: "100%", class: "th-svg", "data-max": max });
    [0, 0.5, 1].forEach(function (f) {
      var y = TOP + plotH - f * plotH;
      svg.appendChild(el("line", { x1: LEFT, x2: W - RIGHT, y1: y, y2: y, class: "th-grid" }));
      svg.appendChild(el("text", { x: LEFT - 6, y: y + 4, class: "th-axis", "text-anchor": "end" },
        String(Math.round(f * max * 10) / 10)));
    });
    for (var j = 0; j < n; j++) {
      var x = LEFT + j * step + 1;
      var hDone = (done[j] / max) * plotH, hFail = (failed[j] / max) * plotH;
      var tip = labels[j] + " UTC: " + done[j] + " completed, " + failed[j] + " failed";
      var bar = el("rect", { x: x, y: TOP + plotH - hDone, width: barW, height: hDone, class: "th-bar-done",
        "data-minute": labels[j], "data-count": done[j] });
      bar.appendChild(el("title", {}, tip));
      svg.appendChild(bar);
      if (failed[j]) {
        var fbar = el("rect", { x: x, y: TOP + plotH - hDone - hFail, width: barW, height: hFail,
          class: "th-bar-failed", "data-minute": labels[j], "data-count": failed[j] });
        fbar.appendChild(el("title", {}, tip));
        svg.appendChild(fbar);
      }
      if (j % 10 === 0 || j === n - 1) {
        svg.appendChild(el("text", { x: x + barW / 2, y: H - 8, class: "th-axis", "text-anchor": "middle" }, labels[j]));
      }
    }
    box.replaceChildren(svg);
  }

  function fmtTime(iso) {
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toISOString().slice(11, 19);
  }

  function drawFailures(tbody, rows) {
    var out = [];
    rows.forEach(function (f) {
      var tr = document.createElement("tr");
      var a = document.createElement("a");
      a.href = f.url;
      a.textContent = "#" + f.taskId + " " + f.name;
      var first = document.createElement("td");
      first.appendChild(a);
      tr.appendChild(first);
      [f.taskType, f.attempt, f.reason, f.actor, fmtTime(f.at)].forEach(function (v) {
        var td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      });
      out.push(tr);
    });
    if (!out.length) {
      var tr = document.createElement("tr"), td = document.createElement("td");
      tr.className = "th-empty";
      td.colSpan = 6;
      td.textContent = "No failures in the last hour.";
      tr.appendChild(td);
      out.push(tr);
    }
    tbody.replaceChildren.apply(tbody, out);
  }

  function render(root, data) {
    root.querySelectorAll("[data-field]").forEach(function (node) {
      var v = pick(data, node.getAttribute("data-field"));
      if (v !== undefined) node.textContent = String(v);
    });
    var u = data.units, pct = u.capacity ? Math.min(100, (100 * u.running) / u.capacity) : 0;
    document.getElementById("th-util-bar").style.width = pct.toFixed(1) + "%";
    var stamp = document.getElementById("th-updated-at");
    stamp.textContent = fmtTime(data.generatedAt);
    stamp.setAttribute("datetime", data.generatedAt);
    var unserved = document.getElementById("th-unserved");
    if (unserved) {
      var list = data.unservedTypes || [], box = document.getElementById("th-unserved-list");
      var queues = root.getAttribute("data-queues-url");
      box.textContent = "";
      list.forEach(function (q, i) {
        var a = document.createElement("a");
        a.href = queues + encodeURIComponent(q.taskType) + "/";
        a.textContent = q.taskType;
        box.appendChild(a);
        box.appendChild(document.createTextNode(" (" + q.pending + " PENDING)" + (i < list.length - 1 ? ", " : "")));
      });
      unserved.hidden = !list.length;
    }
    drawChart(document.getElementById("th-chart"), data.throughput);
    drawFailures(document.querySelector("#th-failures tbody"), data.recentFailures);
  }

  function start() {
    var root = document.querySelector(".th-dash");
    if (!root) return;
    var initial = document.getElementById("th-dashboard-data");
    render(root, JSON.parse(initial.textContent));
    var every = parseInt(root.getAttribute("data-refresh-ms"), 10) || 5000;
    var warn = document.getElementById("th-refresh-error");
    function tick() {
      fetch(root.getAttribute("data-url"), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
        .then(function (data) {
          render(root, data);
          warn.hidden = true;
          root.setAttribute("data-refreshes", String(parseInt(root.getAttribute("data-refreshes"), 10) + 1));
        })
        .catch(function () { warn.hidden = false; })
        .finally(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
