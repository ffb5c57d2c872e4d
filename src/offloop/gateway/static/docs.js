/*
 * The gateway's interactive docs: reads /openapi.json from this gateway, lists every
 * operation, and lets a user send a request to it from the page.
 *
 * Plain JavaScript, no framework and nothing loaded from elsewhere: the page must work on a
 * host with no internet access. Text from the document or from responses is only ever set
 * with textContent, never parsed as HTML.
 */
(function () {
  "use strict";

  var MAX_DEPTH = 8; // how deep an example body nests before it stops (recursive structs)
  var doc = null;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) {
      if (child) node.appendChild(child);
    });
    return node;
  }

  // -- example bodies from JSON Schema ------------------------------------------------

  function resolve(ref) {
    if (ref.indexOf("#/") !== 0) return null;
    var node = doc;
    var parts = ref.slice(2).split("/");
    for (var i = 0; i < parts.length; i++) {
      var key = parts[i].replace(/~1/g, "/").replace(/~0/g, "~");
      if (node === null || typeof node !== "object" || !(key in node)) return null;
      node = node[key];
    }
    return node;
  }

  function mapKey(schema) {
    var names = schema.propertyNames || {};
    if (names.enum && names.enum.length) return String(names.enum[0]);
    if (names.pattern && names.pattern.indexOf("0-9") !== -1) return "1";
    return "key";
  }

  // An example value of `schema`, or undefined where none can be made (a recursive ref).
  function example(schema, depth, seen) {
    if (!schema || typeof schema !== "object" || depth > MAX_DEPTH) return undefined;
    if ("default" in schema) return schema["default"];
    if ("example" in schema) return schema.example;
    if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
    if (schema.$ref) {
      if (seen.indexOf(schema.$ref) !== -1) return undefined;
      return example(resolve(schema.$ref), depth + 1, seen.concat([schema.$ref]));
    }
    if (Array.isArray(schema["enum"]) && schema["enum"].length) return schema["enum"][0];
    if ("const" in schema) return schema["const"];
    var choices = schema.oneOf || schema.anyOf;
    if (Array.isArray(choices)) {
      for (var i = 0; i < choices.length; i++) {
        var value = example(choices[i], depth + 1, seen);
        if (value !== undefined) return value;
      }
      return undefined;
    }
    var type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
    if (!type && schema.properties) type = "object";
    switch (type) {
      case "object": {
        var out = {};
        var props = schema.properties || {};
        Object.keys(props).forEach(function (name) {
          var v = example(props[name], depth + 1, seen);
          if (v !== undefined) out[name] = v;
        });
        var extra = schema.additionalProperties;
        if (extra && typeof extra === "object" && !schema.properties) {
          var v = example(extra, depth + 1, seen);
          if (v !== undefined) out[mapKey(schema)] = v;
        }
        return out;
      }
      case "array": {
        if (Array.isArray(schema.prefixItems)) {
          // A tuple, such as a [key, value] pair of a map whose keys are not strings.
          var tuple = schema.prefixItems.map(function (s) {
            return example(s, depth + 1, seen);
          });
          return tuple.indexOf(undefined) === -1 ? tuple : undefined;
        }
        var item = example(schema.items, depth + 1, seen);
        return item === undefined ? [] : [item];
      }
      case "string":
        if (schema.contentEncoding === "base64") return "aGVsbG8=";
        if (schema.pattern && schema.pattern.indexOf("0-9") !== -1) return "0";
        return "string";
      case "integer":
        return typeof schema.minimum === "number" && schema.minimum > 0 ? schema.minimum : 0;
      case "number":
        return 0.5;
      case "boolean":
        return false;
      case "null":
        return null;
      default:
        return undefined;
    }
  }

  function exampleBody(op) {
    var content = op.requestBody && op.requestBody.content;
    var media = content && content["application/json"];
    if (!media) return null;
    var value = example(media.schema, 0, []);
    return JSON.stringify(value === undefined ? {} : value, null, 2);
  }

  // -- one operation -------------------------------------------------------------------

  function showResponse(out, status, started, response, text) {
    var ms = Math.round(performance.now() - started);
    var ctype = response ? response.headers.get("content-type") || "" : "";
    var shown = text;
    if (ctype.indexOf("application/json") === 0) {
      try {
        shown = JSON.stringify(JSON.parse(text), null, 2);
      } catch (e) {
        shown = text;
      }
    }
    out.status.textContent = status + " \u00b7 " + ms + " ms";
    out.status.className = "status s" + String(status).charAt(0);
    var retry = response && response.headers.get("retry-after");
    out.extra.textContent = retry ? "Retry-After: " + retry : "";
    out.body.textContent = shown;
    out.box.hidden = false;
  }

  function send(method, path, textarea, timeoutInput, out, button) {
    var init = { method: method.toUpperCase(), headers: {} };
    if (textarea) {
      init.headers["content-type"] = "application/json";
      init.body = textarea.value;
    }
    if (timeoutInput && timeoutInput.value.trim()) {
      init.headers["x-request-timeout"] = timeoutInput.value.trim();
    }
    var started = performance.now();
    button.disabled = true;
    fetch(path, init)
      .then(function (response) {
        return response.text().then(function (text) {
          showResponse(out, response.status, started, response, text);
        });
      })
      .catch(function (err) {
        showResponse(out, "network error", started, null, String(err));
      })
      .then(function () {
        button.disabled = false;
      });
  }

  function operationCard(path, method, op) {
    var body = exampleBody(op);
    var textarea = null;
    var timeoutInput = null;
    var controls = [];
    if (body !== null) {
      textarea = el("textarea", { spellcheck: "false", "aria-label": "request body" });
      textarea.value = body;
      textarea.rows = Math.min(16, Math.max(3, body.split("\n").length + 1));
      controls.push(el("label", { className: "field", text: "Request body (JSON)" }));
      controls.push(textarea);
      timeoutInput = el("input", {
        type: "text",
        inputmode: "decimal",
        placeholder: "default",
        "aria-label": "X-Request-Timeout",
        className: "timeout",
      });
    }
    var out = {
      status: el("span", { className: "status" }),
      extra: el("span", { className: "extra" }),
      body: el("pre", { className: "response" }),
    };
    out.box = el("div", { className: "result" }, [
      el("div", { className: "result-head" }, [out.status, out.extra]),
      out.body,
    ]);
    out.box.hidden = true;
    var button = el("button", { type: "button", text: "Send" });
    button.addEventListener("click", function () {
      send(method, path, textarea, timeoutInput, out, button);
    });
    var row = [button];
    if (timeoutInput) {
      row.push(el("label", { className: "inline", text: "X-Request-Timeout (s)" }));
      row.push(timeoutInput);
    }
    controls.push(el("div", { className: "actions" }, row));
    controls.push(out.box);

    var codes = Object.keys(op.responses || {}).join(" ");
    var details = el("details", { className: "op " + method, id: op.operationId || path }, [
      el("summary", {}, [
        el("span", { className: "method", text: method.toUpperCase() }),
        el("code", { className: "path", text: path }),
        el("span", { className: "summary", text: op.summary || "" }),
      ]),
      el("div", { className: "op-body" }, [
        op.description ? el("p", { className: "description", text: op.description }) : null,
        codes ? el("p", { className: "codes", text: "Responses: " + codes }) : null,
      ].concat(controls)),
    ]);
    return details;
  }

  // -- the page ------------------------------------------------------------------------

  function render() {
    var info = document.getElementById("info");
    var title = (doc.info && doc.info.title) || "API";
    var version = (doc.info && doc.info.version) || "";
    document.title = title;
    info.textContent = "";
    info.appendChild(el("span", { text: (version ? "version " + version : title) + " \u00b7 " }));
    info.appendChild(el("a", { href: "/openapi.json", text: "openapi.json" }));
    info.appendChild(el("span", { text: " \u00b7 OpenAPI " + (doc.openapi || "?") }));

    var groups = {};
    var order = [];
    Object.keys(doc.paths || {}).forEach(function (path) {
      var item = doc.paths[path];
      ["get", "post", "put", "delete", "patch"].forEach(function (method) {
        var op = item[method];
        if (!op) return;
        var tag = (op.tags && op.tags[0]) || "default";
        if (!(tag in groups)) {
          groups[tag] = [];
          order.push(tag);
        }
        groups[tag].push(operationCard(path, method, op));
      });
    });
    var descriptions = {};
    (doc.tags || []).forEach(function (t) {
      descriptions[t.name] = t.description || "";
    });
    var main = document.getElementById("ops");
    main.textContent = "";
    order.forEach(function (tag) {
      main.appendChild(
        el("section", { className: "group" }, [
          el("h2", { text: tag }),
          descriptions[tag] ? el("p", { className: "tag-desc", text: descriptions[tag] }) : null,
        ].concat(groups[tag]))
      );
    });
    // The operation named in the URL's fragment (#TextLab_ping) starts open, else the first.
    var wanted = decodeURIComponent(window.location.hash.slice(1));
    var first = (wanted && document.getElementById(wanted)) || main.querySelector("details.op");
    if (first) first.open = true;
  }

  fetch("/openapi.json")
    .then(function (response) {
      if (!response.ok) throw new Error("/openapi.json answered " + response.status);
      return response.json();
    })
    .then(function (json) {
      doc = json;
      render();
    })
    .catch(function (err) {
      var info = document.getElementById("info");
      info.textContent = "Cannot load /openapi.json: " + err;
      info.className = "error";
    });
})();
