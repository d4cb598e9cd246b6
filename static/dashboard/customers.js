// The customer list: searchable pickers (tags with their colours and groups, stages by model),
// filters applied as they change, and the bulk bar's selection. The page works without it.
(function () {
  "use strict";
  var gettext = window.gettext || function (s) { return s; };
  var interpolate = window.interpolate || function (s, a) { return s.replace("%s", a[0]); };

  function escape(text) {
    var div = document.createElement("div");
    div.textContent = text == null ? "" : String(text);
    return div.innerHTML;
  }

  function swatch(data) {
    var color = /^#[0-9a-fA-F]{3,8}$/.test(data.color || "") ? data.color : "#9aa3af";
    return '<span class="ts-swatch" style="background:' + color + '"></span>';
  }

  function picker(select) {
    if (!window.TomSelect || select.tomselect) { return; }
    var isStage = select.dataset.picker === "stage";
    new window.TomSelect(select, {
      plugins: ["remove_button"], maxOptions: 1000, hidePlaceholder: true,
      placeholder: select.dataset.placeholder || "",
      render: {
        option: function (data) {
          return "<div>" + swatch(data) + escape(data.text) + "</div>";
        },
        item: function (data) {
          var model = isStage && data.model ? '<span class="ts-model">' + escape(data.model) +
            "</span>" : "";
          return "<div>" + swatch(data) + escape(data.text) + model + "</div>";
        },
        no_results: function () {
          return '<div class="no-results">' + escape(gettext("Nothing matches")) + "</div>";
        }
      }
    });
  }

  document.querySelectorAll("select[data-picker]").forEach(picker);

  // Filters: a plain select applies at once; a picker when its dropdown closes after a change.
  var filters = document.querySelector("form[data-customer-filters]");
  if (filters) {
    filters.querySelectorAll("select[data-autoapply]").forEach(function (select) {
      select.addEventListener("change", function () { filters.requestSubmit(); });
    });
    filters.querySelectorAll("select[data-picker]").forEach(function (select) {
      var ts = select.tomselect;
      if (!ts) { return; }
      var changed = false;
      ts.on("change", function () { changed = true; });
      ts.on("dropdown_close", function () {
        if (changed) { changed = false; filters.requestSubmit(); }
      });
      ts.on("item_remove", function () {
        if (!ts.isOpen) { changed = false; filters.requestSubmit(); }
      });
    });
    var mode = filters.querySelector("select[name=tag_mode]");
    if (mode) {
      mode.addEventListener("change", function () {
        if (filters.querySelector("select[name=tag]").selectedOptions.length) {
          filters.requestSubmit();
        }
      });
    }
  }

  // The bulk bar: the selection on this page, "select all on this page", and what the chosen
  // action needs before it can be sent.
  var bulk = document.querySelector("form[data-bulk-form]");
  if (!bulk) { return; }
  var boxes = Array.prototype.slice.call(bulk.querySelectorAll("input[name=ids]"));
  var all = bulk.querySelector("input[data-select-page]");
  var counter = bulk.querySelector("[data-selected-count]");
  var submit = bulk.querySelector("[data-bulk-submit]");
  var reason = bulk.querySelector("input[name=reason]");
  var target = bulk.querySelector("select[name=target]");

  function value(name) {
    var picked = bulk.querySelector("input[name=" + name + "]:checked");
    return picked ? picked.value : "";
  }

  function refresh() {
    var selected = boxes.filter(function (b) { return b.checked; }).length;
    if (counter) { counter.textContent = String(selected); }
    boxes.forEach(function (b) { b.closest("tr").classList.toggle("cl-selected", b.checked); });
    if (all) {
      all.checked = selected > 0 && selected === boxes.length;
      all.indeterminate = selected > 0 && selected < boxes.length;
    }
    var action = value("action");
    if (reason) { reason.required = action === "stage"; }
    if (target) { target.required = action === "stage"; }
    if (submit) {
      submit.disabled = !action || (value("scope") !== "all" && selected === 0);
      submit.title = !action ? gettext("Choose an action") :
        (submit.disabled ? gettext("Select customers first") : "");
    }
  }

  if (all) {
    all.addEventListener("change", function () {
      boxes.forEach(function (b) { b.checked = all.checked; });
      var scope = bulk.querySelector("input[name=scope][value=selected]");
      if (scope) { scope.checked = true; }
      refresh();
    });
  }
  boxes.forEach(function (b) {
    b.addEventListener("change", function () {
      var scope = bulk.querySelector("input[name=scope][value=selected]");
      if (scope && b.checked) { scope.checked = true; }
      refresh();
    });
  });
  bulk.addEventListener("change", refresh);
  bulk.addEventListener("submit", function (event) {
    if (value("scope") === "all" && value("action") !== "export" &&
        value("action") !== "campaign") {
      var label = bulk.querySelector("input[data-scope-all]").closest("label").textContent;
      if (!window.confirm(interpolate(gettext("Apply to %s?"), [label.trim()]))) {
        event.preventDefault();
      }
    }
  });
  refresh();
})();
