// The dashboard's charts: every <div data-chart="kind" data-source="id"> is drawn with ECharts
// from the JSON the server embedded with json_script (id). The data comes with its labels
// already translated, so this file holds no words; with scripts off, the tables stay.
(function () {
  "use strict";
  if (typeof echarts === "undefined") { return; }

  var GRID = { left: 48, right: 56, top: 36, bottom: 32, containLabel: true };
  var NEG = "#d14343";
  var POS = "#0b8a5f";
  var BASE = "#64748b";

  function money(value) {
    return "¥" + Number(value).toLocaleString(undefined, { maximumFractionDigits: 2 });
  }

  var builders = {
    daily: function (d) {
      var series = d.lines.map(function (line) {
        return { name: line.name, type: "line", showSymbol: false, data: line.data };
      });
      series.push({ name: d.money.name, type: "bar", yAxisIndex: 1, data: d.money.data,
                    itemStyle: { color: "rgba(11, 138, 95, .25)" } });
      return {
        tooltip: { trigger: "axis" },
        legend: { top: 0 },
        grid: GRID,
        xAxis: { type: "category", data: d.dates, boundaryGap: true },
        yAxis: [{ type: "value", minInterval: 1 },
                { type: "value", axisLabel: { formatter: money }, splitLine: { show: false } }],
        series: series
      };
    },
    funnel: function (d) {
      return {
        tooltip: { trigger: "item", formatter: "{b}: {c}" },
        series: [{
          type: "funnel", sort: "none", gap: 2, left: "10%", width: "80%", minSize: "8%",
          top: 8, bottom: 8,
          label: { position: "inside", formatter: "{b} {c}" },
          data: d.stages.map(function (s) {
            return { name: s.name, value: s.value, itemStyle: s.color ? { color: s.color } : {} };
          })
        }]
      };
    },
    flows: function (d) {
      var labels = {};
      d.nodes.forEach(function (n) { labels[n.name] = n.label; });
      return {
        tooltip: {
          trigger: "item",
          formatter: function (p) {
            if (p.dataType === "edge") {
              return labels[p.data.source] + " → " + labels[p.data.target] + ": " + p.data.value;
            }
            return labels[p.name] + ": " + p.value;
          }
        },
        series: [{
          type: "sankey", left: 8, right: 96, top: 8, bottom: 8, nodeGap: 10,
          emphasis: { focus: "adjacency" },
          lineStyle: { color: "gradient", curveness: 0.5, opacity: 0.35 },
          label: { formatter: function (p) { return labels[p.name]; } },
          data: d.nodes.map(function (n) { return { name: n.name }; }),
          links: d.links
        }]
      };
    },
    revenue: function (d) {
      var names = [d.start.name], base = [0], bars = [{ value: d.start.value,
        itemStyle: { color: BASE } }];
      var running = d.start.value;
      d.steps.forEach(function (step) {
        names.push(step.name);
        if (step.value >= 0) {
          base.push(running);
          bars.push({ value: step.value, itemStyle: { color: POS } });
          running += step.value;
        } else {
          running += step.value;
          base.push(running);
          bars.push({ value: -step.value, itemStyle: { color: NEG } });
        }
      });
      names.push(d.end.name);
      base.push(0);
      bars.push({ value: d.end.value, itemStyle: { color: BASE } });
      return {
        tooltip: {
          trigger: "axis", axisPointer: { type: "shadow" },
          formatter: function (ps) {
            var i = ps[0].dataIndex, step = d.steps[i - 1];
            var value = i === 0 ? d.start.value : i === names.length - 1 ? d.end.value
              : step.value;
            return names[i] + ": " + (step && step.value > 0 ? "+" : "") + money(value);
          }
        },
        grid: GRID,
        xAxis: { type: "category", data: names, axisLabel: { interval: 0 } },
        yAxis: { type: "value", axisLabel: { formatter: money } },
        series: [
          { type: "bar", stack: "w", data: base, itemStyle: { color: "transparent" },
            emphasis: { disabled: true }, tooltip: { show: false } },
          { type: "bar", stack: "w", data: bars, barMaxWidth: 48 }
        ]
      };
    },
    channels: function (d) {
      return {
        tooltip: { trigger: "axis", valueFormatter: function (v) { return money(v || 0); } },
        legend: { top: 0 },
        grid: GRID,
        xAxis: { type: "category", data: d.channels, axisLabel: { interval: 0, rotate: 20 } },
        yAxis: { type: "value", axisLabel: { formatter: money } },
        series: d.bars.map(function (bar, i) {
          return { name: bar.name, type: "bar", data: bar.data, barMaxWidth: 28,
                   itemStyle: { color: i === 0 ? POS : BASE } };
        })
      };
    },
    cohorts: function (d) {
      return {
        tooltip: { formatter: function (p) {
          return d.cohorts[p.value[1]] + " · " + d.months[p.value[0]] + ": " + p.value[2] + "%";
        } },
        grid: { left: 72, right: 16, top: 8, bottom: 56 },
        xAxis: { type: "category", data: d.months, splitArea: { show: true } },
        yAxis: { type: "category", data: d.cohorts, inverse: true, splitArea: { show: true } },
        visualMap: { min: 0, max: 100, calculable: false, orient: "horizontal", left: "center",
                     bottom: 0, itemHeight: 120, inRange: { color: ["#eef7f3", POS] } },
        series: [{ type: "heatmap", data: d.cells, label: { show: true, fontSize: 10,
                   formatter: function (p) { return p.value[2] + "%"; } } }]
      };
    }
  };

  var charts = [];
  document.querySelectorAll("[data-chart]").forEach(function (el) {
    var source = document.getElementById(el.dataset.source);
    var build = builders[el.dataset.chart];
    if (!source || !build) { return; }
    var data = JSON.parse(source.textContent);
    if (!data) { return; }
    var chart = echarts.init(el, null, { renderer: "canvas" });
    var option = build(data);
    option.animationDuration = 300;          // drawn at once: no half-drawn chart to read
    chart.setOption(option);
    el.dataset.drawn = "true";
    charts.push(chart);
  });
  window.addEventListener("resize", function () {
    charts.forEach(function (chart) { chart.resize(); });
  });
})();
