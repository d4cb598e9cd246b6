// Small enhancements of the server-rendered dashboard; every page works without them.
(function () {
  "use strict";
  // A filter bar marked data-autosubmit applies a changed select at once (from page 1).
  document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
    form.querySelectorAll("select").forEach(function (select) {
      select.addEventListener("change", function () { form.requestSubmit(); });
    });
  });

  // "CSV" next to a table: download exactly what the table shows (UTF-8 with a BOM, so
  // spreadsheet programs read the Chinese right), named after the table and the page's range.
  function cell(text) {
    var value = text.replace(/\s+/g, " ").trim();
    return /[",\n]/.test(value) ? '"' + value.replace(/"/g, '""') + '"' : value;
  }
  document.querySelectorAll("[data-export-csv]").forEach(function (button) {
    button.addEventListener("click", function () {
      var name = button.dataset.exportCsv;
      var table = document.querySelector('table[data-table="' + name + '"]');
      if (!table) { return; }
      var lines = Array.prototype.map.call(table.querySelectorAll("tr"), function (row) {
        return Array.prototype.map.call(row.querySelectorAll("th, td"), function (c) {
          return cell(c.textContent);
        }).join(",");
      });
      var params = new URLSearchParams(window.location.search);
      var range = [params.get("start"), params.get("end")].filter(Boolean).join("_");
      var blob = new Blob(["\ufeff" + lines.join("\r\n") + "\r\n"],
                          { type: "text/csv;charset=utf-8" });
      var link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = name + (range ? "_" + range : "") + ".csv";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(function () { URL.revokeObjectURL(link.href); }, 1000);
    });
  });
})();
