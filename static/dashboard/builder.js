// The segment builder: every <textarea data-condition-builder> holding a condition (DESIGN §3's
// JSON) becomes a visual editor of all / any / not groups and leaves. It draws what the field
// description endpoint (/api/v1/conditions/fields/, filled by the condition registry) offers,
// so a field added in code appears here without a template change. The textarea stays the
// form's value: every change writes the JSON back and fires "condition-change" (bubbling),
// which pages use to refresh a live count. Without JavaScript the textarea is edited directly.
(function () {
  "use strict";
  var gettext = window.gettext || function (s) { return s; };
  var requests = {};

  function fields(url) {
    if (!requests[url]) {
      requests[url] = fetch(url, { credentials: "same-origin",
                                   headers: { Accept: "application/json" } })
        .then(function (r) {
          if (!r.ok) { throw new Error(r.status + " " + r.statusText); }
          return r.json();
        });
    }
    return requests[url];
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") { node.textContent = attrs[key]; }
      else if (key === "className") { node.className = attrs[key]; }
      else if (attrs[key] !== undefined && attrs[key] !== null && attrs[key] !== false) {
        node.setAttribute(key, attrs[key] === true ? "" : attrs[key]);
      }
    });
    (children || []).forEach(function (c) { if (c) { node.appendChild(c); } });
    return node;
  }

  var MULTI = ["in", "not_in", "any", "all", "none"];
  var DAYS = ["within_days", "older_than_days"];
  var COUNTS = ["count_gte", "count_lte"];

  function isRef(value) {
    return value && typeof value === "object" && !Array.isArray(value) && "threshold" in value;
  }

  // --- The tree: JSON in, editable nodes, JSON out -----------------------------------------
  function parse(json, negate) {
    if (json === null || json === undefined || json === "") {
      return { type: "group", mode: "all", negate: !!negate, children: [] };
    }
    if (typeof json !== "object" || Array.isArray(json)) {
      throw new Error(gettext("The condition must be an object."));
    }
    if ("not" in json && Object.keys(json).length === 1) { return parse(json.not, !negate); }
    var mode = "all" in json ? "all" : "any" in json ? "any" : null;
    if (mode && Object.keys(json).length === 1) {
      if (!Array.isArray(json[mode])) { throw new Error(mode + ": " + gettext("must be a list")); }
      return { type: "group", mode: mode, negate: !!negate,
               children: json[mode].map(function (c) { return parse(c, false); }) };
    }
    if (typeof json.field === "string") {
      var params = {};
      Object.keys(json).forEach(function (k) {
        if (["field", "op", "value"].indexOf(k) < 0) { params[k] = json[k]; }
      });
      return { type: "leaf", negate: !!negate, field: json.field, op: json.op,
               value: json.value, params: params };
    }
    throw new Error(gettext("Expected all, any, not or a field."));
  }

  function serialize(node, top) {
    var out;
    if (node.type === "group") {
      var children = node.children.map(function (c) { return serialize(c, false); })
        .filter(function (c) { return c !== null; });
      if (!children.length) { return null; }
      out = {};
      out[node.mode] = children;
    } else {
      if (!node.field) { return null; }
      out = { field: node.field, op: node.op };
      if (node.value !== undefined) { out.value = node.value; }
      Object.keys(node.params).forEach(function (k) {
        var v = node.params[k];
        if (v !== undefined && v !== null && v !== "" && v !== false &&
            !(Array.isArray(v) && !v.length)) { out[k] = v; }
      });
    }
    return node.negate ? { not: out } : out;
  }

  // --- One editor per textarea --------------------------------------------------------------
  function Builder(textarea, description) {
    this.textarea = textarea;
    this.d = description;
    this.byName = {};
    var self = this;
    description.fields.forEach(function (f) { self.byName[f.name] = f; });
    this.host = el("div", { className: "cb", role: "group",
                            "aria-label": gettext("Condition builder") });
    this.message = el("p", { className: "cb-message", role: "alert", hidden: true });
    this.jsonMode = false;
    this.toggle = el("button", { type: "button", className: "link-button cb-toggle",
                                 text: gettext("Edit as JSON") });
    this.toggle.addEventListener("click", function () { self.switchMode(); });
    textarea.parentNode.insertBefore(el("div", { className: "cb-wrap" },
                                        [this.host, this.message, this.toggle]),
                                     textarea.nextSibling);
    textarea.addEventListener("input", function () {
      if (self.jsonMode) { self.changed(false); }
    });
    this.load();
  }

  Builder.prototype.load = function () {
    var text = this.textarea.value.trim();
    try {
      this.tree = parse(text ? JSON.parse(text) : null, false);
      if (this.tree.type === "leaf") {
        this.tree = { type: "group", mode: "all", negate: false, children: [this.tree] };
      }
    } catch (err) {
      this.showJson(gettext("The builder cannot show this condition: ") + err.message);
      return false;
    }
    this.jsonMode = false;
    this.textarea.hidden = true;
    this.host.hidden = false;
    this.message.hidden = true;
    this.toggle.textContent = gettext("Edit as JSON");
    this.render();
    return true;
  };

  Builder.prototype.showJson = function (message) {
    this.jsonMode = true;
    this.textarea.hidden = false;
    this.host.hidden = true;
    this.toggle.textContent = gettext("Back to the builder");
    this.message.textContent = message || "";
    this.message.hidden = !message;
  };

  Builder.prototype.switchMode = function () {
    if (this.jsonMode) { this.load(); } else { this.showJson(""); }
  };

  Builder.prototype.changed = function (write) {
    if (write !== false) {
      var json = serialize(this.tree, true);
      this.textarea.value = json === null ? "" : JSON.stringify(json, null, 2);
    }
    this.textarea.dispatchEvent(new CustomEvent("condition-change", { bubbles: true }));
  };

  Builder.prototype.render = function () {
    var focus = document.activeElement && this.host.contains(document.activeElement)
      ? document.activeElement.dataset.cbKey : null;
    this.host.replaceChildren(this.group(this.tree, null, "root"));
    if (focus) {
      var again = this.host.querySelector('[data-cb-key="' + focus + '"]');
      if (again) { again.focus(); }
    }
  };

  Builder.prototype.update = function () { this.render(); this.changed(); };

  Builder.prototype.group = function (node, parent, key) {
    var self = this;
    var mode = el("select", { className: "cb-mode", "data-cb-key": key + ".mode",
                              "aria-label": gettext("Match") });
    ["all", "any"].forEach(function (m) {
      mode.appendChild(el("option", { value: m, text: self.d.groups[m],
                                      selected: node.mode === m }));
    });
    mode.addEventListener("change", function () { node.mode = mode.value; self.update(); });
    var head = el("div", { className: "cb-head" }, [
      this.negation(node, key), el("span", { className: "cb-match", text: gettext("Match") }), mode]);
    if (parent) { head.appendChild(this.removal(node, parent)); }
    var list = el("div", { className: "cb-children" });
    node.children.forEach(function (child, i) {
      list.appendChild(child.type === "group" ? self.group(child, node, key + "." + i)
                                              : self.leaf(child, node, key + "." + i));
    });
    if (!node.children.length) {
      list.appendChild(el("p", { className: "cb-empty", text: parent
        ? gettext("An empty group is left out.") : gettext("No condition yet: add one.") }));
    }
    var addLeaf = el("button", { type: "button", className: "button button-small",
                                 "data-cb-key": key + ".add", text: "+ " + gettext("Condition") });
    addLeaf.addEventListener("click", function () {
      node.children.push({ type: "leaf", negate: false, field: "", op: "", value: undefined,
                           params: {} });
      self.render();
      var selects = self.host.querySelectorAll('[data-cb-key="' + key + "." +
                                               (node.children.length - 1) + '.field"]');
      if (selects.length) { selects[0].focus(); }
    });
    var addGroup = el("button", { type: "button", className: "button button-small button-quiet",
                                  text: "+ " + gettext("Group") });
    addGroup.addEventListener("click", function () {
      node.children.push({ type: "group", mode: node.mode === "all" ? "any" : "all",
                           negate: false, children: [] });
      self.render();
    });
    return el("fieldset", { className: "cb-group" + (node.negate ? " cb-negated" : "") }, [
      head, list, el("div", { className: "cb-actions" }, [addLeaf, addGroup])]);
  };

  Builder.prototype.negation = function (node, key) {
    var self = this;
    var box = el("input", { type: "checkbox", "data-cb-key": key + ".not",
                            checked: node.negate });
    box.addEventListener("change", function () { node.negate = box.checked; self.update(); });
    return el("label", { className: "cb-not", title: gettext("Customers who do NOT match this") },
              [box, el("span", { text: self.d.groups.not })]);
  };

  Builder.prototype.removal = function (node, parent) {
    var self = this;
    var button = el("button", { type: "button", className: "cb-remove",
                                "aria-label": gettext("Remove"), title: gettext("Remove"), text: "×" });
    button.addEventListener("click", function () {
      parent.children.splice(parent.children.indexOf(node), 1);
      self.update();
    });
    return button;
  };

  Builder.prototype.spec = function (name) {
    if (!name) { return null; }
    if (this.byName[name]) { return this.byName[name]; }
    var found = null;
    this.d.fields.forEach(function (f) {
      if (f.prefix && name.indexOf(f.name) === 0 && name.length > f.name.length) { found = f; }
    });
    return found;
  };

  Builder.prototype.leaf = function (node, parent, key) {
    var self = this;
    var spec = this.spec(node.field);
    var row = el("div", { className: "cb-leaf" + (node.negate ? " cb-negated" : "") });
    row.appendChild(this.negation(node, key));

    var picker = el("select", { className: "cb-field", "data-cb-key": key + ".field",
                                "aria-label": gettext("Field") });
    picker.appendChild(el("option", { value: "", text: gettext("Choose a field…") }));
    var sections = {};
    this.d.fields.forEach(function (f) {
      var name = f.section || gettext("Other");
      if (!sections[name]) {
        sections[name] = el("optgroup", { label: name });
        picker.appendChild(sections[name]);
      }
      sections[name].appendChild(el("option", { value: f.name, text: f.label,
                                                title: f.description,
                                                selected: spec === f }));
    });
    picker.addEventListener("change", function () {
      var next = self.byName[picker.value];
      node.field = picker.value;
      node.op = next ? next.ops[0] : "";
      node.value = undefined;
      node.params = {};
      if (next) {
        next.params.forEach(function (p) {
          if (p.required && p.choices && p.choices.length) { node.params[p.name] = p.choices[0].value; }
        });
      }
      self.update();
    });
    row.appendChild(picker);
    if (!spec) {
      if (node.field) {
        row.appendChild(el("span", { className: "cb-unknown",
                                     text: gettext("Unknown field: ") + node.field }));
      }
      row.appendChild(this.removal(node, parent));
      return row;
    }
    if (spec.prefix) {
      var keyInput = el("input", { type: "text", className: "cb-key", "data-cb-key": key + ".k",
                                   placeholder: gettext("key"), "aria-label": gettext("Attribute key"),
                                   value: node.field.slice(spec.name.length) });
      keyInput.addEventListener("change", function () {
        node.field = spec.name + keyInput.value.trim();
        self.update();
      });
      if (node.field === spec.name) { node.field = spec.name; }
      row.appendChild(keyInput);
    }
    // Params that pick what the value means (a stage model) come before the operator.
    var leading = spec.params.filter(function (p) { return p.required; });
    var trailing = spec.params.filter(function (p) { return !p.required; });
    leading.forEach(function (p) { row.appendChild(self.param(node, spec, p, key)); });

    var op = el("select", { className: "cb-op", "data-cb-key": key + ".op",
                            "aria-label": gettext("Operator") });
    spec.ops.forEach(function (o) {
      op.appendChild(el("option", { value: o, text: self.d.operators[o] || o,
                                    selected: node.op === o }));
    });
    if (spec.ops.indexOf(node.op) < 0) { node.op = spec.ops[0]; }
    op.addEventListener("change", function () {
      var wasMulti = MULTI.indexOf(node.op) >= 0;
      node.op = op.value;
      var isMulti = MULTI.indexOf(node.op) >= 0;
      if (wasMulti !== isMulti || node.op === "between" || node.op === "is_null" ||
          DAYS.indexOf(node.op) >= 0) { node.value = undefined; }
      if (node.op === "is_null") { node.value = true; }
      self.update();
    });
    row.appendChild(op);
    row.appendChild(this.valueInput(node, spec, key));
    if (trailing.length) {
      row.appendChild(el("span", { className: "cb-params" }, trailing.map(function (p) {
        return self.param(node, spec, p, key);
      })));
    }
    row.appendChild(this.removal(node, parent));
    return row;
  };

  Builder.prototype.choicesFor = function (node, choices) {
    if (!choices) { return null; }
    return choices.filter(function (c) {
      return !c.when || Object.keys(c.when).every(function (k) {
        return node.params[k] === c.when[k];
      });
    });
  };

  // A value as stored may name a choice by another key (a tag by its name): use the choice's.
  function matchChoice(choices, value) {
    for (var i = 0; i < choices.length; i++) {
      var c = choices[i];
      if (c.value === value || String(c.value) === String(value) ||
          (c.name !== undefined && c.name === value)) { return c; }
    }
    return null;
  }

  function scalar(kind, text) {
    if (text === "") { return undefined; }
    if (kind === "integer") { var n = parseInt(text, 10); return isNaN(n) ? text : n; }
    if (kind === "number") { var x = Number(text); return isNaN(x) ? text : x; }
    if (kind === "bool") { return text === "true"; }
    return text;
  }

  Builder.prototype.refChip = function (ref, clear) {
    var self = this;
    var undo = el("button", { type: "button", className: "cb-remove", title: gettext("Replace"),
                              "aria-label": gettext("Replace"), text: "×" });
    undo.addEventListener("click", function () { clear(); self.update(); });
    return el("span", { className: "cb-ref", title: gettext("A threshold of the stage model") }, [
      el("span", { text: gettext("threshold") + " " + ref.threshold }), undo]);
  };

  Builder.prototype.valueInput = function (node, spec, key) {
    var self = this;
    var op = node.op;
    var k = key + ".value";
    if (isRef(node.value)) {
      return this.refChip(node.value, function () { node.value = undefined; });
    }
    if (op === "is_null") {
      var empty = el("select", { className: "cb-value", "data-cb-key": k,
                                 "aria-label": gettext("Value") });
      empty.appendChild(el("option", { value: "true", text: gettext("yes"), selected: node.value !== false }));
      empty.appendChild(el("option", { value: "false", text: gettext("no"), selected: node.value === false }));
      empty.addEventListener("change", function () {
        node.value = empty.value === "true";
        self.changed();
      });
      return empty;
    }
    var kind = spec.kind;
    if (DAYS.indexOf(op) >= 0 || COUNTS.indexOf(op) >= 0) { kind = "integer"; }
    if (op === "sum_gte") { kind = "number"; }
    var choices = (DAYS.indexOf(op) >= 0 || COUNTS.indexOf(op) >= 0 || op === "sum_gte" ||
                   op === "contains") ? null : this.choicesFor(node, spec.choices);
    var suffix = DAYS.indexOf(op) >= 0 ? gettext("days") : "";
    if (MULTI.indexOf(op) >= 0) {
      var values = Array.isArray(node.value) ? node.value
        : node.value === undefined || node.value === null ? [] : [node.value];
      if (choices) {
        var multi = el("select", { multiple: true, className: "cb-value cb-multi",
                                   "data-cb-key": k, "aria-label": gettext("Values") });
        var picked = values.map(function (v) { return matchChoice(choices, v); });
        // Values that no choice has (a deleted tag, a group beyond the first thousand)
        // stay, shown by their key.
        values.forEach(function (v, i) {
          if (!picked[i]) {
            multi.appendChild(el("option", { value: String(v), text: String(v), selected: true }));
          }
        });
        choices.forEach(function (c) {
          multi.appendChild(el("option", {
            value: String(c.value), text: c.group ? c.label + " · " + c.group : c.label,
            selected: picked.indexOf(c) >= 0 }));
        });
        if (picked.some(Boolean)) {
          node.value = values.map(function (v, i) { return picked[i] ? picked[i].value : v; });
        }
        var read = function () {
          node.value = Array.prototype.filter.call(multi.options, function (o) {
            return o.selected;
          }).map(function (o) {
            var c = matchChoice(choices, o.value);
            return c ? c.value : o.value;
          });
          self.changed();
        };
        multi.addEventListener("change", read);
        if (window.TomSelect) {
          var wrap = el("span", { className: "cb-value-wrap" }, [multi]);
          setTimeout(function () {
            if (!multi.isConnected || multi.tomselect) { return; }
            new window.TomSelect(multi, { plugins: ["remove_button"], maxOptions: 1000,
                                          placeholder: gettext("Choose…"),
                                          onChange: read });
          }, 0);
          return wrap;
        }
        return multi;
      }
      var list = el("input", { type: "text", className: "cb-value", "data-cb-key": k,
                               placeholder: gettext("values, separated by commas"),
                               "aria-label": gettext("Values"), value: values.join(", ") });
      list.addEventListener("change", function () {
        node.value = list.value.split(/[,，]/).map(function (s) { return s.trim(); })
          .filter(Boolean).map(function (s) { return scalar(kind, s); });
        self.changed();
      });
      return list;
    }
    if (op === "between") {
      var pair = Array.isArray(node.value) ? node.value.slice(0, 2) : [undefined, undefined];
      var inputs = [0, 1].map(function (i) {
        var input = self.single(kind, null, pair[i], k + "." + i, function (v) {
          pair[i] = v;
          node.value = pair.slice();
          self.changed();
        });
        return input;
      });
      return el("span", { className: "cb-between" }, [
        inputs[0], el("span", { text: gettext("and") }), inputs[1]]);
    }
    var single = this.single(kind, choices, node.value, k, function (v) {
      node.value = v;
      self.changed();
    });
    return suffix ? el("span", { className: "cb-with-unit" },
                       [single, el("span", { text: suffix })]) : single;
  };

  Builder.prototype.single = function (kind, choices, value, key, set) {
    var input;
    if (choices || kind === "bool") {
      input = el("select", { className: "cb-value", "data-cb-key": key,
                             "aria-label": gettext("Value") });
      input.appendChild(el("option", { value: "", text: gettext("Choose…") }));
      var options = choices || [{ value: true, label: gettext("yes") }, { value: false, label: gettext("no") }];
      var current = choices ? matchChoice(options, value) : null;
      if (choices && value !== undefined && value !== null && !current) {
        input.appendChild(el("option", { value: String(value), text: String(value), selected: true }));
      }
      options.forEach(function (c) {
        input.appendChild(el("option", {
          value: String(c.value), text: c.group ? c.label + " · " + c.group : c.label,
          selected: choices ? current === c : value === c.value }));
      });
      input.addEventListener("change", function () {
        if (kind === "bool") { set(input.value === "" ? undefined : input.value === "true"); return; }
        var c = matchChoice(options, input.value);
        set(c ? c.value : scalar(kind, input.value));
      });
      return input;
    }
    var type = kind === "integer" || kind === "number" ? "number"
      : kind === "datetime" ? "datetime-local" : "text";
    var shown = value === undefined || value === null ? "" : String(value);
    if (type === "datetime-local" && shown) { shown = shown.slice(0, 16); }
    input = el("input", { type: type, className: "cb-value", "data-cb-key": key,
                          "aria-label": gettext("Value"), value: shown,
                          min: type === "number" ? "0" : null,
                          step: kind === "number" ? "any" : null });
    input.addEventListener("change", function () { set(scalar(kind, input.value)); });
    return input;
  };

  Builder.prototype.param = function (node, spec, p, key) {
    var self = this;
    var k = key + ".p." + p.name;
    var value = node.params[p.name];
    var label = el("label", { className: "cb-param" });
    if (isRef(value)) {
      label.appendChild(el("span", { text: p.label }));
      label.appendChild(this.refChip(value, function () { delete node.params[p.name]; }));
      return label;
    }
    if (p.kind === "bool") {
      var box = el("input", { type: "checkbox", "data-cb-key": k, checked: value === true });
      box.addEventListener("change", function () {
        node.params[p.name] = box.checked;
        self.changed();
      });
      label.appendChild(box);
      label.appendChild(el("span", { text: p.label }));
      return label;
    }
    label.appendChild(el("span", { text: p.label }));
    if (p.choices && p.multiple) {
      var multi = el("select", { multiple: true, className: "cb-value cb-multi",
                                 "data-cb-key": k, "aria-label": p.label });
      var chosen = Array.isArray(value) ? value : value ? [value] : [];
      p.choices.forEach(function (c) {
        multi.appendChild(el("option", { value: String(c.value), text: c.label,
                                         selected: chosen.indexOf(c.value) >= 0 }));
      });
      var read = function () {
        node.params[p.name] = Array.prototype.filter.call(multi.options, function (o) {
          return o.selected;
        }).map(function (o) { return o.value; });
        self.changed();
      };
      multi.addEventListener("change", read);
      if (window.TomSelect) {
        setTimeout(function () {
          if (!multi.isConnected || multi.tomselect) { return; }
          new window.TomSelect(multi, { plugins: ["remove_button"], placeholder: gettext("any"),
                                        onChange: read });
        }, 0);
      }
      label.appendChild(multi);
      return label;
    }
    var input = this.single(p.kind, p.choices, value, k, function (v) {
      node.params[p.name] = v;
      if (p.required) {   // the value's choices depend on it (a stage model's stages)
        node.value = undefined;
        self.update();
      } else {
        self.changed();
      }
    });
    label.appendChild(input);
    return label;
  };

  function mountAll(root) {
    (root || document).querySelectorAll("textarea[data-condition-builder]").forEach(function (ta) {
      if (ta.dataset.builderMounted) { return; }
      ta.dataset.builderMounted = "1";
      var url = ta.dataset.fieldsUrl || "/api/v1/conditions/fields/";
      fields(url).then(function (description) {
        ta.builder = new Builder(ta, description);
      }).catch(function (err) {
        var note = el("p", { className: "cb-message", role: "alert",
                             text: gettext("The builder could not load its fields; edit the JSON.") +
                                   " (" + err.message + ")" });
        ta.parentNode.insertBefore(note, ta.nextSibling);
      }).finally(function () {
        // Built (the textarea hidden behind it) or given up (the textarea left to edit).
        ta.dataset.builderReady = "1";
      });
    });
  }

  window.conditionBuilder = { mount: mountAll, parse: parse, serialize: serialize };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { mountAll(); });
  } else {
    mountAll();
  }
  document.addEventListener("htmx:afterSettle", function (e) { mountAll(e.target); });
})();
