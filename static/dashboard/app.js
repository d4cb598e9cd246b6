// Small enhancements of the server-rendered dashboard; every page works without them.
(function () {
  "use strict";
  // A form with data-confirm asks first (deleting, cancelling): no inline handlers, so the
  // Content-Security-Policy can forbid inline script.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      e.preventDefault();
    }
  });

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

  // Parts of a form shown only for one choice of a radio group: data-show-when="name=value".
  function showWhen(root) {
    root.querySelectorAll("[data-show-when]").forEach(function (part) {
      var rule = part.dataset.showWhen.split("=");
      var picked = document.querySelector('input[name="' + rule[0] + '"]:checked');
      part.hidden = !picked || picked.value !== rule[1];
    });
  }
  showWhen(document);
  document.addEventListener("change", function (event) {
    if (event.target.type === "radio") { showWhen(document); }
  });

  // A button that types its data-insert text into a field at the cursor (template variables).
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-insert-into]");
    if (!button) { return; }
    var field = document.querySelector(button.dataset.insertInto);
    if (!field) { return; }
    var text = button.dataset.insert;
    var start = field.selectionStart || field.value.length;
    var end = field.selectionEnd || start;
    field.value = field.value.slice(0, start) + text + field.value.slice(end);
    field.focus();
    field.selectionStart = field.selectionEnd = start + text.length;
    field.dispatchEvent(new Event("input", { bubbles: true }));
  });
})();
