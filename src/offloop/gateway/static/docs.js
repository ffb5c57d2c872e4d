/*
 * The gateway's interactive docs: reads openapi.json from this gateway, lists every
 * operation with its description, arguments, result and declared exceptions, lets a user send
 * a request to it from the page, and lists the types (structs, exceptions, enums) at the end.
 *
 * Plain JavaScript, no framework and nothing loaded from elsewhere: the page must work on a
 * host with no internet access. Text from the document or from responses is only ever set
 * with textContent, never parsed as HTML.
 *
 * Every URL is relative to the page's own: the gateway may be mounted under a prefix, or
 * served behind a proxy that strips one, and the page is at <prefix>/docs either way.
 */
(function () {
  "use strict";

  var MAX_DEPTH = 8; // how deep an example body nests before it stops (recursive structs)
  var SCHEMAS = "#/components/schemas/";
  var JSON_TYPE = "application/json";
  var doc = null;
  // The gateway's root as the browser sees it: the page is <root>/docs.
  var BASE = new URL(".", window.location.href);

  function url(path) {
    return new URL(path.replace(/^\/+/, ""), BASE).href;
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function resolve(ref) {
    if (typeof ref !== "string" || ref.indexOf("#/") !== 0) return null;
    var node = doc;
    var parts = ref.slice(2).split("/");
    for (var i = 0; i < parts.length; i++) {
      var key = parts[i].replace(/~1/g, "/").replace(/~0/g, "~");
      if (node === null || typeof node !== "object" || !(key in node)) return null;
      node = node[key];
    }
    return node;
  }

  function jsonMedia(holder) {
    var content = holder && holder.content;
    return (content && content[JSON_TYPE]) || null;
  }

  // -- descriptions: paragraphs, list items and `code`, as text ---------------------------

  function inline(text) {
    // Backticks mark code, as in the IDL's comments and CommonMark.
    return text.split("`").map(function (part, i) {
      return i % 2 ? el("code", { text: part }) : document.createTextNode(part);
    });
  }

  function prose(text, className) {
    var box = el("div", { className: "prose" + (className ? " " + className : "") });
    String(text || "")
      .split(/\n\s*\n/)
      .forEach(function (para) {
        // Lines of one paragraph are one line (the IDL wraps them), but list items.
        var lines = [];
        para.split("\n").forEach(function (line) {
          var trimmed = line.trim();
          if (!trimmed) return;
          if (!lines.length || /^([-*]|\d+\.)\s/.test(trimmed)) lines.push(trimmed);
          else lines[lines.length - 1] += " " + trimmed;
        });
        if (!lines.length) return;
        var p = el("p");
        lines.forEach(function (line, i) {
          if (i) p.appendChild(el("br"));
          inline(line).forEach(function (node) {
            p.appendChild(node);
          });
        });
        box.appendChild(p);
      });
    return box;
  }

  function firstSentence(text) {
    var flat = String(text || "").replace(/\s+/g, " ").trim();
    var end = flat.search(/\.(\s|$)/);
    var first = end === -1 ? flat : flat.slice(0, end + 1);
    return first.length > 90 ? first.slice(0, 87) + "\u2026" : first;
  }

  // -- types, as the IDL spells them -----------------------------------------------------

  var INT_NAMES = { int8: "byte", int16: "i16", int32: "i32", int64: "i64" };

  function schemaName(ref) {
    return typeof ref === "string" && ref.indexOf(SCHEMAS) === 0 ? ref.slice(SCHEMAS.length) : null;
  }

  function typeLink(name) {
    if (!doc.components || !doc.components.schemas || !(name in doc.components.schemas)) {
      return el("code", { text: name });
    }
    return el("a", { href: "#schema-" + encodeURIComponent(name), className: "type-ref" }, [
      el("code", { text: name }),
    ]);
  }

  // The nodes of a type label: `list<ParseResult>` with ParseResult a link to its type.
  function typeParts(schema) {
    if (!schema || typeof schema !== "object") return ["any"];
    if (schema.$ref) {
      var name = schemaName(schema.$ref);
      return [name ? typeLink(name) : schema.$ref];
    }
    var choices = schema.oneOf || schema.anyOf;
    if (Array.isArray(choices) && choices.length) {
      // An i64 or a double: a number, or a string form of one.
      var head = choices[0] || {};
      if (head.type === "integer" && head.format in INT_NAMES) return [INT_NAMES[head.format]];
      if (head.type === "number") return ["double"];
      var out = [];
      choices.forEach(function (choice, i) {
        if (i) out.push(" | ");
        out = out.concat(typeParts(choice));
      });
      return out;
    }
    if ("const" in schema) return [JSON.stringify(schema["const"])];
    switch (schema.type) {
      case "integer":
        return [INT_NAMES[schema.format] || "integer"];
      case "number":
        return ["double"];
      case "boolean":
        return ["bool"];
      case "null":
        return ["null"];
      case "string":
        return [schema.contentEncoding === "base64" ? "binary (base64)" : "string"];
      case "array": {
        var items = schema.items || {};
        if (Array.isArray(items.prefixItems) && items.prefixItems.length === 2) {
          return ["map<"]
            .concat(typeParts(items.prefixItems[0]), [", "], typeParts(items.prefixItems[1]))
            .concat(["> as [key, value] pairs"]);
        }
        return [schema.uniqueItems ? "set<" : "list<"].concat(typeParts(items), [">"]);
      }
      case "object": {
        var values = schema.additionalProperties;
        if (values && typeof values === "object") {
          var names = schema.propertyNames || {};
          var key = names.pattern ? "integer" : names["enum"] ? "enum" : "string";
          return ["map<" + key + ", "].concat(typeParts(values), [">"]);
        }
        return ["object"];
      }
      default:
        return ["any"];
    }
  }

  function typeLabel(schema) {
    return el("span", { className: "type" }, typeParts(schema));
  }

  // -- example bodies, where the document gives none -------------------------------------

  function mapKey(schema) {
    var names = schema.propertyNames || {};
    if (names["enum"] && names["enum"].length) return String(names["enum"][0]);
    if (names.pattern && names.pattern.indexOf("0-9") !== -1) return "1";
    return "key";
  }

  // An example value of `schema`, or undefined where none can be made (a recursive ref).
  function example(schema, name, depth, seen) {
    if (!schema || typeof schema !== "object" || depth > MAX_DEPTH) return undefined;
    if ("default" in schema) return schema["default"];
    if ("example" in schema) return schema.example;
    if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
    if (schema.$ref) {
      if (seen.indexOf(schema.$ref) !== -1) return undefined;
      return example(resolve(schema.$ref), name, depth + 1, seen.concat([schema.$ref]));
    }
    if (Array.isArray(schema["enum"]) && schema["enum"].length) return schema["enum"][0];
    if ("const" in schema) return schema["const"];
    var choices = schema.oneOf || schema.anyOf;
    if (Array.isArray(choices)) {
      for (var i = 0; i < choices.length; i++) {
        var value = example(choices[i], name, depth + 1, seen);
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
        Object.keys(props).forEach(function (prop) {
          var v = example(props[prop], prop, depth + 1, seen);
          if (v !== undefined) out[prop] = v;
        });
        var extra = schema.additionalProperties;
        if (extra && typeof extra === "object" && !schema.properties) {
          var v = example(extra, name, depth + 1, seen);
          if (v !== undefined) out[mapKey(schema)] = v;
        }
        return out;
      }
      case "array": {
        if (Array.isArray(schema.prefixItems)) {
          // A tuple, such as a [key, value] pair of a map whose keys are not strings.
          var tuple = schema.prefixItems.map(function (s) {
            return example(s, name, depth + 1, seen);
          });
          return tuple.indexOf(undefined) === -1 ? tuple : undefined;
        }
        var item = example(schema.items, name, depth + 1, seen);
        return item === undefined ? [] : [item];
      }
      case "string":
        if (schema.contentEncoding === "base64") return "ZXhhbXBsZQ==";
        if (schema.pattern && schema.pattern.indexOf("0-9") !== -1) return "1";
        return "example " + String(name || "text").replace(/_/g, " ");
      case "integer":
        return typeof schema.minimum === "number" && schema.minimum > 1 ? schema.minimum : 1;
      case "number":
        return 1.5;
      case "boolean":
        return true;
      case "null":
        return null;
      default:
        return undefined;
    }
  }

  function exampleBody(op) {
    var media = jsonMedia(op.requestBody);
    if (!media) return null;
    var value = "example" in media ? media.example : example(media.schema, "", 0, []);
    return JSON.stringify(value === undefined ? {} : value, null, 2);
  }

  // -- tables of fields: arguments, struct fields ----------------------------------------

  // A table: `headers` is a list of column titles, `rows` a list of lists of <td> elements.
  function table(className, headers, rows) {
    var head = el(
      "tr",
      {},
      headers.map(function (title) {
        return el("th", { text: title });
      })
    );
    var body = rows.map(function (cells) {
      return el("tr", {}, cells);
    });
    return el("table", { className: className }, [el("thead", {}, [head]), el("tbody", {}, body)]);
  }

  function fieldsTable(schema, emptyText) {
    var props = (schema && schema.properties) || {};
    var names = Object.keys(props);
    if (!names.length) return el("p", { className: "muted", text: emptyText });
    var required = (schema && schema.required) || [];
    var rows = names.map(function (name) {
      var prop = props[name];
      var label = [el("code", { text: name })];
      if (required.indexOf(name) !== -1) {
        label.push(el("span", { className: "req", text: "required" }));
      }
      var cell = el("td", { className: "desc" });
      if (prop.description) cell.appendChild(prose(prop.description));
      if ("default" in prop) {
        var shown = el("code", { text: JSON.stringify(prop["default"]) });
        cell.appendChild(el("p", { className: "muted" }, ["Default: ", shown]));
      }
      return [el("td", { className: "name" }, label), el("td", {}, [typeLabel(prop)]), cell];
    });
    return table("fields", ["Name", "Type", "Description"], rows);
  }

  function exampleBlock(label, value) {
    return el("details", { className: "example" }, [
      el("summary", { text: label }),
      el("pre", { text: JSON.stringify(value, null, 2) }),
    ]);
  }

  // -- responses: the result, declared exceptions, the other errors ----------------------

  // The declared exceptions a response's schema names: Error.<X> bodies, directly or in a
  // oneOf/anyOf (a status shared by several exceptions, or by a standard error).
  function declaredExceptions(schema) {
    var refs = [];
    if (schema && schema.$ref) refs.push(schema.$ref);
    (schema && (schema.oneOf || schema.anyOf) || []).forEach(function (s) {
      if (s && s.$ref) refs.push(s.$ref);
    });
    var found = [];
    refs.forEach(function (ref) {
      var component = schemaName(ref);
      if (!component || component.indexOf("Error.") !== 0) return;
      var body = resolve(ref);
      var error = body && body.properties && body.properties.error;
      var props = (error && error.properties) || {};
      found.push({
        component: component,
        type: props.type && "const" in props.type ? props.type["const"] : component.slice(6),
        fields: props.fields ? schemaName(props.fields.$ref) : null,
      });
    });
    return found;
  }

  function responsesBlock(op) {
    var responses = op.responses || {};
    var results = [];
    var thrown = [];
    var others = [];
    Object.keys(responses).forEach(function (status) {
      var response = responses[status] || {};
      if (response.$ref) {
        var shared = resolve(response.$ref) || {};
        others.push({ status: status, description: shared.description || "" });
        return;
      }
      var media = jsonMedia(response);
      var schema = media && media.schema;
      if (status.charAt(0) === "2") {
        results.push({ status: status, response: response, media: media });
        return;
      }
      var exceptions = declaredExceptions(schema);
      if (!exceptions.length) {
        others.push({ status: status, description: response.description || "" });
        return;
      }
      exceptions.forEach(function (exc) {
        var examples = (media && media.examples) || {};
        var ex = examples[exc.component.slice(6)] || null;
        thrown.push({ status: status, exc: exc, example: ex });
      });
      var generic = (schema.anyOf || []).some(function (s) {
        return s && s.$ref === SCHEMAS + "Error";
      });
      // A standard status that a declared exception was moved onto: both can answer.
      if (generic) others.push({ status: status, description: response.description || "" });
    });

    var box = el("div", { className: "responses" });
    results.forEach(function (r) {
      var props = r.media && r.media.schema && r.media.schema.properties;
      var head = el("p", {}, [el("span", { className: "code s2", text: r.status }), " "]);
      if (props && props.result) {
        head.appendChild(el("span", {}, ["{\"result\": ", typeLabel(props.result), "}"]));
      } else if (r.media && r.media.schema) {
        head.appendChild(typeLabel(r.media.schema));
      }
      var said = inline(r.response.description || "");
      head.appendChild(el("span", { className: "muted" }, [" \u2014 "].concat(said)));
      box.appendChild(head);
      if (r.media && "example" in r.media) {
        box.appendChild(exampleBlock("Example response", r.media.example));
      }
    });
    if (thrown.length) {
      box.appendChild(el("h4", { text: "Declared exceptions" }));
      var rows = thrown.map(function (t) {
        var component = t.exc.fields ? resolve(SCHEMAS + t.exc.fields) : null;
        var cell = el("td", { className: "desc" });
        if (component && component.description) cell.appendChild(prose(component.description));
        // The doc comment of the throws clause: when this method raises it.
        if (t.example && t.example.description) {
          cell.appendChild(prose(t.example.description, "muted"));
        }
        if (t.example && "value" in t.example) {
          cell.appendChild(exampleBlock("Example error body", t.example.value));
        }
        var name = t.exc.fields ? typeLink(t.exc.fields) : el("code", { text: t.exc.type });
        var status = el("span", { className: "code s" + t.status.charAt(0), text: t.status });
        return [el("td", {}, [status]), el("td", { className: "name" }, [name]), cell];
      });
      box.appendChild(table("fields", ["Status", "Exception", "Description"], rows));
    }
    if (others.length) {
      var lead = results.length || thrown.length ? "Other responses: " : "Responses: ";
      var line = el("p", { className: "other-codes" }, [lead]);
      others.forEach(function (o, i) {
        if (i) line.appendChild(document.createTextNode(" "));
        var cls = "code s" + o.status.charAt(0);
        line.appendChild(el("span", { className: cls, title: o.description, text: o.status }));
      });
      box.appendChild(line);
    }
    return box;
  }

  // -- sending a request -----------------------------------------------------------------

  function showResponse(out, status, started, response, text) {
    var ms = Math.round(performance.now() - started);
    var ctype = response ? response.headers.get("content-type") || "" : "";
    var shown = text;
    if (ctype.indexOf(JSON_TYPE) === 0) {
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

  // -- the credential (authentication on: --auth-api-keys, --auth-jwt-key-file...) -----

  // The API key or JWT typed in the page's credential box, sent as a bearer credential with
  // openapi.json and every call; kept for the browser tab's session only.
  var credentialInput = document.getElementById("credential");
  if (credentialInput) credentialInput.value = sessionStorage.getItem("offloop-credential") || "";

  function authorize(headers) {
    var value = credentialInput ? credentialInput.value.trim() : "";
    if (value) headers["authorization"] = "Bearer " + value;
    return headers;
  }

  function showCredentialBox() {
    var box = document.getElementById("auth");
    if (box) box.hidden = false;
  }

  function send(method, path, textarea, timeoutInput, out, button) {
    var init = { method: method.toUpperCase(), headers: authorize({}) };
    if (textarea) {
      init.headers["content-type"] = JSON_TYPE;
      init.body = textarea.value;
    }
    if (timeoutInput && timeoutInput.value.trim()) {
      init.headers["x-request-timeout"] = timeoutInput.value.trim();
    }
    var started = performance.now();
    button.disabled = true;
    fetch(url(path), init)
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

  // -- one operation -------------------------------------------------------------------

  function operationCard(path, method, op) {
    var body = exampleBody(op);
    var textarea = null;
    var timeoutInput = null;
    var parts = [op.description ? prose(op.description, "description") : null];
    var media = jsonMedia(op.requestBody);
    if (media) {
      parts.push(el("h4", { text: "Arguments" }));
      parts.push(fieldsTable(media.schema, "None."));
    }
    parts.push(el("h4", { text: "Returns" }));
    parts.push(responsesBlock(op));

    parts.push(el("h4", { text: "Try it" }));
    if (body !== null) {
      textarea = el("textarea", { spellcheck: "false", "aria-label": "request body" });
      textarea.value = body;
      textarea.rows = Math.min(16, Math.max(3, body.split("\n").length + 1));
      parts.push(el("label", { className: "field", text: "Request body (JSON)" }));
      parts.push(textarea);
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
    parts.push(el("div", { className: "actions" }, row));
    parts.push(out.box);

    var brief = op.description ? firstSentence(op.description) : "";
    return el("details", { className: "op " + method, id: op.operationId || path }, [
      el("summary", {}, [
        el("span", { className: "method", text: method.toUpperCase() }),
        el("code", { className: "path", text: path }),
        el("span", { className: "summary" }, inline(brief || op.summary || "")),
      ]),
      el("div", { className: "op-body" }, parts),
    ]);
  }

  // -- the types: structs, exceptions, enums -----------------------------------------------

  function typeCard(name, schema, exceptions) {
    var kind = "struct";
    var strings = null;
    var ints = [];
    if (Array.isArray(schema["enum"]) && !schema.properties) {
      // An enum: its names, and each name's integer beside them (x-enum-values).
      kind = "enum";
      strings = schema["enum"];
      if (Array.isArray(schema["x-enum-values"])) ints = schema["x-enum-values"];
    } else if (exceptions[name]) {
      kind = "exception";
    }
    var heading = [el("code", { text: name }), " ", el("span", { className: "kind", text: kind })];
    var parts = [el("h3", {}, heading), schema.description ? prose(schema.description) : null];
    if (kind === "enum") {
      var rows = (strings || []).map(function (value, i) {
        var number = i < ints.length ? String(ints[i]) : "";
        return [el("td", {}, [el("code", { text: value })]), el("td", { text: number })];
      });
      parts.push(table("fields enum", ["Name", "Value"], rows));
    } else {
      parts.push(fieldsTable(schema, "No fields."));
    }
    return el("section", { className: "type-card", id: "schema-" + name }, parts);
  }

  function typesSection() {
    var schemas = (doc.components && doc.components.schemas) || {};
    var exceptions = {};
    Object.keys(schemas).forEach(function (name) {
      if (name.indexOf("Error.") !== 0) return;
      declaredExceptions({ $ref: SCHEMAS + name }).forEach(function (exc) {
        if (exc.fields) exceptions[exc.fields] = true;
      });
    });
    var names = Object.keys(schemas).filter(function (name) {
      return name !== "Error" && name.indexOf("Error.") !== 0;
    });
    if (!names.length) return null;
    return el(
      "section",
      { className: "group types" },
      [
        el("h2", { text: "Types" }),
        el("p", {
          className: "tag-desc",
          text: "The structs, exceptions and enums of the IDL, as JSON.",
        }),
      ].concat(
        names.map(function (name) {
          return typeCard(name, schemas[name], exceptions);
        })
      )
    );
  }

  // -- the page ------------------------------------------------------------------------

  function render() {
    var info = document.getElementById("info");
    var title = (doc.info && doc.info.title) || "API";
    var version = (doc.info && doc.info.version) || "";
    document.title = title;
    document.getElementById("title").textContent = title;
    info.textContent = "";
    info.appendChild(el("span", { text: (version ? "version " + version : title) + " \u00b7 " }));
    info.appendChild(el("a", { href: url("openapi.json"), text: "openapi.json" }));
    info.appendChild(el("span", { text: " \u00b7 OpenAPI " + (doc.openapi || "?") }));
    var intro = document.getElementById("intro");
    if (doc.info && doc.info.description) {
      intro.appendChild(prose(doc.info.description));
      intro.hidden = false;
    }

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
          descriptions[tag] ? prose(descriptions[tag], "tag-desc") : null,
        ].concat(groups[tag]))
      );
    });
    var types = typesSection();
    if (types) main.appendChild(types);
    // The operation named in the URL's fragment (#TextLab_ping) starts open, else the first.
    var wanted = decodeURIComponent(window.location.hash.slice(1));
    var target = wanted && document.getElementById(wanted);
    var first = target && target.tagName === "DETAILS" ? target : main.querySelector("details.op");
    if (first) first.open = true;
    if (target) target.scrollIntoView();
  }

  function load() {
    fetch(url("openapi.json"), { headers: authorize({}) })
      .then(function (response) {
        if (response.status === 401) showCredentialBox();
        if (!response.ok) throw new Error("openapi.json answered " + response.status);
        return response.json();
      })
      .then(function (json) {
        doc = json;
        var schemes = (doc.components && doc.components.securitySchemes) || {};
        if (Object.keys(schemes).length) showCredentialBox();
        var info = document.getElementById("info");
        info.className = "";
        render();
      })
      .catch(function (err) {
        var info = document.getElementById("info");
        info.textContent = "Cannot load openapi.json: " + err;
        info.className = "error";
      });
  }

  if (credentialInput) {
    credentialInput.addEventListener("change", function () {
      sessionStorage.setItem("offloop-credential", credentialInput.value.trim());
      load();
    });
  }
  load();
})();
