// The form an input step asks a person to fill in, built from the step's JSON Schema.
//
// Pure part (node-tested in client_js/test/page_steps.test.js): `formModel` reads the schema
// into one of three shapes the page can draw, and `readValues` turns what was typed into the
// value to POST, or the reasons it cannot be one. The schema is the server's to enforce (the
// gateway validates every answer and says why it refuses one): the page only checks what it
// must to build a value at all (a number that is not one, a required field left empty), so a
// refusal carries the server's words, shown next to the field its path names.
//
// DOM part: `inputForm` draws a model; `readForm` reads a drawn form back. Both use `document`
// only when called, so this module imports in node.

/**
 * @typedef {object} Field
 * @property {string} name the property name
 * @property {string} label its title, else its name
 * @property {"string" | "number" | "integer" | "boolean" | "enum"} type
 * @property {boolean} required
 * @property {unknown[]} [options] an enum's values, in order
 * @property {string} [description]
 * @property {unknown} [default]
 */

/**
 * @typedef {{kind: "boolean", title: string | null, description: string | null}
 *   | {kind: "object", title: string | null, description: string | null, fields: Field[]}
 *   | {kind: "json", title: string | null, description: string | null}} FormModel
 */

/** @typedef {{path: string, message: string}} InputError a JSON pointer ("" the whole value) and why */

const isObject = (/** @type {unknown} */ v) => v !== null && typeof v === "object" && !Array.isArray(v);
const text = (/** @type {unknown} */ v) => (typeof v === "string" && v.trim() ? v : null);
const SCALAR = new Set(["string", "number", "boolean"]);

/**
 * One property of an object schema as a field, or null when no simple input fits it (an
 * object, an array, a union): then the whole answer is typed as JSON.
 * @param {string} name
 * @param {unknown} prop
 * @param {boolean} required
 * @returns {Field | null}
 */
function fieldOf(name, prop, required) {
  if (!isObject(prop)) return null;
  const p = /** @type {Record<string, any>} */ (prop);
  const base = { name, label: text(p.title) ?? name, required };
  const extra = {
    ...(text(p.description) ? { description: p.description } : {}),
    ...("default" in p ? { default: p.default } : {}),
  };
  if (Array.isArray(p.enum)) {
    if (p.enum.length === 0 || !p.enum.every((v) => v === null || SCALAR.has(typeof v))) return null;
    return { ...base, type: "enum", options: [...p.enum], ...extra };
  }
  if (p.type === "string" || p.type === "number" || p.type === "integer" || p.type === "boolean") {
    return { ...base, type: p.type, ...extra };
  }
  return null;
}

/**
 * What form a step's schema asks for: Approve / Reject for a boolean, labelled inputs for an
 * object of strings, numbers, booleans and enums, else a JSON text area.
 * @param {unknown} schema
 * @returns {FormModel}
 */
export function formModel(schema) {
  const s = isObject(schema) ? /** @type {Record<string, any>} */ (schema) : {};
  const head = { title: text(s.title), description: text(s.description) };
  if (s.type === "boolean" && !Array.isArray(s.enum)) return { kind: "boolean", ...head };
  if (s.type === "object" && isObject(s.properties)) {
    const required = new Set(Array.isArray(s.required) ? s.required : []);
    const fields = Object.entries(s.properties).map(([name, prop]) => fieldOf(name, prop, required.has(name)));
    if (fields.length > 0 && fields.every(Boolean)) {
      // The required fields first, each group in the schema's order: a schema stored as jsonb
      // comes back with its keys reordered (shortest first), so that order is not the author's.
      const list = /** @type {Field[]} */ (fields);
      return { kind: "object", ...head, fields: [...list.filter((f) => f.required), ...list.filter((f) => !f.required)] };
    }
  }
  return { kind: "json", ...head };
}

/**
 * What an object form's inputs hold, by field name: text for strings and numbers, a boolean for
 * a checkbox, the chosen option's index ("" for none) for an enum.
 * @typedef {Record<string, string | boolean>} RawValues
 */

/**
 * The raw values a fresh form starts from: each field's default, if the schema gives one.
 * @param {FormModel} model
 * @returns {RawValues | string}
 */
export function initialValues(model) {
  if (model.kind === "json") return "";
  /** @type {RawValues} */
  const raw = {};
  if (model.kind !== "object") return raw;
  for (const f of model.fields) {
    const d = f.default;
    if (f.type === "boolean") raw[f.name] = d === true;
    else if (f.type === "enum") raw[f.name] = f.options?.some((o) => o === d) ? String(f.options.findIndex((o) => o === d)) : "";
    else raw[f.name] = d === undefined || d === null ? "" : String(d);
  }
  return raw;
}

