// Refreshes the devices table every 2 seconds from live.json; the page works without it
// (it then reloads itself every 15 seconds). Text goes in through textContent only.
"use strict";
(function () {
  var body = document.getElementById("devices");
  var online = document.getElementById("online");
  if (!body || !online || !window.fetch) return;
  var units = ["KiB", "MiB", "GiB", "TiB"];
  function bytes(n) {
    if (n < 1024) return Math.floor(n) + " B";
    var u = -1;
    do { n /= 1024; u++; } while (n >= 1024 && u < units.length - 1);
    return n.toFixed(1) + " " + units[u];
  }
  function until(ms) {
    return new Date(ms).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }
  function cell(row, text, numeric) {
    var td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "n";
    row.appendChild(td);
    return td;
  }
  function refresh() {
    fetch("live.json", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (live) {
        // The log-out buttons are forms the server made: keep them, keyed by MAC.
        var buttons = {};
        Array.prototype.forEach.call(body.querySelectorAll("form"), function (form) {
          buttons[form.querySelector("input[name=mac]").value] = form;
        });
        var rows = document.createDocumentFragment();
        var count = 0;
        live.sessions.forEach(function (s) {
          s.devices.forEach(function (d) {
            count++;
            var row = document.createElement("tr");
            cell(row, d.mac);
            cell(row, [d.ip].concat(d.also).join(" "));
            cell(row, s.code);
            cell(row, bytes(d.down_rate) + "/s", true);
            cell(row, bytes(d.up_rate) + "/s", true);
            cell(row, bytes(d.up_bytes + d.down_bytes), true);
            cell(row, bytes(Math.max(0, s.quota_bytes - s.used_bytes)), true);
            cell(row, until(s.expires_ms));
            var actions = cell(row, "");
            if (buttons[d.mac]) actions.appendChild(buttons[d.mac]);
            rows.appendChild(row);
          });
        });
        if (count === 0) {
          var row = document.createElement("tr");
          var td = cell(row, "No device online.");
          td.colSpan = 9;
          td.className = "muted";
          rows.appendChild(row);
        }
        body.replaceChildren(rows);
        online.textContent = String(count);
      })
      .catch(function () { /* the next round tries again */ });
  }
  setInterval(refresh, 2000);
})();
