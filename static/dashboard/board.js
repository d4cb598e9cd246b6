// The lifecycle board: drag a card to another column, give the reason in the dialog, and the
// server moves the customer (the same service as the API) and the page reloads with the new
// counts. Without JavaScript every card's "Move…" form does the same. On the model editor this
// file also shows a refusal (a 400) inside the fragment that asked, and confirms a deletion.
(function () {
  "use strict";
  var gettext = window.gettext || function (s) { return s; };
  var interpolate = window.interpolate || function (fmt, obj) {
    return fmt.replace(/%\((\w+)\)s/g, function (_m, k) { return obj[k]; });
  };

  // htmx leaves 4xx answers unswapped; forms marked data-swap-400 show the refusal they get.
  document.addEventListener("htmx:beforeSwap", function (e) {
    var elt = e.detail.requestConfig && e.detail.requestConfig.elt;
    if (e.detail.xhr.status === 400 && elt && elt.closest("[data-swap-400]")) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });

  function setUp() {
    var board = document.querySelector("[data-board]");
    var dialog = document.querySelector("[data-move-dialog]");
    if (!board || !dialog || typeof dialog.showModal !== "function") { return; }
    var form = dialog.querySelector("form");
    var errors = dialog.querySelector("#move-error");
    var dragged = null;

    document.addEventListener("htmx:responseError", function (e) {
      if (!form.contains(e.detail.elt)) { return; }
      errors.innerHTML = "";
      var note = document.createElement("div");
      note.className = "alert alert-error";
      note.setAttribute("role", "alert");
      note.textContent = e.detail.xhr.status === 404
        ? gettext("This customer is not yours to move, or no longer exists.")
        : gettext("The move failed; reload the page and try again.");
      errors.appendChild(note);
    });

    board.addEventListener("dragstart", function (e) {
      var card = e.target.closest && e.target.closest("[data-card]");
      if (!card) { return; }
      dragged = card;
      card.classList.add("lc-dragging");
      e.dataTransfer.effectAllowed = "move";
      e.dataTransfer.setData("text/plain", card.dataset.customer);
    });
    board.addEventListener("dragend", function () {
      if (dragged) { dragged.classList.remove("lc-dragging"); }
      board.querySelectorAll(".lc-drop").forEach(function (c) { c.classList.remove("lc-drop"); });
    });
    board.addEventListener("dragover", function (e) {
      var column = e.target.closest && e.target.closest("[data-column]");
      if (!column || !dragged || column.dataset.column === dragged.dataset.stage) { return; }
      e.preventDefault();
      e.dataTransfer.dropEffect = "move";
      board.querySelectorAll(".lc-drop").forEach(function (c) {
        if (c !== column) { c.classList.remove("lc-drop"); }
      });
      column.classList.add("lc-drop");
    });
    board.addEventListener("dragleave", function (e) {
      var column = e.target.closest && e.target.closest("[data-column]");
      if (column && !column.contains(e.relatedTarget)) { column.classList.remove("lc-drop"); }
    });
    board.addEventListener("drop", function (e) {
      var column = e.target.closest && e.target.closest("[data-column]");
      if (!column || !dragged || column.dataset.column === dragged.dataset.stage) { return; }
      e.preventDefault();
      column.classList.remove("lc-drop");
      ask(dragged, column);
    });

    function ask(card, column) {
      form.querySelector("[data-move-customer]").value = card.dataset.customer;
      form.querySelector("[data-move-stage]").value = column.dataset.column;
      form.querySelector("[data-move-title]").textContent = interpolate(
        gettext("Move %(customer)s to %(stage)s"),
        { customer: card.dataset.name, stage: column.dataset.stageName }, true);
      form.querySelector("[data-move-reason]").value = "";
      errors.innerHTML = "";
      dialog.showModal();
      form.querySelector("[data-move-reason]").focus();
    }

    dialog.querySelector("[data-move-cancel]").addEventListener("click", function () {
      dialog.close();
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setUp);
  } else {
    setUp();
  }
})();