/**
 * The answer to POST from what was typed: `{ok: true, value}`, or `{ok: false, errors}` with a
 * path per field that cannot become a value.
 * @param {FormModel} model
 * @param {RawValues | string} raw an object form's values, the JSON text, or for a boolean form
 *   the button pressed ("true" / "false")
 * @returns {{ok: true, value: unknown} | {ok: false, errors: InputError[]}}
 */
export function readValues(model, raw) {
  if (model.kind === "boolean") {
    if (raw === "true" || raw === "false") return { ok: true, value: raw === "true" };
    return { ok: false, errors: [{ path: "", message: "Approve or reject." }] };
  }
  if (model.kind === "json") {
    const t = typeof raw === "string" ? raw.trim() : "";
    if (!t) return { ok: false, errors: [{ path: "", message: "Type the answer as JSON." }] };
    try {
      return { ok: true, value: JSON.parse(t) };
    } catch (err) {
      return { ok: false, errors: [{ path: "", message: `Not valid JSON: ${/** @type {Error} */ (err).message}` }] };
    }
  }
  const values = typeof raw === "object" ? raw : {};
  /** @type {Record<string, unknown>} */
  const value = {};
  /** @type {InputError[]} */
  const errors = [];
  for (const f of model.fields) {
    const path = `/${f.name.replaceAll("~", "~0").replaceAll("/", "~1")}`; // a JSON pointer, as the server's
    const got = values[f.name];
    if (f.type === "boolean") {
      value[f.name] = got === true;
      continue;
    }
    const t = typeof got === "string" ? got.trim() : "";
    if (t === "") {
      // left empty: absent, which a required field may not be
      if (f.required) errors.push({ path, message: "Required." });
      continue;
    }
    if (f.type === "enum") {
      const i = Number(t);
      if (Number.isInteger(i) && f.options && i >= 0 && i < f.options.length) value[f.name] = f.options[i];
      else errors.push({ path, message: "Pick one of the options." });
    } else if (f.type === "string") {
      value[f.name] = got;
    } else {
      const n = Number(t);
      if (!Number.isFinite(n)) errors.push({ path, message: "Not a number." });
      else if (f.type === "integer" && !Number.isInteger(n)) errors.push({ path, message: "Not a whole number." });
      else value[f.name] = n;
    }
  }
  return errors.length ? { ok: false, errors } : { ok: true, value };
}

/**
 * The server's refusal of an answer (the client's InputRejectedError, for a 400
 * `invalid_input`) as errors, each with a path and a message.
 * @param {any} err
 * @returns {InputError[]}
 */
export function refusalErrors(err) {
  const list = Array.isArray(err?.errors) ? err.errors : [];
  const errors = list
    .filter((/** @type {any} */ e) => e && typeof e.message === "string")
    .map((/** @type {any} */ e) => ({ path: typeof e.path === "string" ? e.path : "", message: e.message }));
  if (errors.length === 0) errors.push({ path: "", message: err?.message || "The answer was refused." });
  return errors;
}

/** A short label for an enum option: strings as they are, others as JSON. */
export function optionLabel(/** @type {unknown} */ v) {
  return typeof v === "string" ? v : JSON.stringify(v);
}

// ---- DOM ----------------------------------------------------------------------------------

const make = (/** @type {string} */ tag, props = {}) => Object.assign(document.createElement(tag), props);

/**
 * The answer's form, for step `slug`. `answer` is the page's record of it (state.js): what was
 * typed so far (`draft`), the errors to show, whether a POST is under way.
 * @param {FormModel} model
 * @param {{slug: string, answer: {busy: boolean, errors: InputError[], draft: RawValues | string | null}}} ctx
 */
