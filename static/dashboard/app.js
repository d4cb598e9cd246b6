// Small enhancements of the server-rendered dashboard; every page works without them.
(function () {
  "use strict";
  // A filter bar marked data-autosubmit applies a changed select at once (from page 1).
  document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
    form.querySelectorAll("select").forEach(function (select) {
      select.addEventListener("change", function () { form.requestSubmit(); });
    });
  });
})();
