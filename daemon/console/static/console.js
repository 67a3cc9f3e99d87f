// lifecycled console: live countdowns and the overview's charts (uPlot). No build step.
(function () {
  "use strict";
  var seen = new WeakMap();

  function fmt(s) {
    s = Math.max(0, Math.floor(s));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    function two(n) { return (n < 10 ? "0" : "") + n; }
    if (h) return h + "h " + two(m) + "m " + two(r) + "s";
    if (m) return m + "m " + two(r) + "s";
    return r + "s";
  }

  // Each countdown counts from the remaining seconds the server rendered, on this
  // browser's monotonic clock: no dependence on the two clocks agreeing.
  function tick() {
    var now = performance.now();
    document.querySelectorAll(".countdown[data-remaining]").forEach(function (el) {
      var start = seen.get(el);
      if (start === undefined) { start = now; seen.set(el, start); }
      var left = parseFloat(el.dataset.remaining) - (now - start) / 1000;
      el.textContent = fmt(left);
      el.classList.toggle("soon", left < 60);
    });
  }
  setInterval(tick, 250);

  var plots = [];
  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  var palette = ["#2f6fdb", "#e04f5f", "#16a34a", "#d97706", "#8b5cf6", "#0891b2"];

  function chart(el, title, names, columns) {
    var width = Math.max(260, el.clientWidth);
    var t = columns[0];
    var axis = { stroke: css("--muted"), grid: { stroke: css("--line") }, ticks: { stroke: css("--line") } };
    var series = [{}].concat(names.map(function (n, i) {
      return { label: n, stroke: palette[i % palette.length], width: 2, spanGaps: true };
    }));
    // The daemon's clock, not the browser's: the last point is "now".
    var now = t.length ? t[t.length - 1] : Date.now() / 1000;
    var opts = {
      width: width, height: 200, series: series, axes: [axis, axis], legend: { show: true },
      // Always the last hour, from zero up: a fresh daemon's single point reads well too.
      scales: {
        x: { time: true, range: function () { return [now - 3600, now]; } },
        y: { range: function (u, min, max) { return [0, Math.max(1, max || 0) * 1.1]; } }
      }
    };
    return new uPlot(opts, columns, el);
  }

  function drawCharts() {
    var box = document.querySelector(".charts[data-series]");
    if (!box || typeof uPlot === "undefined") return;
    fetch(box.dataset.series, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (d) {
      plots.forEach(function (p) { p.destroy(); });
      plots = [];
      var reasons = Object.keys(d.terminations);
      var t = d.t;
      plots.push(chart(document.getElementById("chart-terminations"), "terminations", reasons,
        [t].concat(reasons.map(function (k) { return d.terminations[k]; }))));
      plots.push(chart(document.getElementById("chart-lateness"), "lateness", ["p50", "p99"], [t, d.lateness_p50, d.lateness_p99]));
      plots.push(chart(document.getElementById("chart-lag"), "lag", ["p50", "p99"], [t, d.lag_p50, d.lag_p99]));
      box.dataset.drawn = "1";
    }).catch(function () {});
  }
  var chartTimer = null;
  function start() {
    tick();
    drawCharts();
    if (chartTimer) clearInterval(chartTimer);
    chartTimer = setInterval(function () { if (document.querySelector(".charts[data-series]")) drawCharts(); }, 10000);
  }
  document.addEventListener("DOMContentLoaded", start);
  document.addEventListener("htmx:afterSettle", start);
  window.addEventListener("resize", function () { if (plots.length) drawCharts(); });
})();