export function inputForm(model, { slug, answer }) {
  const form = make("form", { className: "input-form", noValidate: true });
  form.dataset.inputForm = slug;
  form.dataset.kind = model.kind;
  form.dataset.testid = "input-form";
  const id = (/** @type {string} */ part) => `answer-${slug}-${part}`;
  const byPath = new Map();
  for (const e of answer.errors) byPath.set(e.path, [...(byPath.get(e.path) ?? []), e.message]);
  const described = [];
  if (model.title) {
    form.append(make("p", { className: "input-question", id: id("question"), textContent: model.title }));
    described.push(id("question"));
  }
  if (model.description) {
    form.append(make("p", { className: "muted small", id: id("about"), textContent: model.description }));
    described.push(id("about"));
  }
  const draft = answer.draft ?? initialValues(model);
  const fieldErrors = (/** @type {string} */ path, /** @type {HTMLElement} */ control) => {
    const messages = byPath.get(path);
    if (!messages) return null;
    byPath.delete(path);
    control.setAttribute("aria-invalid", "true");
    const p = make("p", { className: "field-error", id: id(`error${path.replaceAll("/", "-")}`), textContent: messages.join(" ") });
    control.setAttribute("aria-describedby", p.id);
    return p;
  };

  const actions = make("div", { className: "actions" });
  if (model.kind === "boolean") {
    for (const [value, name, cls] of [["true", "Approve", "button primary"], ["false", "Reject", "button"]]) {
      const b = make("button", { type: "submit", className: cls, value, textContent: name, disabled: answer.busy });
      b.dataset.testid = `input-${name.toLowerCase()}`;
      if (described.length) b.setAttribute("aria-describedby", described.join(" "));
      actions.append(b);
    }
  } else if (model.kind === "object") {
    const values = typeof draft === "object" ? draft : {};
    model.fields.forEach((f, i) => {
      const box = make("div", { className: `field input-field input-${f.type}` });
      const control = fieldControl(f, id(`f${i}`), values[f.name]);
      const label = make("label", { htmlFor: control.id });
      label.append(f.label);
      if (f.required) {
        const mark = make("span", { className: "required", textContent: " *", title: "required" });
        mark.setAttribute("aria-hidden", "true");
        label.append(mark, make("span", { className: "sr-only", textContent: " (required)" }));
        control.required = true;
      }
      if (f.type === "boolean") box.append(control, label);
      else box.append(label, control);
      if (f.description) box.append(make("p", { className: "muted small", textContent: f.description }));
      const err = fieldErrors(`/${f.name.replaceAll("~", "~0").replaceAll("/", "~1")}`, control);
      if (err) box.append(err);
      form.append(box);
    });
    actions.append(submitButton(answer.busy));
  } else {
    const area = make("textarea", {
      className: "input-json", id: id("json"), rows: 5, spellcheck: false, value: typeof draft === "string" ? draft : "",
    });
    area.dataset.testid = "input-json";
    const label = make("label", { htmlFor: area.id, textContent: "Answer" });
    label.append(make("span", { className: "label-note", textContent: "JSON" }));
    form.append(label, area);
    const err = fieldErrors("", area);
    if (err) form.append(err);
    actions.append(submitButton(answer.busy));
  }
  form.append(actions);
  // errors the fields above do not name (the whole value's, a nested path's)
  const rest = [...byPath].map(([path, messages]) => (path ? `${path}: ` : "") + messages.join(" "));
  if (rest.length) {
    const list = make("ul", { className: "form-error input-errors" });
    list.dataset.testid = "input-errors";
    list.setAttribute("role", "alert");
    list.append(...rest.map((t) => make("li", { textContent: t })));
    form.append(list);
  }
  if (answer.busy) form.setAttribute("aria-busy", "true");
  return form;
}

function submitButton(/** @type {boolean} */ busy) {
  const b = make("button", { type: "submit", className: "button primary", textContent: "Submit", disabled: busy });
  b.dataset.testid = "input-submit";
  return b;
}

/**
 * @param {Field} f
 * @param {string} id
 * @param {string | boolean | undefined} value
 */
function fieldControl(f, id, value) {
  /** @type {HTMLInputElement | HTMLSelectElement} */
  let control;
  if (f.type === "boolean") {
    control = make("input", { type: "checkbox", checked: value === true });
  } else if (f.type === "enum") {
    control = make("select");
    // a placeholder, so "none chosen" is possible (and caught) rather than the first option silently
    control.append(new Option(f.required ? "Choose…" : "—", ""));
    (f.options ?? []).forEach((o, i) => control.append(new Option(optionLabel(o), String(i))));
    control.value = typeof value === "string" ? value : "";
  } else {
    control = make("input", {
      type: "text",
      inputMode: f.type === "string" ? "text" : f.type === "integer" ? "numeric" : "decimal",
      value: typeof value === "string" ? value : "",
    });
  }
  control.id = id;
  control.name = f.name;
  control.dataset.field = f.name;
  return control;
}

/**
 * What a drawn form holds (see RawValues), or for a boolean form the button that submitted it.
 * @param {HTMLFormElement} form
 * @param {HTMLElement | null} [submitter]
 * @returns {RawValues | string}
 */
export function readForm(form, submitter = null) {
  if (form.dataset.kind === "boolean") return /** @type {HTMLButtonElement | null} */ (submitter)?.value ?? "";
  if (form.dataset.kind === "json") return /** @type {HTMLTextAreaElement} */ (form.querySelector("textarea")).value;
  /** @type {RawValues} */
  const raw = {};
  for (const el of form.querySelectorAll("[data-field]")) {
    const c = /** @type {HTMLInputElement} */ (el);
    raw[c.dataset.field ?? c.name] = c.type === "checkbox" ? c.checked : c.value;
  }
  return raw;
}
