/*
 * airflow-hitl Approvals pages: inbox with decision modal and bulk actions, history, delegations,
 * standing approvals, analytics, task view.
 *
 * Plain browser JavaScript, no build step and no third-party code (the machines are offline); the
 * analytics page's charts are drawn by Chart.js, kept in the package (static/vendor/) and loaded
 * by that page alone.
 * Every value that comes from the API is written with textContent or as an attribute value
 * set through the DOM, never parsed as HTML: titles, descriptions, context and comments are
 * user-supplied. Reads use the REST API; decisions use the pages' own endpoints under
 * /hitl/ui/api, which require X-Requested-With (a cross-site form can never send it).
 */
"use strict";

(function () {
  const body = document.body;
  const API = body.dataset.apiBase;
  const APP = body.dataset.appBase;
  const AIRFLOW = body.dataset.airflowBase || "";
  // Decisions go through the pages' own endpoints: recorded as source "ui", CSRF-guarded.
  const DECIDE = APP + "/ui/api";
  const POLL_MS = 5000;
  // The vocabulary (states, events, channels) comes from the server: airflow_hitl/vocabulary.py.
  const VOCABULARY = JSON.parse(document.body.dataset.vocabulary || "{}");
  const WAITING = new Set(VOCABULARY.waiting_states || []);

  /* ------------------------------------------------------------------ DOM helpers */

  const $ = (id) => document.getElementById(id);

  /** Build an element; string children become text nodes, so data never becomes markup. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(id, value) {
    const node = $(id);
    if (node) node.textContent = value === null || value === undefined ? "" : String(value);
  }

  function show(node, visible) {
    if (node) node.hidden = !visible;
  }

  let toastTimer = null;
  function toast(message, kind) {
    const node = $("toast");
    node.textContent = message;
    node.className = "toast " + (kind || "");
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (node.hidden = true), 6000);
  }

  /* ------------------------------------------------------------------ API */

  class ApiError extends Error {
    constructor(status, detail, raw) {
      super(detail);
      this.status = status;
      this.detail = raw; // the answer's own detail: a list of {loc, msg} for invalid form inputs
    }
  }

  function detailText(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map((d) => (d && d.msg) || JSON.stringify(d)).join("; ");
    return JSON.stringify(detail);
  }

  function loginUrl() {
    const here = window.location.pathname + window.location.search;
    return AIRFLOW + "/api/v2/auth/login?" + new URLSearchParams({ next: here }).toString();
  }

  /**
   * Numbers a page's loads so only the newest one shows its answer: a filter changed twice in
   * quick succession sends two requests, and the first one's answer, arriving last, must not
   * replace the second's.
   */
  function newestCall() {
    let latest = 0;
    return { next: () => ++latest, is: (call) => call === latest };
  }

  /** Call the REST API with the UI cookie; JSON in and out. */
  async function api(path, options) {
    const opts = options || {};
    const headers = { Accept: "application/json", "X-Requested-With": "XMLHttpRequest" };
    let payload;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(opts.json);
    }
    const response = await fetch((opts.base || API) + path, {
      method: opts.method || "GET",
      headers,
      body: payload,
      credentials: "same-origin",
      cache: "no-store",
    });
    if (response.status === 401) {
      // The cookie expired: Airflow's login brings the user back to this page.
      window.location.assign(loginUrl());
      throw new ApiError(401, "not signed in");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      throw new ApiError(response.status, data && data.detail ? detailText(data.detail) : response.statusText, data && data.detail);
    }
    return data;
  }

  /**
   * A page could not load its data: say so in its error line and return true. A 401 returns
   * false and shows nothing: api() is already taking the user to Airflow's login.
   */
  function loadFailed(errorId, what, err) {
    if (err.status === 401) return false;
    setText(errorId, "Could not load " + what + ": " + err.message);
    show($(errorId), true);
    return true;
  }

  /** A request opened over the REST API is no task's gate: say so wherever it is shown. */
  function originBadge(item) {
    return item.origin === "api" ? el("span", { className: "badge origin-api", text: "opened over the API", title: "Not a task's gate: deciding it resumes no task." }) : null;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value === undefined || value === null || value === "") continue;
      if (Array.isArray(value)) value.forEach((v) => search.append(key, v));
      else search.append(key, String(value));
    }
    const text = search.toString();
    return text ? "?" + text : "";
  }

  /* ------------------------------------------------------------------ time */

  function parseTime(value) {
    return value ? new Date(value) : null;
  }

  function duration(ms) {
    const s = Math.max(0, Math.round(Math.abs(ms) / 1000));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + (s % 60) + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h " + (m % 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function timeLeft(expiresAt) {
    const expires = parseTime(expiresAt);
    if (!expires) return "no expiry";
    const ms = expires.getTime() - Date.now();
    return ms > 0 ? "expires in " + duration(ms) : "expired " + duration(ms) + " ago";
  }

  function ago(value) {
    const at = parseTime(value);
    if (!at) return "";
    return duration(Date.now() - at.getTime()) + " ago";
  }

  /* ------------------------------------------------------------------ Airflow's look: theme, font, timezone */

  // What the Airflow UI shows (colour mode, palette, font, timezone) is read by
  // airflow-theme.js (window.AirflowTheme, loaded first): the one file that knows Airflow's
  // localStorage keys and CSS variables. Here it is applied, live.
  const onLookChange = [];

  /** The IANA zone Airflow shows times in: the user's choice in its UI, else the browser's. */
  function airflowTimezone() {
    return window.AirflowTheme.timezone();
  }

  function applyLook() {
    const theme = window.AirflowTheme;
    const mode = theme.colorMode();
    const root = document.documentElement;
    root.dataset.theme = mode;
    root.style.colorScheme = mode; // native controls (checkboxes, selects, date pickers) follow too
    for (const name of theme.colorVariables) root.style.removeProperty(name);
    for (const [name, value] of Object.entries(theme.palette())) root.style.setProperty(name, value);
    onLookChange.forEach((fn) => fn());
  }

  function watchLook() {
    applyLook();
    window.AirflowTheme.watch(applyLook);
  }

  const formatters = new Map();
  function formatterFor(zone) {
    if (!formatters.has(zone)) {
      formatters.set(
        zone,
        new Intl.DateTimeFormat("en-US", {
          timeZone: zone,
          year: "numeric",
          month: "2-digit",
          day: "2-digit",
          hour: "2-digit",
          minute: "2-digit",
          second: "2-digit",
          hourCycle: "h23",
        })
      );
    }
    return formatters.get(zone);
  }

  /** A time as Airflow writes it: "2026-11-30 06:43:52" in Airflow's selected timezone. */
  function stamp(value) {
    const at = parseTime(value);
    if (!at || Number.isNaN(at.getTime())) return "";
    const parts = Object.fromEntries(formatterFor(airflowTimezone()).formatToParts(at).map((p) => [p.type, p.value]));
    return parts.year + "-" + parts.month + "-" + parts.day + " " + parts.hour + ":" + parts.minute + ":" + parts.second;
  }

  /** How far ``zone``'s wall clock is ahead of UTC at the instant ``ms`` (milliseconds). */
  function zoneOffset(zone, ms) {
    const at = Math.floor(ms / 1000) * 1000;
    const p = Object.fromEntries(formatterFor(zone).formatToParts(new Date(at)).map((x) => [x.type, Number(x.value)]));
    return Date.UTC(p.year, p.month - 1, p.day, p.hour % 24, p.minute, p.second) - at;
  }

  /**
   * The instant (ISO, UTC) of a wall-clock time in Airflow's selected timezone, as its pages
   * read the dates typed into filters (not in the browser's zone). The offset is asked twice:
   * once for the guess, once for the result, which settles a day that changes its offset.
   */
  function zonedInstant(year, month, day, hour, minute, second, ms) {
    const zone = airflowTimezone();
    const wall = Date.UTC(year, month - 1, day, hour, minute, second, ms);
    let at = wall - zoneOffset(zone, wall);
    at = wall - zoneOffset(zone, at);
    return new Date(at).toISOString();
  }

  /**
   * The first (or, ``endOfDay``, the last) instant of a filter's day ("2026-03-02"), as an ISO
   * instant: a day of the filters starts and ends in Airflow's timezone, like every time the pages show.
   */
  function dayBound(value, endOfDay) {
    if (!value) return null;
    const [y, m, d] = value.split("-").map(Number);
    return endOfDay ? zonedInstant(y, m, d, 23, 59, 59, 999) : zonedInstant(y, m, d, 0, 0, 0, 0);
  }

  /** Risk colour: metadata.risk when the DAG author gave one, else from the time left. */
  function risk(item) {
    const given = String((item.metadata && item.metadata.risk) || "").toLowerCase();
    if (["critical", "high", "medium", "low"].includes(given)) return given;
    const expires = parseTime(item.expires_at);
    if (!expires) return "none";
    const left = expires.getTime() - Date.now();
    if (left < 3600 * 1000) return "high";
    if (left < 4 * 3600 * 1000) return "medium";
    return "low";
  }

  /* ------------------------------------------------------------------ links into Airflow */

  function runUrl(item) {
    return AIRFLOW + "/dags/" + encodeURIComponent(item.dag_id) + "/runs/" + encodeURIComponent(item.run_id || "");
  }

  function dagUrl(item) {
    return AIRFLOW + "/dags/" + encodeURIComponent(item.dag_id);
  }

  function historyUrl(dagId) {
    return APP + "/ui/history" + query({ dag_id: dagId });
  }

  /**
   * Open an Airflow page. Inside the Airflow UI we are an iframe sandboxed without
   * top-navigation rights, so instead of navigating the top window we push the URL into its
   * history and let its router (which listens to popstate) render the page.
   */
  function openAirflow(event) {
    const href = event.currentTarget.getAttribute("href");
    if (window.top === window || !href) return;
    undimAirflow(); // the UI shows another page: none of ours stays open over it
    try {
      const top = window.top;
      const idx = ((top.history.state && top.history.state.idx) || 0) + 1;
      top.history.pushState({ usr: null, key: Math.random().toString(36).slice(2, 10), idx }, "", href);
      top.dispatchEvent(new PopStateEvent("popstate", { state: top.history.state }));
      event.preventDefault();
    } catch (err) {
      // Not the same origin after all: let the link open inside the frame.
    }
  }

  function airflowLink(href, text, props) {
    return el("a", Object.assign({ href, onclick: openAirflow }, props || {}), text);
  }

  /** The line naming a request's DAG, run (both linked into Airflow) and task: on the cards and in the history. */
  function whereLine(item) {
    return el(
      "div",
      { className: "meta" },
      airflowLink(dagUrl(item), item.dag_id, { className: "dag" }),
      " · ",
      airflowLink(runUrl(item), item.run_id || "(no run)", { className: "run" }),
      item.task_id ? " · " + item.task_id : "",
      originBadge(item)
    );
  }

  function setAirflowLink(node, href, text) {
    node.setAttribute("href", href);
    if (text !== undefined) node.textContent = text;
    if (!node.dataset.wired) {
      node.addEventListener("click", openAirflow);
      node.dataset.wired = "1";
    }
  }

  /* ------------------------------------------------------------------ the dialogs' backdrop over Airflow */

  /**
   * While a dialog is open, dim the Airflow UI around this iframe too (airflow-theme.js, the
   * one script that touches Airflow's page; nothing happens when the UI is not reachable).
   */
  function dimAirflow(onClick) {
    if (window.AirflowBackdrop) window.AirflowBackdrop.show(onClick);
  }

  function undimAirflow() {
    if (window.AirflowBackdrop) window.AirflowBackdrop.hide();
  }

  /* ------------------------------------------------------------------ decision rules shown */

  /** Whether the Reject button is usable: like approving, except your own run (you may reject it). */
  function canReject(item) {
    if (!WAITING.has(item.state)) return false;
    if (item.can_approve) return true;
    return /triggered this run/.test(item.can_approve_reason || "");
  }

  function quorumText(item) {
    const counted = (item.approvers || []).length;
    const needed = item.approvals_needed || item.required_approvals || 1;
    const still = Math.max(0, needed - counted);
    return counted + " of " + needed + " approvals" + (WAITING.has(item.state) ? ", " + still + " still needed" : "");
  }

  /** Who may decide a request now: its named approvers and roles (each escalation widens them). */
  function decidersText(item) {
    const names = item.allowed_approvers || [];
    const roles = item.allowed_roles || [];
    const parts = [];
    if (names.length) parts.push(names.join(", "));
    if (roles.length) parts.push((roles.length === 1 ? "role " : "roles ") + roles.join(", "));
    return parts.length ? parts.join("; ") : "anyone with edit access to the DAG";
  }

  /** "escalation level 1 of 2 added carol, role Admin": what the current level widened; "" before any. */
  function escalationText(item) {
    const level = item.escalation_level || 0;
    if (!level) return "";
    const levels = item.escalation_targets || [];
    const target = levels[level - 1] || {};
    const added = [...(target.approvers || []), ...(target.roles || []).map((role) => "role " + role)];
    return "escalation level " + level + " of " + levels.length + (added.length ? " added " + added.join(", ") : "");
  }

  /** Who decides now, with what the escalation added: the detail's "Who decides" and the cards of escalated requests. */
  function decidersLine(item) {
    const escalation = escalationText(item);
    return decidersText(item) + (escalation ? " (" + escalation + ")" : "");
  }

  /** True when several approvals are needed and each carries form values: only one approval's are used. */
  function quorumOfForms(item) {
    return (item.approvals_needed || item.required_approvals || 1) > 1 && Object.keys(item.inputs || {}).length > 0;
  }

  /**
   * The vote whose form values the gate used: the one that completed the quorum (the last vote
   * of decided_by, as the server's deciding_vote), only for an approval decided by a person.
   */
  function usedVote(item) {
    if (item.state !== "approved" || !item.decided_by || !Object.keys(item.inputs || {}).length) return null;
    const mine = (item.votes || []).filter((v) => v.user === item.decided_by && v.vote === "approve");
    return mine.length ? mine[mine.length - 1] : null;
  }

  /** What the toast says after the page's vote: the outcome, or how far the quorum is. */
  function decidedText(action, result) {
    if (action === "reject") return "Rejected: " + result.title;
    if (WAITING.has(result.state)) {
      const counted = (result.approvers || []).length;
      const needed = result.approvals_needed || result.required_approvals || 1;
      const still = Math.max(0, needed - counted);
      return "Your approval is recorded: " + counted + " of " + needed + "; waiting for " + still + " more";
    }
    return "Approved: " + result.title + (result.state === "approved" ? "" : " (now " + result.state + ")");
  }

  /* ------------------------------------------------------------------ detail (modal and task view) */

  function isScalar(value) {
    return value === null || ["string", "number", "boolean"].includes(typeof value);
  }

  function prettyKey(key) {
    const text = String(key).replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  // Ratios that people read as percentages (accuracy 0.962 -> 96.2%); a loss stays a number.
  const PERCENT_KEYS = /accuracy|precision|recall|f1|auc|score|rate|ratio|percent|pct/i;

  function prettyValue(value, key) {
    if (typeof value === "number" && value >= 0 && value <= 1 && !Number.isInteger(value) && PERCENT_KEYS.test(String(key))) {
      return String(value) + " (" + (value * 100).toFixed(1) + "%)";
    }
    return isScalar(value) ? String(value) : JSON.stringify(value);
  }

  /** Context as readable lists: scalars under "Details", each flat object (metrics) as its own list. */
  function renderContext(container, context) {
    container.replaceChildren();
    const entries = Object.entries(context || {});
    const scalars = entries.filter(([, v]) => isScalar(v));
    const groups = entries.filter(([, v]) => v && typeof v === "object" && !Array.isArray(v));
    const others = entries.filter(([, v]) => Array.isArray(v));
    const list = (pairs) =>
      el("ul", { className: "kv" }, pairs.map(([k, v]) => el("li", {}, el("span", { className: "k", text: prettyKey(k) + ": " }), el("span", { className: "v", text: prettyValue(v, k) }))));
    if (scalars.length || others.length) {
      container.append(el("h4", { text: "Details" }), list([...scalars, ...others]));
    }
    for (const [name, value] of groups) {
      container.append(el("h4", { text: prettyKey(name) }), list(Object.entries(value)));
    }
    if (!entries.length) container.append(el("p", { className: "muted", text: "No context was attached." }));
  }

  /**
   * A gate's bound values (bind=), one line each: "Approving exactly: model = 9f2c...". The
   * approval is for these exact texts, so they are shown whole (wrapped, never shortened).
   */
  function renderBound(container, bound) {
    const entries = Object.entries(bound || {});
    container.replaceChildren(
      ...entries.map(([name, value]) =>
        el("p", { className: "bound prewrap" }, el("strong", { text: "Approving exactly: " }), el("span", { className: "k", text: name + " = " }), el("code", { className: "v", text: value })),
      ),
    );
    return entries.length > 0;
  }

  /** Who cast a vote: "alice", or "bob for alice" when bob cast it through alice's delegation. */
  function castBy(vote) {
    return vote.delegate ? vote.delegate + " for " + vote.user : vote.user;
  }

  /** Who decided a request, the same way: the deciding vote's delegate is named too. */
  function decidedBy(item) {
    if (!item.decided_by) return null;
    const mine = (item.votes || []).filter((v) => v.user === item.decided_by);
    return mine.length ? castBy(mine[mine.length - 1]) : item.decided_by;
  }

  /**
   * The body's content_digest: the digest of the request as this page showed it. The server
   * records nothing (409) when the request changed since (an escalation, say).
   */
  function seenDigest(digest) {
    return digest ? { content_digest: digest } : {};
  }

  /** The server's 409 for a request that changed since the page showed it. */
  function changedSinceShown(err) {
    return err.status === 409 && /changed since you opened it/.test(err.message || "");
  }

  /** The body's on_behalf_of: the delegator the server said this user decides for, if any. */
  function onBehalfOf(item) {
    return item && item.can_approve_for ? { on_behalf_of: item.can_approve_for } : {};
  }

  /* ------------------------------------------------------------------ standing approvals' votes */

  /** The standing approval a vote was cast by (source "standing"), as its metadata records it; else null. */
  function standingOf(vote) {
    if (!vote || vote.source !== "standing") return null;
    return (vote.metadata && vote.metadata.standing) || {};
  }

  /** "2 uses left", "1 use left", "no uses left" or "no use limit" (max_uses null). */
  function usesLeftText(usesLeft, maxUses) {
    if (maxUses === null || maxUses === undefined || usesLeft === null || usesLeft === undefined) return "no use limit";
    if (usesLeft === 0) return "no uses left";
    return usesLeft + (usesLeft === 1 ? " use left" : " uses left");
  }

  /**
   * A vote a standing approval cast, said so: "approved ahead by alice, standing approval, 2 uses
   * left" (the uses left once this vote spent its own). The voter's name is its own element.
   */
  function standingLine(vote, props) {
    const standing = standingOf(vote);
    return el(
      "span",
      Object.assign({ className: "standing-note", dataset: { standingId: standing.id || "" } }, props || {}),
      "approved ahead by ",
      el("strong", { className: "voter", text: castBy(vote) }),
      ", standing approval, " + usesLeftText(standing.uses_left, standing.max_uses)
    );
  }

  /** The votes of ``item`` its owners' standing approvals cast. */
  function standingVotes(item) {
    return (item.votes || []).filter((v) => standingOf(v) !== null);
  }

  /** One vote in a list; ``used`` marks the vote whose form values the gate used. */
  function voteItem(vote, used) {
    const what = vote.vote === "approve" ? "approved" : vote.vote === "reject" ? "rejected" : vote.vote;
    const ahead = standingOf(vote) !== null;
    return el(
      "li",
      { className: "vote " + what + (ahead ? " standing" : "") },
      ahead ? el("span", { className: "badge " + what, text: what }) : el("strong", { className: "voter", text: castBy(vote) }),
      " ",
      ahead ? standingLine(vote) : el("span", { className: "badge " + what, text: what }),
      " ",
      el("span", { className: "muted", text: (ahead ? "" : "via " + vote.source + " · ") + ago(vote.created_at) }),
      vote.reason ? el("div", { className: "prewrap", text: "Reason: " + vote.reason }) : null,
      vote.comment ? el("div", { className: "prewrap", text: "“" + vote.comment + "”" }) : null,
      vote.inputs && Object.keys(vote.inputs).length
        ? el(
            "div",
            { className: "vote-inputs" },
            "Inputs: ",
            ...Object.entries(vote.inputs).map(([name, value], i) =>
              el("span", { className: "input-value", dataset: { name } }, (i ? ", " : "") + name + " = " + JSON.stringify(value))
            ),
            used ? el("span", { className: "badge approved used", text: "used", title: "The gate used these values: this approval completed the quorum." }) : null
          )
        : null
    );
  }

  /* ------------------------------------------------------------------ form inputs */

  function schemaType(schema) {
    const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
    if (Array.isArray(schema.enum)) return "enum";
    return type || "any";
  }

  /** One labelled control per form input of the request, built from its JSON Schema. */
  function renderInputs(container, inputs) {
    container.replaceChildren();
    for (const [name, spec] of Object.entries(inputs || {})) {
      const schema = spec.schema || {};
      const type = schemaType(schema);
      const id = "m-input-" + name;
      let control;
      if (type === "enum") {
        control = el("select", { id });
        if (!spec.required) control.append(el("option", { value: "", text: "(default)" }));
        schema.enum.forEach((choice, i) => control.append(el("option", { value: String(i), text: String(choice) })));
        const at = schema.enum.findIndex((c) => JSON.stringify(c) === JSON.stringify(spec.value));
        control.value = spec.required ? String(Math.max(at, 0)) : at >= 0 ? String(at) : "";
      } else if (type === "boolean") {
        control = el("input", { id, type: "checkbox" });
        control.checked = spec.value === true;
      } else if (type === "integer" || type === "number") {
        control = el("input", { id, type: "number", step: type === "integer" ? "1" : "any" });
        if (schema.minimum !== undefined) control.min = String(schema.minimum);
        if (schema.maximum !== undefined) control.max = String(schema.maximum);
        if (spec.value !== null && spec.value !== undefined) control.value = String(spec.value);
      } else if (type === "string") {
        control = el("input", { id, type: "text" });
        if (spec.value !== null && spec.value !== undefined) control.value = spec.value;
      } else {
        control = el("textarea", { id, rows: 2, placeholder: "JSON" });
        if (spec.value !== null && spec.value !== undefined) control.value = JSON.stringify(spec.value);
      }
      control.dataset.name = name;
      control.dataset.kind = type;
      control.required = Boolean(spec.required);
      const hint = [spec.description, schema.minimum !== undefined ? "min " + schema.minimum : null, schema.maximum !== undefined ? "max " + schema.maximum : null]
        .filter(Boolean)
        .join(" · ");
      container.append(
        el(
          "div",
          { className: "input-field", dataset: { name } },
          el("label", { for: id }, name, spec.required ? el("span", { className: "required", text: " *", title: "required" }) : null),
          control,
          hint ? el("span", { className: "muted hint", text: hint }) : null,
          el("p", { className: "error field-error", id: "m-input-error-" + name, role: "alert", hidden: true })
        )
      );
    }
  }

  function inputError(name, message) {
    const node = document.getElementById("m-input-error-" + name);
    if (!node) return false;
    node.textContent = message || "";
    node.hidden = !message;
    const control = document.getElementById("m-input-" + name);
    if (control) control.setAttribute("aria-invalid", message ? "true" : "false");
    return true;
  }

  /** The values filled in, by input name; an empty field is left out (its default applies). */
  function collectInputs(container, inputs) {
    const values = {};
    let bad = false;
    for (const control of container.querySelectorAll("[data-name]:is(input, select, textarea)")) {
      const name = control.dataset.name;
      const spec = inputs[name] || {};
      inputError(name, null);
      if (control.dataset.kind === "boolean") values[name] = control.checked;
      else if (control.dataset.kind === "enum") {
        if (control.value !== "") values[name] = spec.schema.enum[Number(control.value)];
      } else if (control.value.trim() === "") continue;
      else if (control.dataset.kind === "integer" || control.dataset.kind === "number") values[name] = Number(control.value);
      else if (control.dataset.kind === "string") values[name] = control.value;
      else {
        try {
          values[name] = JSON.parse(control.value);
        } catch (err) {
          inputError(name, name + ": not valid JSON");
          bad = true;
        }
      }
    }
    return bad ? null : values;
  }

  /** Put ``values`` (input name -> value, as a vote carries them) into the form's controls. */
  function fillInputs(container, values) {
    for (const control of container.querySelectorAll("[data-name]:is(input, select, textarea)")) {
      const name = control.dataset.name;
      if (!Object.prototype.hasOwnProperty.call(values, name)) continue;
      const value = values[name];
      const kind = control.dataset.kind;
      if (kind === "boolean") control.checked = value === true;
      else if (kind === "enum") {
        const at = [...control.options].findIndex((o) => o.value !== "" && o.textContent === String(value));
        if (at >= 0) control.selectedIndex = at;
      } else if (kind === "integer" || kind === "number" || kind === "string") control.value = value === null ? "" : String(value);
      else control.value = JSON.stringify(value);
      inputError(name, null);
    }
  }

  /**
   * A decision view bound to the #detail markup (the inbox modal and the task page share it).
   * onDecided runs after a successful decision.
   */
  class DecisionView {
    constructor(onDecided, onChanged) {
      this.item = null;
      this.pending = null; // "approve" | "reject" while the confirmation step shows
      this.pendingDigest = null; // the digest of the request as shown when the user chose
      this.onDecided = onDecided;
      this.onChanged = onChanged; // reloads the request after the server said it changed
      $("m-approve").addEventListener("click", () => this.ask("approve"));
      $("m-reject").addEventListener("click", () => this.ask("reject"));
      $("m-confirm-cancel").addEventListener("click", () => this.cancelConfirm());
      $("m-confirm-ok").addEventListener("click", () => this.submit());
      $("m-form").addEventListener("submit", (e) => e.preventDefault());
    }

    reset() {
      $("m-comment").value = "";
      $("m-reason-input").value = "";
      this.cancelConfirm();
      this.error(null);
    }

    error(message) {
      setText("m-error", message || "");
      show($("m-error"), Boolean(message));
    }

    fill(item) {
      const changed = !this.item || this.item.id !== item.id;
      this.item = item;
      if (changed) {
        this.reset();
        renderInputs($("m-inputs-fields"), item.inputs);
      }
      show($("m-inputs"), Object.keys(item.inputs || {}).length > 0 && WAITING.has(item.state));
      setText("m-title", item.title);
      const state = $("m-state");
      state.textContent = item.state;
      state.className = "badge " + item.state;
      show($("m-origin"), item.origin === "api");
      setAirflowLink($("m-dag"), dagUrl(item), item.dag_id);
      setAirflowLink($("m-run"), runUrl(item), item.run_id || "(no run)");
      setText("m-task", item.task_id ? item.task_id + (item.map_index >= 0 ? "[" + item.map_index + "]" : "") : "");
      setText("m-requested-by", item.requested_by || "unknown");
      setText("m-requested-at", stamp(item.requested_at) + " (" + ago(item.requested_at) + ")");
      this.tick();
      setText("m-description", item.description || "No description.");
      setText("m-reason", item.reason ? "Why: " + item.reason : "");
      show($("m-reason"), Boolean(item.reason));
      show($("m-bound-block"), renderBound($("m-bound"), item.bound));
      renderContext($("m-context"), item.context);
      setText("m-json", JSON.stringify(item.context || {}, null, 2));
      setText("m-quorum", "(" + quorumText(item) + ")");
      setText("m-deciders", decidersLine(item));
      this.fillQuorumNotes(item);
      const votes = $("m-votes");
      const used = usedVote(item);
      votes.replaceChildren(...(item.votes || []).map((v) => voteItem(v, v === used)));
      if (!(item.votes || []).length) votes.append(el("li", { className: "muted", text: "No votes yet." }));
      setAirflowLink($("m-run-link"), runUrl(item));
      $("m-history-link").setAttribute("href", historyUrl(item.dag_id));
      this.applyRights();
      this.fillStanding(item);
    }

    /**
     * The standing approvals owed this request a vote that is not among its votes: one the
     * gate's rules refused ("alice's standing approval did not vote: ...") or one still to vote.
     */
    async fillStanding(item) {
      const list = $("m-standing");
      let owed = [];
      try {
        owed = (await api("/approvals/" + encodeURIComponent(item.id) + "/standing")).owed_votes || [];
      } catch (err) {
        owed = []; // secondary: the votes above are what counts
      }
      if (!this.item || this.item.id !== item.id) return;
      const open = owed.filter((o) => o.status === "skipped" || (o.status === "due" && WAITING.has(item.state)));
      list.replaceChildren(
        ...open.map((o) =>
          el(
            "li",
            { className: "vote standing-" + o.status, dataset: { standingId: o.standing_id } },
            el("strong", { className: "voter", text: o.approver }),
            o.status === "skipped"
              ? "'s standing approval did not vote: " + (o.reason || "the gate's rules refused it")
              : "'s standing approval is about to vote"
          )
        )
      );
      show(list, open.length > 0);
    }

    /**
     * With several approvals and a form, only the values of the approval that completes the
     * quorum are used: say so above the form and in the votes, and show the earlier approvals'
     * values (each can be copied into the form), so nobody's values are dropped unseen.
     */
    fillQuorumNotes(item) {
      const quorum = quorumOfForms(item);
      const waiting = WAITING.has(item.state);
      const counted = (item.approvers || []).length;
      const needed = item.approvals_needed || item.required_approvals || 1;
      const used = usedVote(item);
      let votesNote = "";
      if (quorum && used) votesNote = "The gate used the values of " + castBy(used) + "'s approval, the one that completed the quorum.";
      else if (quorum && waiting) votesNote = "The values sent with the approval that completes the quorum (approval " + needed + " of " + needed + ") are the ones used; earlier approvals' values are kept with their votes.";
      setText("m-votes-note", votesNote);
      show($("m-votes-note"), Boolean(votesNote));

      let formNote = "";
      if (quorum && waiting) {
        formNote =
          counted + 1 >= needed
            ? "Yours completes the quorum: the values below are the ones used."
            : "Yours will be approval " + (counted + 1) + " of " + needed + ": the values of the approval that completes the quorum are the ones used, not these.";
      }
      setText("m-inputs-note", formNote);
      show($("m-inputs-note"), Boolean(formNote));
      const earlier = quorum && waiting ? (item.votes || []).filter((v) => v.vote === "approve" && v.inputs && Object.keys(v.inputs).length) : [];
      $("m-earlier-inputs").replaceChildren(
        ...earlier.map((v) =>
          el(
            "li",
            { className: "earlier", dataset: { user: v.user } },
            el("strong", { text: castBy(v) + ": " }),
            Object.entries(v.inputs).map(([name, value]) => name + " = " + JSON.stringify(value)).join(", "),
            el("button", { type: "button", className: "linklike use-values", text: "Use these values", onclick: () => fillInputs($("m-inputs-fields"), v.inputs) })
          )
        )
      );
      show($("m-earlier-inputs"), earlier.length > 0);
    }

    applyRights() {
      const item = this.item;
      const waiting = WAITING.has(item.state);
      const approve = $("m-approve");
      const reject = $("m-reject");
      approve.disabled = !waiting || !item.can_approve;
      reject.disabled = !canReject(item);
      let why = "";
      if (!waiting) why = "This request is " + item.state + (item.decided_by ? " (by " + decidedBy(item) + ")" : "") + ".";
      else if (!item.can_approve) why = "You cannot approve: " + (item.can_approve_reason || "not allowed") + ".";
      approve.title = approve.disabled ? why : "";
      reject.title = reject.disabled ? why : "";
      setText("m-disabled-reason", why);
      // An outcome in its own colour (approved, rejected, over); a refusal to you as a warning.
      $("m-disabled-reason").className = "disabled-reason" + (waiting ? "" : " " + item.state);
      show($("m-disabled-reason"), Boolean(why));
      const inputs = [$("m-comment"), $("m-reason-input"), ...$("m-inputs-fields").querySelectorAll("[data-name]")];
      inputs.forEach((node) => (node.disabled = approve.disabled && reject.disabled));
      if (approve.disabled && reject.disabled) this.cancelConfirm();
    }

    tick() {
      if (this.item) setText("m-time-left", WAITING.has(this.item.state) ? timeLeft(this.item.expires_at) : this.item.state);
    }

    ask(action) {
      this.error(null);
      const reason = $("m-reason-input").value.trim();
      if (action === "reject" && !reason) {
        // The API refuses it too (422); say so here before anything is sent.
        this.error("A reason is required to reject.");
        $("m-reason-input").focus();
        return;
      }
      this.pending = action;
      const item = this.item;
      // What the user is confirming is the request as shown now, not after a refresh.
      this.pendingDigest = item.content_digest || null;
      const counted = (item.approvers || []).length;
      const needed = item.approvals_needed || 1;
      setText(
        "m-confirm-text",
        action === "approve"
          ? "Approve “" + item.title + "”" + (item.can_approve_for ? " for " + item.can_approve_for : "") + "? Yours will be approval " + (counted + 1) + " of " + needed + " needed."
          : "Reject “" + item.title + "”? This rejects the request at once."
      );
      const ok = $("m-confirm-ok");
      ok.className = "btn " + action;
      ok.textContent = action === "approve" ? "Confirm approval" : "Confirm rejection";
      show($("m-actions"), false);
      show($("m-confirm"), true);
      ok.focus();
    }

    cancelConfirm() {
      this.pending = null;
      show($("m-confirm"), false);
      show($("m-actions"), true);
    }

    async submit() {
      const action = this.pending;
      if (!action || !this.item) return;
      const ok = $("m-confirm-ok");
      ok.disabled = true;
      const comment = $("m-comment").value.trim() || null;
      const json = Object.assign(
        action === "approve" ? { comment } : { reason: $("m-reason-input").value.trim(), comment },
        onBehalfOf(this.item),
        seenDigest(this.pendingDigest)
      );
      if (action === "approve" && Object.keys(this.item.inputs || {}).length) {
        // Inputs go with an approval; a rejection needs none.
        const values = collectInputs($("m-inputs-fields"), this.item.inputs);
        if (values === null) {
          this.cancelConfirm();
          ok.disabled = false;
          this.error("Some inputs are not valid.");
          return;
        }
        json.inputs = values;
      }
      try {
        const result = await api("/approvals/" + encodeURIComponent(this.item.id) + "/" + action, { method: "POST", json, base: DECIDE });
        toast(decidedText(action, result), "ok");
        this.cancelConfirm();
        this.onDecided(result);
      } catch (err) {
        this.cancelConfirm();
        if (changedSinceShown(err)) {
          // Nothing was recorded: show the request as it is now, to be reviewed and decided again.
          toast(err.message, "bad");
          this.error("Not recorded: " + err.message);
          this.onChanged();
          return;
        }
        // The server's 422 for form inputs names each field: show each message by its input.
        const fields = Array.isArray(err.detail) ? err.detail.filter((d) => d && d.loc && d.loc[1] === "inputs") : [];
        const placed = fields.filter((d) => inputError(String(d.loc[d.loc.length - 1]), d.msg));
        if (placed.length && placed.length === fields.length && fields.length === err.detail.length) {
          this.error("Some inputs are not valid.");
        } else {
          this.error(err.status ? err.status + ": " + err.message : String(err));
        }
      } finally {
        ok.disabled = false;
      }
    }
  }

  /* ------------------------------------------------------------------ inbox */

  function inboxPage() {
    const state = { items: [], selected: new Set(), openId: null, loaded: false, rejecting: null, rejectDraft: "" };
    const cards = $("cards");
    const modal = $("modal");
    const view = new DecisionView(
      () => {
        closeModal();
        refresh();
      },
      () => refresh()
    );

    function filtered() {
      const dag = $("filter-dag").value;
      const st = $("filter-state").value;
      const age = Number($("filter-age").value || 0);
      const mine = $("filter-mine").checked;
      const now = Date.now();
      let items = state.items.filter((item) => {
        if (dag && item.dag_id !== dag) return false;
        if (st && item.state !== st) return false;
        if (mine && !item.can_approve) return false;
        if (age) {
          const seconds = (now - new Date(item.requested_at).getTime()) / 1000;
          if (age > 0 && seconds > age) return false;
          if (age < 0 && seconds <= -age) return false;
        }
        return true;
      });
      const sort = $("sort").value;
      const t = (v, missing) => (v ? new Date(v).getTime() : missing);
      items = items.slice().sort((a, b) => {
        if (sort === "requested_desc") return t(b.requested_at, 0) - t(a.requested_at, 0);
        if (sort === "requested_asc") return t(a.requested_at, 0) - t(b.requested_at, 0);
        return t(a.expires_at, Infinity) - t(b.expires_at, Infinity) || t(a.requested_at, 0) - t(b.requested_at, 0);
      });
      return items;
    }

    function dagOptions() {
      const select = $("filter-dag");
      const current = select.value;
      const dags = [...new Set(state.items.map((i) => i.dag_id))].sort();
      if (current && !dags.includes(current)) dags.push(current);
      select.replaceChildren(el("option", { value: "", text: "All DAGs" }), ...dags.map((d) => el("option", { value: d, text: d })));
      select.value = current;
    }

    function card(item) {
      const level = risk(item);
      const checkbox = el("input", {
        type: "checkbox",
        className: "select",
        "aria-label": "Select " + item.title,
        dataset: { id: item.id },
        onchange: (e) => {
          if (e.target.checked) state.selected.add(item.id);
          else state.selected.delete(item.id);
          updateBulk();
        },
      });
      checkbox.checked = state.selected.has(item.id);
      const rights = item.can_approve
        ? el("span", { className: "badge can", text: item.can_approve_for ? "you can decide for " + item.can_approve_for : "you can decide" })
        : el("span", { className: "badge cannot", text: item.can_approve_reason || "view only", title: item.can_approve_reason || "" });
      return el(
        "li",
        { className: "card risk-" + level, dataset: { id: item.id, dagId: item.dag_id } },
        el(
          "div",
          { className: "card-top" },
          checkbox,
          el("button", { type: "button", className: "title linklike", onclick: () => openModal(item.id), text: item.title }),
          el("span", { className: "risk", title: "risk: " + level, text: level === "none" ? "" : level })
        ),
        whereLine(item),
        el(
          "div",
          { className: "meta" },
          el("span", { className: "countdown", dataset: { expires: item.expires_at || "" }, text: timeLeft(item.expires_at) }),
          " · requested " + ago(item.requested_at) + (item.requested_by ? " by " + item.requested_by : "") + " · " + quorumText(item),
          item.state === "escalated" ? el("span", { className: "badge escalated", text: "escalated" }) : null
        ),
        item.escalation_level ? el("div", { className: "meta escalation" }, "Who decides now: ", el("span", { className: "deciders", text: decidersLine(item) })) : null,
        ...standingVotes(item).map((v) => el("div", { className: "meta standing" }, standingLine(v))),
        el(
          "div",
          { className: "card-actions" },
          rights,
          el(
            "span",
            { className: "quick" },
            // Approve then Reject, as Airflow's own HITL buttons (its options' order).
            el("button", { type: "button", className: "btn review", onclick: () => openModal(item.id), text: "Review" }),
            quickButton(item, "approve"),
            quickButton(item, "reject")
          )
        ),
        quickRejectForm(item)
      );
    }

    /* quick decisions on a card: Approve at once, Reject after a reason typed right there */

    function quickButton(item, action) {
      const allowed = action === "approve" ? WAITING.has(item.state) && item.can_approve : canReject(item);
      return el("button", {
        type: "button",
        className: "btn quick-" + action + " " + action,
        disabled: !allowed,
        title: allowed ? "" : item.can_approve_reason || "not allowed",
        onclick: () => (action === "approve" ? quickApprove(item) : openQuickReject(item.id)),
        text: action === "approve" ? "Approve" : "Reject",
      });
    }

    function quickRejectForm(item) {
      const open = state.rejecting === item.id;
      const input = el("textarea", { className: "quick-reason", rows: "2", maxlength: "4000", "aria-label": "Reason for rejecting " + item.title, placeholder: "Reason for rejecting (required)" });
      input.value = open ? state.rejectDraft : "";
      input.addEventListener("input", () => (state.rejectDraft = input.value));
      const error = el("p", { className: "error quick-error", role: "alert", hidden: true });
      const form = el(
        "form",
        { className: "quick-reject", hidden: !open, novalidate: true, onsubmit: (e) => e.preventDefault() },
        input,
        error,
        el(
          "div",
          { className: "actions" },
          el("button", { type: "button", className: "btn", onclick: () => openQuickReject(null), text: "Cancel" }),
          el("button", { type: "button", className: "btn reject confirm-reject", onclick: () => quickReject(item, input.value.trim(), error), text: "Reject with this reason" })
        )
      );
      return form;
    }

    function openQuickReject(id) {
      state.rejecting = id;
      state.rejectDraft = "";
      render();
      if (id) {
        const input = cards.querySelector('li.card[data-id="' + CSS.escape(id) + '"] .quick-reason');
        if (input) input.focus();
      }
    }

    async function quickDecide(item, action, json, button) {
      if (button) button.disabled = true;
      try {
        const result = await api("/approvals/" + encodeURIComponent(item.id) + "/" + action, { method: "POST", json, base: DECIDE });
        toast(decidedText(action, result), "ok");
        return true;
      } catch (err) {
        // A request that changed since its card was shown: the refresh below shows it as it is now.
        const why = changedSinceShown(err) ? "not recorded, " + err.message : (err.status ? err.status + ": " : "") + err.message;
        toast("Could not " + action + " “" + item.title + "”: " + why, "bad");
        return false;
      } finally {
        if (button) button.disabled = false;
        refresh();
      }
    }

    function quickApprove(item) {
      // A form with required inputs is filled in the decision modal, not skipped from the card.
      if (Object.values(item.inputs || {}).some((spec) => spec && spec.required)) return openModal(item.id);
      const button = cards.querySelector('li.card[data-id="' + CSS.escape(item.id) + '"] .quick-approve');
      quickDecide(item, "approve", Object.assign({ comment: null }, onBehalfOf(item), seenDigest(item.content_digest)), button);
    }

    async function quickReject(item, reason, error) {
      if (!reason) {
        // The API refuses it too (422); say so before anything is sent.
        error.textContent = "A reason is required to reject.";
        error.hidden = false;
        return;
      }
      if (await quickDecide(item, "reject", Object.assign({ reason, comment: null }, onBehalfOf(item), seenDigest(item.content_digest)), null)) openQuickReject(null);
    }

    function render() {
      const items = filtered();
      setText("pending-count", String(items.length));
      // The count of requests waiting for this user's decision, where Airflow lets us show it.
      const forMe = state.items.filter((i) => i.can_approve).length;
      document.title = (forMe ? "(" + forMe + ") " : "") + "Pending approvals · airflow-hitl";
      setText("for-me-count", forMe ? forMe + " waiting for you" : "none waiting for you");
      // Keep a half-typed rejection reason across the refresh that re-renders the cards.
      const focused = document.activeElement && document.activeElement.classList.contains("quick-reason");
      // Forget selections of requests that are gone (decided elsewhere).
      const ids = new Set(state.items.map((i) => i.id));
      for (const id of [...state.selected]) if (!ids.has(id)) state.selected.delete(id);
      if (state.rejecting && !ids.has(state.rejecting)) state.rejecting = null;
      cards.replaceChildren(...items.map(card));
      if (focused && state.rejecting) {
        const input = cards.querySelector('li.card[data-id="' + CSS.escape(state.rejecting) + '"] .quick-reason');
        if (input) {
          input.focus();
          input.setSelectionRange(input.value.length, input.value.length);
        }
      }
      show($("empty"), state.loaded && items.length === 0);
      updateBulk();
    }

    function updateBulk() {
      const n = state.selected.size;
      setText("selected-count", n + " selected");
      $("bulk-approve").disabled = n === 0;
      $("bulk-reject").disabled = n === 0;
      const visible = filtered();
      $("select-all").checked = visible.length > 0 && visible.every((i) => state.selected.has(i.id));
    }

    async function refresh() {
      try {
        const data = await api("/approvals/pending" + query({ limit: 500 }));
        state.items = data.approvals;
        state.loaded = true;
        show($("load-error"), false);
        $("live-status").className = "live";
        dagOptions();
        render();
        if (state.openId && !modal.hidden) {
          const item = await api("/approvals/" + encodeURIComponent(state.openId));
          if (state.openId === item.id) view.fill(item);
        }
      } catch (err) {
        if (loadFailed("load-error", "approvals", err)) $("live-status").className = "live stale";
      }
    }

    async function openModal(id) {
      try {
        const item = await api("/approvals/" + encodeURIComponent(id));
        state.openId = id;
        view.fill(item);
        modal.hidden = false;
        dimAirflow(closeModal);
        $("m-close").focus();
      } catch (err) {
        toast("Could not open the approval: " + err.message, "bad");
      }
    }

    function closeModal() {
      state.openId = null;
      modal.hidden = true;
      undimAirflow();
    }

    $("m-close").addEventListener("click", closeModal);
    modal.addEventListener("click", (e) => {
      if (e.target === modal) closeModal();
    });
    document.addEventListener("keydown", (e) => {
      if (e.key !== "Escape") return;
      if (!$("bulk-modal").hidden) closeBulk();
      else if (!modal.hidden) closeModal();
    });
    ["filter-dag", "filter-state", "filter-age", "sort", "filter-mine"].forEach((id) => $(id).addEventListener("change", render));
    $("inbox-filters").addEventListener("submit", (e) => e.preventDefault());
    $("select-all").addEventListener("change", (e) => {
      for (const item of filtered()) {
        if (e.target.checked) state.selected.add(item.id);
        else state.selected.delete(item.id);
      }
      render();
    });

    /* bulk */
    let bulkAction = null;
    let bulkSeen = {}; // id -> the digest of the request as the bulk dialog listed it
    function openBulk(action) {
      bulkAction = action;
      const chosen = state.items.filter((i) => state.selected.has(i.id));
      bulkSeen = Object.fromEntries(chosen.filter((i) => i.content_digest).map((i) => [i.id, i.content_digest]));
      setText("b-title", (action === "approve" ? "Approve " : "Reject ") + chosen.length + " request" + (chosen.length === 1 ? "" : "s") + "?");
      $("b-list").replaceChildren(...chosen.map((i) => el("li", { dataset: { id: i.id } }, el("strong", { text: i.title }), " ", el("span", { className: "muted", text: i.dag_id + " · " + (i.run_id || "") }))));
      show($("b-reason-wrap"), action === "reject");
      $("b-comment").value = "";
      $("b-reason").value = "";
      show($("b-error"), false);
      show($("b-form"), true);
      show($("b-results"), false);
      const confirm = $("b-confirm");
      confirm.className = "btn " + action;
      confirm.textContent = action === "approve" ? "Confirm approval" : "Confirm rejection";
      confirm.disabled = false;
      $("bulk-modal").hidden = false;
      dimAirflow(closeBulk);
      confirm.focus();
    }

    function closeBulk() {
      $("bulk-modal").hidden = true;
      bulkAction = null;
      undimAirflow();
    }

    async function submitBulk() {
      const reason = $("b-reason").value.trim();
      if (bulkAction === "reject" && !reason) {
        setText("b-error", "A reason is required to reject.");
        show($("b-error"), true);
        return;
      }
      const ids = state.items.filter((i) => state.selected.has(i.id)).map((i) => i.id);
      const titles = Object.fromEntries(state.items.map((i) => [i.id, i.title]));
      $("b-confirm").disabled = true;
      try {
        const result = await api("/approvals/bulk", {
          method: "POST",
          base: DECIDE,
          json: {
            ids,
            action: bulkAction,
            comment: $("b-comment").value.trim() || null,
            reason: reason || null,
            // Each request as the dialog listed it: one that changed since fails alone (409).
            content_digests: Object.fromEntries(ids.filter((id) => bulkSeen[id]).map((id) => [id, bulkSeen[id]])),
          },
        });
        show($("b-form"), false);
        const list = $("b-results");
        list.replaceChildren(
          el("li", { className: "summary", text: result.succeeded + " succeeded, " + result.failed + " failed" }),
          ...result.results.map((r) =>
            el(
              "li",
              { className: "result " + (r.ok ? "ok" : "bad"), dataset: { id: r.id } },
              el("span", { className: "badge " + (r.ok ? "approved" : "rejected"), text: r.ok ? "ok" : String(r.status_code) }),
              " ",
              el("strong", { text: titles[r.id] || r.id }),
              " ",
              el("span", { className: "muted", text: r.ok ? (WAITING.has(r.state) ? "your approval is recorded; waiting for more" : "now " + r.state) : r.detail || "failed" })
            )
          )
        );
        show(list, true);
        state.selected.clear();
        refresh();
      } catch (err) {
        setText("b-error", err.status + ": " + err.message);
        show($("b-error"), true);
        $("b-confirm").disabled = false;
      }
    }

    $("bulk-approve").addEventListener("click", () => openBulk("approve"));
    $("bulk-reject").addEventListener("click", () => openBulk("reject"));
    $("b-close").addEventListener("click", closeBulk);
    $("b-cancel").addEventListener("click", closeBulk);
    $("b-confirm").addEventListener("click", submitBulk);
    $("b-form").addEventListener("submit", (e) => e.preventDefault());

    setInterval(() => {
      document.querySelectorAll(".countdown").forEach((node) => (node.textContent = timeLeft(node.dataset.expires)));
      view.tick();
    }, 1000);
    setInterval(() => {
      if (!document.hidden) refresh();
    }, POLL_MS);
    onLookChange.push(() => {
      render();
      if (view.item) view.fill(view.item);
    });
    refresh();
    // A notification opened from another page lands here as ?open=<approval id>.
    const wanted = new URLSearchParams(window.location.search).get("open");
    if (wanted) openModal(wanted);
    return openModal;
  }

  /* ------------------------------------------------------------------ history */

  function historyPage() {
    const params = new URLSearchParams(window.location.search);
    const fields = { state: "h-state", decided_by: "h-approver", dag_id: "h-dag", since: "h-since", until: "h-until" };
    for (const [name, id] of Object.entries(fields)) if (params.get(name)) $(id).value = params.get(name);

    function filters() {
      return {
        state: $("h-state").value,
        decided_by: $("h-approver").value.trim(),
        dag_id: $("h-dag").value.trim(),
        since: dayBound($("h-since").value, false),
        until: dayBound($("h-until").value, true),
      };
    }

    /** "by alice via ui", or, for a decision a standing approval's vote made, what that approval was. */
    function decidedLine(item) {
      const deciding = item.decided_by ? (item.votes || []).filter((v) => v.user === item.decided_by).pop() : null;
      if (item.decision_source === "standing" && standingOf(deciding)) {
        return el("div", { className: "meta" }, standingLine(deciding, { className: "standing-note who-standing" }), " · requested by " + (item.requested_by || "unknown"));
      }
      const who = decidedBy(item) || (item.decision_source === "timeout" ? "timeout" : "—");
      return el(
        "div",
        { className: "meta" },
        "by ",
        el("strong", { className: "who", text: who }),
        " via ",
        el("span", { className: "source", text: item.decision_source || "—" }),
        " · requested by " + (item.requested_by || "unknown")
      );
    }

    function entry(item) {
      return el(
        "li",
        { className: "event " + item.state, dataset: { id: item.id } },
        el("div", { className: "when", text: stamp(item.decided_at) }),
        el(
          "div",
          { className: "what" },
          el("span", { className: "badge " + item.state, text: item.state }),
          " ",
          el("strong", { className: "title", text: item.title })
        ),
        whereLine(item),
        decidedLine(item),
        // The decision's comment is usually the deciding vote's own: show it once, with the vote.
        item.comment && !(item.votes || []).some((v) => [v.comment, v.reason, v.reason + " — " + v.comment].includes(item.comment))
          ? el("div", { className: "comment prewrap", text: "“" + item.comment + "”" })
          : null,
        (item.votes || []).length ? el("ul", { className: "votes" }, item.votes.map((v) => voteItem(v, v === usedVote(item)))) : null
      );
    }

    const newest = newestCall();
    async function load() {
      const f = filters();
      const csv = API + "/approvals/history" + query(Object.assign({}, f, { format: "csv", limit: 10000 }));
      $("csv-link").setAttribute("href", csv);
      const call = newest.next();
      try {
        const data = await api("/approvals/history" + query(Object.assign({}, f, { limit: 200 })));
        if (!newest.is(call)) return;
        setText("history-count", String(data.total_entries));
        $("timeline").replaceChildren(...data.approvals.map(entry));
        show($("empty"), data.approvals.length === 0);
        show($("load-error"), false);
      } catch (err) {
        if (newest.is(call)) loadFailed("load-error", "the history", err);
      }
    }

    $("history-filters").addEventListener("submit", (e) => {
      e.preventDefault();
      // Keep the filters in the address so a link (and the Airflow UI's URL sync) keeps them.
      const f = filters();
      const shown = { state: f.state, decided_by: f.decided_by, dag_id: f.dag_id, since: $("h-since").value, until: $("h-until").value };
      window.history.replaceState(null, "", window.location.pathname + query(shown));
      load();
    });
    ["h-state", "h-since", "h-until"].forEach((id) => $(id).addEventListener("change", load));
    onLookChange.push(load);
    setInterval(() => {
      if (!document.hidden) load();
    }, POLL_MS * 2);
    load();
  }

  /* ------------------------------------------------------------------ delegations */

  /** A datetime-local value ("2026-12-01T09:00") in Airflow's selected timezone, as an ISO instant. */
  function localInputInstant(value) {
    if (!value) return null;
    const [date, time] = value.split("T");
    const [y, mo, d] = date.split("-").map(Number);
    const [h, mi] = (time || "00:00").split(":").map(Number);
    return zonedInstant(y, mo, d, h, mi, 0, 0);
  }

  /** A time as a datetime-local value in Airflow's selected timezone. */
  function zonedLocal(at) {
    const p = Object.fromEntries(formatterFor(airflowTimezone()).formatToParts(at).map((x) => [x.type, x.value]));
    return p.year + "-" + p.month + "-" + p.day + "T" + p.hour + ":" + p.minute;
  }

  function delegationsPage() {
    const me = body.dataset.user;
    const now = new Date();
    $("d-starts").value = zonedLocal(now);
    $("d-ends").value = zonedLocal(new Date(now.getTime() + 7 * 24 * 3600 * 1000));
    setText("d-zone", airflowTimezone());

    function row(d) {
      const ending = d.state === "active" || d.state === "scheduled";
      const canEnd = ending && (d.delegator === me || body.dataset.admin === "true");
      return el(
        "tr",
        { className: "delegation " + d.state, dataset: { id: d.id } },
        el("td", { className: "d-who", text: d.delegate + " for " + d.delegator }),
        el("td", { text: stamp(d.starts_at) }),
        el("td", { text: stamp(d.ends_at) }),
        el("td", { text: d.dag_ids ? d.dag_ids.join(", ") : "all DAGs" }),
        el("td", {}, el("span", { className: "badge d-state " + d.state, text: d.state })),
        el(
          "td",
          {},
          canEnd ? el("button", { type: "button", className: "btn reject d-end", text: "End now", onclick: () => end(d) }) : null
        )
      );
    }

    async function load() {
      try {
        const data = await api("/delegations" + query({ limit: 500 }));
        $("d-rows").replaceChildren(...data.delegations.map(row));
        show($("d-empty"), data.delegations.length === 0);
        show($("d-load-error"), false);
      } catch (err) {
        loadFailed("d-load-error", "the delegations", err);
      }
    }

    async function end(d) {
      if (!window.confirm("End the delegation to " + d.delegate + " now?")) return;
      try {
        await api("/delegations/" + encodeURIComponent(d.id), { method: "DELETE" });
        toast("Ended: " + d.delegate + " no longer decides for " + d.delegator, "ok");
      } catch (err) {
        toast("Could not end it: " + (err.status ? err.status + ": " : "") + err.message, "bad");
      }
      load();
    }

    $("d-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const dags = $("d-dags").value.split(",").map((v) => v.trim()).filter(Boolean);
      const json = {
        delegate: $("d-delegate").value.trim(),
        starts_at: localInputInstant($("d-starts").value),
        ends_at: localInputInstant($("d-ends").value),
      };
      if (dags.length) json.dag_ids = dags;
      const delegator = $("d-delegator") ? $("d-delegator").value.trim() : "";
      if (delegator) json.delegator = delegator;
      show($("d-error"), false);
      try {
        const made = await api("/delegations", { method: "POST", json });
        toast("Delegated: " + made.delegate + " decides for " + made.delegator + " until " + stamp(made.ends_at), "ok");
        $("d-delegate").value = "";
        load();
      } catch (err) {
        setText("d-error", (err.status ? err.status + ": " : "") + err.message);
        show($("d-error"), true);
      }
    });
    onLookChange.push(load);
    load();
  }

  /* ------------------------------------------------------------------ standing approvals */

  // Which form control each field the API names is typed into.
  const STANDING_FIELDS = { dag_id: "s-dag", task_id: "s-task", valid_from: "s-from", valid_until: "s-until", max_uses: "s-uses", comment: "s-comment" };

  /**
   * The fields an API error names, and its text with each named: a 422 is either our own
   * ("invalid `valid_until`: must be in the future") or FastAPI's list of {loc, msg}.
   */
  function fieldErrors(err) {
    if (Array.isArray(err.detail)) {
      const items = err.detail.map((d) => {
        const loc = (d && Array.isArray(d.loc) ? d.loc : []).filter((part) => part !== "body");
        const field = loc.length ? String(loc[0]) : "";
        const msg = (d && d.msg) || JSON.stringify(d);
        return { field, text: field && !msg.startsWith(field) ? field + ": " + msg : msg };
      });
      return { fields: items.map((i) => i.field).filter(Boolean), text: items.map((i) => i.text).join("; ") };
    }
    const fields = [...String(err.message || "").matchAll(/`(\w+)`/g)].map((m) => m[1]);
    return { fields, text: err.message };
  }

  function standingPage() {
    const me = body.dataset.user;
    const admin = body.dataset.admin === "true";
    const maxDays = Number(body.dataset.maxDays) || 30;
    const now = new Date();
    // A week ahead, or the longest window allowed when that is shorter.
    $("s-until").value = zonedLocal(new Date(now.getTime() + Math.min(7, maxDays) * 24 * 3600 * 1000));
    setText("s-zone", airflowTimezone());

    function cell(label, ...children) {
      return el("td", { dataset: { label } }, ...children);
    }

    function row(s) {
      const live = s.state === "active" || s.state === "scheduled";
      const canRevoke = live && (s.approver === me || admin);
      return el(
        "tr",
        { className: "standing-row " + s.state, dataset: { id: s.id } },
        cell("Approver", el("strong", { className: "s-approver", text: s.approver })),
        cell("DAG · task", el("span", { className: "s-scope", text: s.dag_id + " · " + (s.task_id || "every gate") })),
        cell("From", stamp(s.valid_from)),
        cell("Until", stamp(s.valid_until)),
        cell("Uses left", el("span", { className: "s-uses", text: s.max_uses === null || s.max_uses === undefined ? "no use limit" : s.uses_left + " of " + s.max_uses })),
        cell("State", el("span", { className: "badge s-state " + s.state, text: s.state.replace(/_/g, " ") })),
        cell("Comment", el("span", { className: "s-comment prewrap", text: s.comment })),
        cell(
          "Actions",
          canRevoke
            ? el("button", { type: "button", className: "btn reject s-revoke", "aria-label": "Revoke the standing approval of " + s.approver + " for " + s.dag_id, text: "Revoke", onclick: () => revoke(s) })
            : s.revoked_by
              ? el("span", { className: "muted", text: "revoked by " + s.revoked_by + " " + stamp(s.revoked_at) })
              : null
        )
      );
    }

    function filters() {
      const approver = $("s-approver") ? $("s-approver").value.trim() : "";
      return { state: $("s-state").value, approver };
    }

    async function load() {
      try {
        const data = await api("/standing-approvals" + query(Object.assign({ limit: 500 }, filters())));
        const items = data.standing_approvals || [];
        // A refresh keeps the keyboard where it was: on the same row's Revoke button.
        const focused = document.activeElement && document.activeElement.closest ? document.activeElement.closest("#s-rows tr") : null;
        $("s-rows").replaceChildren(...items.map(row));
        if (focused) {
          const again = $("s-rows").querySelector('tr[data-id="' + CSS.escape(focused.dataset.id) + '"] .s-revoke');
          if (again) again.focus();
        }
        show($("s-empty"), items.length === 0);
        show($("s-load-error"), false);
      } catch (err) {
        loadFailed("s-load-error", "the standing approvals", err);
      }
    }

    async function revoke(s) {
      const scope = s.dag_id + (s.task_id ? " (task " + s.task_id + ")" : "");
      if (!window.confirm("Revoke " + (s.approver === me ? "your" : s.approver + "'s") + " standing approval for " + scope + "? It approves nothing from now on.")) return;
      try {
        await api("/standing-approvals/" + encodeURIComponent(s.id), { method: "DELETE" });
        toast("Revoked: the standing approval for " + scope + " approves nothing more", "ok");
      } catch (err) {
        toast("Could not revoke it: " + (err.status ? err.status + ": " : "") + err.message, "bad");
      }
      load();
    }

    function markInvalid(fields) {
      for (const [field, id] of Object.entries(STANDING_FIELDS)) $(id).setAttribute("aria-invalid", fields.includes(field) ? "true" : "false");
    }

    $("s-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const uses = $("s-uses").value.trim();
      const json = {
        dag_id: $("s-dag").value.trim(),
        task_id: $("s-task").value.trim() || null,
        valid_from: localInputInstant($("s-from").value),
        valid_until: localInputInstant($("s-until").value),
        // The server names a wrong number (422); a text that is no number is sent as it is.
        max_uses: uses === "" ? null : Number.isFinite(Number(uses)) ? Number(uses) : uses,
        comment: $("s-comment").value.trim(),
      };
      show($("s-error"), false);
      markInvalid([]);
      const button = $("s-create");
      button.disabled = true;
      try {
        const made = await api("/standing-approvals", { method: "POST", json });
        toast("Approved ahead: " + made.dag_id + (made.task_id ? " · " + made.task_id : "") + " until " + stamp(made.valid_until) + ", " + usesLeftText(made.uses_left, made.max_uses), "ok");
        ["s-dag", "s-task", "s-from", "s-uses", "s-comment"].forEach((id) => ($(id).value = ""));
        load();
      } catch (err) {
        if (err.status === 401) return;
        const named = fieldErrors(err);
        setText("s-error", (err.status ? err.status + ": " : "") + named.text);
        show($("s-error"), true);
        markInvalid(named.fields);
        const first = named.fields.map((f) => STANDING_FIELDS[f]).find(Boolean);
        if (first) $(first).focus();
      } finally {
        button.disabled = false;
      }
    });
    $("s-filters").addEventListener("submit", (e) => {
      e.preventDefault();
      load();
    });
    $("s-state").addEventListener("change", load);
    onLookChange.push(() => {
      setText("s-zone", airflowTimezone());
      load();
    });
    setInterval(() => {
      if (!document.hidden) load();
    }, POLL_MS * 2);
    load();
  }

  /* ------------------------------------------------------------------ task view */

  function taskPage() {
    const { dagId, runId, taskId, mapIndex } = body.dataset;
    const view = new DecisionView(
      () => refresh(),
      () => refresh()
    );

    async function refresh() {
      try {
        // Only this task instance's own gates (origin "task"): a request opened over the API
        // with the same ids is never taken for it.
        const data = await api("/approvals" + query({ dag_id: dagId, run_id: runId, task_id: taskId, map_index: mapIndex, origin: "task", limit: 50, order_by: "-requested_at" }));
        const mine = data.approvals;
        show($("load-error"), false);
        show($("empty"), mine.length === 0);
        show($("task-detail"), mine.length > 0);
        if (!mine.length) return;
        // The newest try's request; its own GET says whether this user may decide it.
        const item = await api("/approvals/" + encodeURIComponent(mine[0].id));
        view.fill(item);
        const older = mine.slice(1);
        show($("t-older"), older.length > 0);
        $("t-older-list").replaceChildren(
          ...older.map((a) => el("li", {}, el("span", { className: "badge " + a.state, text: a.state }), " try " + (a.try_number || "?") + " · requested " + stamp(a.requested_at) + (a.decided_by ? " · by " + decidedBy(a) : "")))
        );
      } catch (err) {
        loadFailed("load-error", "the approval", err);
      }
    }

    if (!dagId || !runId || !taskId) {
      setText("load-error", "Open this page from a task instance in Airflow (dag_id, run_id and task_id are needed).");
      show($("load-error"), true);
      return;
    }
    setInterval(() => view.tick(), 1000);
    setInterval(() => {
      if (!document.hidden) refresh();
    }, POLL_MS);
    onLookChange.push(() => view.item && view.fill(view.item));
    refresh();
  }

  /* ------------------------------------------------------------------ analytics */

  /** Seconds from the analytics report as the pages write a wait ("2m 5s"); "—" for none. */
  function waited(value) {
    return value === null || value === undefined ? "—" : duration(value * 1000);
  }

  /** A round wait written without its zero part: "5m", "1h", "3d" (as a bar's bound reads). */
  function roundWait(seconds) {
    return waited(seconds).replace(/ 0[smh]$/, "");
  }

  /** How many decisions a bar of the time-to-decision histogram holds. */
  function barTotal(bar) {
    return bar.approved + bar.rejected;
  }

  /** The bound within which at least ``share`` of the histogram's ``total`` decisions came ("5m"); null: only the unbounded last bar reaches it. */
  function decidedWithin(bars, share, total) {
    let seen = 0;
    for (const bar of bars) {
      seen += barTotal(bar);
      if (seen >= share * total) return bar.le_s === null ? null : roundWait(bar.le_s);
    }
    return null;
  }

  /** The histogram in words: where half and 90% of its decisions fall ("At least half of the 12 decisions came within 5m, 90% within 4h."). */
  function histogramWords(bars, total) {
    const decisions = total + " decision" + (total === 1 ? "" : "s");
    const longest = roundWait(bars[bars.length - 2].le_s);
    const half = decidedWithin(bars, 0.5, total);
    if (total === 1) return "The one decision came " + (half === null ? "after more than " + longest : "within " + half) + ".";
    if (half === null) return "Fewer than half of the " + decisions + " came within " + longest + ".";
    const most = decidedWithin(bars, 0.9, total);
    return "At least half of the " + decisions + " came within " + half + ", " + (most === null ? "fewer than 90% within " + longest : "90% within " + most) + ".";
  }

  /** A gate's name: its DAG and task (a request opened over the API may have no task). */
  function gateName(gate) {
    return gate.dag_id + " · " + (gate.task_id || "no task");
  }

  function analyticsPage() {
    const REFRESH_MS = 60000;
    const TABLES = ["gates", "histogram", "approvers", "daily"];
    const params = new URLSearchParams(window.location.search);
    const fields = { dag_id: "a-dag", task_id: "a-task", since: "a-since", until: "a-until" };
    for (const [name, id] of Object.entries(fields)) if (params.get(name)) $(id).value = params.get(name);
    const charts = {};
    const knownDags = new Set();
    let report = null;

    function filters() {
      return {
        dag_id: $("a-dag").value.trim(),
        task_id: $("a-task").value.trim(),
        since: dayBound($("a-since").value, false),
        until: dayBound($("a-until").value, true),
      };
    }

    /** The page's colours now (Airflow's, when the page is inside its UI): the charts are drawn in them. */
    function palette() {
      const css = getComputedStyle(document.documentElement);
      const v = (name) => css.getPropertyValue(name).trim();
      return { text: v("--text"), muted: v("--muted"), line: v("--line"), ok: v("--ok"), bad: v("--bad"), warn: v("--warn"), accent: v("--accent"), font: getComputedStyle(body).fontFamily };
    }

    function chartOptions(p, options) {
      return Object.assign(
        {
          responsive: true,
          maintainAspectRatio: false,
          animation: false,
          plugins: { legend: { position: "bottom", labels: { color: p.text, boxWidth: 12 } } },
        },
        options
      );
    }

    /** The histogram of time to decision: per bar of waits, the approved and rejected requests stacked. */
    function timeToDecision(p, bars) {
      const total = bars.reduce((sum, bar) => sum + barTotal(bar), 0);
      show($("c-ttd-area"), total > 0);
      show($("c-ttd-empty"), total === 0);
      show($("c-ttd-note"), total > 0);
      // The chart's words for a screen reader (and a summary for everyone): where the middle and the tail fall.
      setText("c-ttd-note", total ? histogramWords(bars, total) + " The table below lists each bar." : "");
      if (!total) return null;
      return {
        type: "bar",
        data: {
          labels: bars.map((bar) => bar.label),
          datasets: [
            { label: "Approved", data: bars.map((bar) => bar.approved), backgroundColor: p.ok },
            { label: "Rejected", data: bars.map((bar) => bar.rejected), backgroundColor: p.bad },
          ],
        },
        options: chartOptions(p, {
          scales: {
            // Every bar labelled (tilted when the chart is narrow), never skipped.
            x: { stacked: true, title: { display: true, text: "Waited", color: p.muted }, ticks: { color: p.muted, autoSkip: false }, grid: { display: false } },
            y: { stacked: true, beginAtZero: true, title: { display: true, text: "Requests", color: p.muted }, ticks: { color: p.muted, precision: 0 }, grid: { color: p.line } },
          },
          plugins: {
            legend: { position: "bottom", labels: { color: p.text, boxWidth: 12 } },
            tooltip: { callbacks: { title: (items) => "Waited " + items[0].label } },
          },
        }),
      };
    }

    function dailyVolume(p, days) {
      show($("c-daily-area"), days.length > 0);
      show($("c-daily-empty"), days.length === 0);
      if (!days.length) return null;
      return {
        type: "bar",
        data: {
          labels: days.map((d) => d.date),
          datasets: [
            { label: "Decided", data: days.map((d) => d.decided), backgroundColor: p.ok },
            { label: "Timed out", data: days.map((d) => d.timed_out), backgroundColor: p.warn },
            { label: "Waiting or cancelled", data: days.map((d) => d.requests - d.decided - d.timed_out), backgroundColor: p.muted },
          ],
        },
        options: chartOptions(p, {
          scales: {
            x: { stacked: true, ticks: { color: p.muted, maxRotation: 0, autoSkip: true }, grid: { display: false } },
            y: { stacked: true, beginAtZero: true, ticks: { color: p.muted, precision: 0 }, grid: { color: p.line } },
          },
        }),
      };
    }

    function drawCharts() {
      const Chart = window.Chart;
      if (!Chart) {
        setText("a-error", "The charts could not be drawn: the charting library did not load.");
        show($("a-error"), true);
        return;
      }
      const p = palette();
      Chart.defaults.color = p.muted;
      Chart.defaults.borderColor = p.line;
      Chart.defaults.font.family = p.font;
      const configs = { ttd: timeToDecision(p, report.time_to_decision_histogram), daily: dailyVolume(p, report.daily) };
      for (const [name, config] of Object.entries(configs)) {
        if (charts[name]) charts[name].destroy();
        charts[name] = config ? new Chart($("chart-" + name), config) : null;
      }
    }

    function cell(label, value, className) {
      return el("td", { dataset: { label }, className }, value === null || value === undefined ? "—" : value);
    }

    function gateRow(g) {
      return el(
        "tr",
        { className: "gate-row", dataset: { dag: g.dag_id, task: g.task_id || "" } },
        cell("Gate", el("span", { className: "g-name", text: gateName(g) }), "name"),
        cell("Requests", g.requests, "num g-requests"),
        cell("Approved", g.approved, "num g-approved"),
        cell("Rejected", g.rejected, "num g-rejected"),
        cell("Timed out", g.timed_out, "num g-timed-out"),
        cell("Cancelled", g.cancelled, "num g-cancelled"),
        cell("Escalated", g.escalated, "num g-escalated"),
        cell("Median", waited(g.time_to_decision_p50_s), "num g-p50"),
        cell("90th pct.", waited(g.time_to_decision_p90_s), "num g-p90"),
        cell("Waiting", g.pending_now, "num g-pending"),
        cell("Oldest waiting", waited(g.oldest_pending_s), "num g-oldest"),
        cell("SLA breaches", g.sla_breaches, "num g-sla" + (g.sla_breaches ? " breached" : ""))
      );
    }

    function approverRow(a) {
      return el(
        "tr",
        { className: "approver-row", dataset: { user: a.user } },
        cell("Approver", el("strong", { className: "ap-user", text: a.user }), "name"),
        cell("Votes", a.decisions, "num ap-decisions"),
        cell("Approvals", a.approvals, "num ap-approvals"),
        cell("Rejections", a.rejections, "num ap-rejections"),
        cell("Median response", waited(a.median_response_s), "num ap-median")
      );
    }

    function barRow(bar, decided) {
      const share = decided ? Math.round((barTotal(bar) / decided) * 100) + "%" : "—";
      return el(
        "tr",
        { className: "bar-row", dataset: { le: bar.le_s === null ? "" : bar.le_s } },
        cell("Waited", bar.label, "name bar-label"),
        cell("Approved", bar.approved, "num bar-approved"),
        cell("Rejected", bar.rejected, "num bar-rejected"),
        cell("Share of decisions", share, "num bar-share")
      );
    }

    function dayRow(d) {
      return el(
        "tr",
        { className: "day-row", dataset: { date: d.date } },
        cell("Day", d.date, "name day-date"),
        cell("Requests", d.requests, "num day-requests"),
        cell("Decided", d.decided, "num day-decided"),
        cell("Timed out", d.timed_out, "num day-timed-out")
      );
    }

    function table(name, rows) {
      $(name + "-rows").replaceChildren(...rows);
      show($(name + "-table"), rows.length > 0);
      show($(name + "-empty"), rows.length === 0);
    }

    function watchItem(className, gate, ...text) {
      return el("li", { className, dataset: { dag: gate.dag_id, task: gate.task_id || "" } }, el("strong", { className: "w-gate", text: gateName(gate) }), " ", el("span", { className: "w-figure" }, ...text));
    }

    function render() {
      const gates = report.gates;
      const total = (key) => gates.reduce((sum, g) => sum + g[key], 0);
      setText("t-requests", total("requests"));
      setText("t-approved", total("approved"));
      setText("t-rejected", total("rejected"));
      setText("t-timed-out", total("timed_out"));
      setText("t-pending", total("pending_now"));
      setText("t-sla", total("sla_breaches"));
      setText("a-zone", airflowTimezone());

      const waiting = gates.filter((g) => g.pending_now > 0).sort((a, b) => b.oldest_pending_s - a.oldest_pending_s);
      $("oldest-list").replaceChildren(
        ...waiting.slice(0, 10).map((g) => watchItem("oldest-item", g, "waiting for " + waited(g.oldest_pending_s) + (g.pending_now > 1 ? " (the oldest of " + g.pending_now + ")" : "")))
      );
      show($("oldest-empty"), waiting.length === 0);
      const breached = gates.filter((g) => g.sla_breaches > 0).sort((a, b) => b.sla_breaches - a.sla_breaches);
      $("sla-list").replaceChildren(
        ...breached.slice(0, 10).map((g) => watchItem("sla-item", g, g.sla_breaches + " of " + g.requests + " request" + (g.requests === 1 ? "" : "s") + " waited past the SLA"))
      );
      show($("sla-empty"), breached.length === 0);

      table("gates", gates.map(gateRow));
      const bars = report.time_to_decision_histogram;
      const decided = bars.reduce((sum, bar) => sum + barTotal(bar), 0);
      // Every bar is always there (empty ones at 0): the table shows them only when something was decided.
      table("histogram", decided ? bars.map((bar) => barRow(bar, decided)) : []);
      table("approvers", report.approvers.map(approverRow));
      table("daily", report.daily.map(dayRow));
      for (const g of gates) knownDags.add(g.dag_id);
      $("a-dag-ids").replaceChildren(...[...knownDags].sort().map((id) => el("option", { value: id })));
      drawCharts();
    }

    const newest = newestCall();
    async function load() {
      const f = filters();
      // Each table's export: the same filters, the API's CSV of it (sent with the UI cookie).
      for (const name of TABLES) $("csv-" + name).setAttribute("href", API + "/analytics.csv" + query(Object.assign({ table: name }, f)));
      const call = newest.next();
      try {
        const answer = await api("/analytics" + query(f));
        if (!newest.is(call)) return;
        report = answer;
        show($("a-error"), false);
        render();
        setText("a-updated", "as of " + stamp(new Date().toISOString()));
      } catch (err) {
        if (newest.is(call)) loadFailed("a-error", "the analytics", err);
      }
    }

    $("a-filters").addEventListener("submit", (e) => {
      e.preventDefault();
      // Keep the filters in the address so a link (and the Airflow UI's URL sync) keeps them.
      const shown = { dag_id: $("a-dag").value.trim(), task_id: $("a-task").value.trim(), since: $("a-since").value, until: $("a-until").value };
      window.history.replaceState(null, "", window.location.pathname + query(shown));
      load();
    });
    ["a-since", "a-until"].forEach((id) => $(id).addEventListener("change", load));
    // Another colour mode or timezone: drawn again in it, nothing asked of the server.
    onLookChange.push(() => report && render());
    setInterval(() => {
      if (!document.hidden) load();
    }, REFRESH_MS);
    setText("a-zone", airflowTimezone());
    load();
  }

  /* ------------------------------------------------------------------ in-app notifications (the bell) */

  const EVENT_WORDS = {
    required: "approval needed",
    reminder: "reminder",
    escalated: "escalated",
    timed_out: "timed out",
    decided: "decided",
    cancelled: "cancelled",
    standing_used: "your standing approval voted",
    sla_breached: "overdue (SLA)",
  };

  /** The bell in the header: the unread count, the list, mark read (GET/POST /notifications). */
  function notificationBell(openApproval) {
    const button = $("bell");
    const panel = $("bell-panel");
    if (!button || !panel) return;
    let items = [];

    function render(data) {
      items = data.notifications;
      const unread = data.unread_count;
      const badge = $("bell-count");
      badge.textContent = unread > 99 ? "99+" : String(unread);
      show(badge, unread > 0);
      button.setAttribute("aria-label", "Notifications: " + unread + " unread");
      button.classList.toggle("has-unread", unread > 0);
      $("bell-read-all").disabled = unread === 0;
      show($("bell-empty"), items.length === 0);
      $("bell-list").replaceChildren(
        ...items.map((n) =>
          el(
            "li",
            { className: "note" + (n.read ? " read" : " unread"), dataset: { id: n.id, requestId: n.request_id } },
            el("button", { type: "button", className: "linklike note-open", onclick: () => open(n), text: n.subject || "Approval " + n.request_id }),
            el("div", { className: "muted note-meta", text: (EVENT_WORDS[n.event_type] || n.event_type) + " · " + stamp(n.created_at) }),
            n.read ? null : el("button", { type: "button", className: "linklike note-read", onclick: () => markRead([n.id]), text: "Mark read" })
          )
        )
      );
    }

    async function refresh() {
      try {
        render(await api("/notifications" + query({ limit: 20 })));
      } catch (err) {
        // The bell is secondary: the page's own error line reports a dead API.
      }
    }

    async function markRead(ids) {
      try {
        await api("/notifications/read", { method: "POST", json: ids ? { ids } : {} });
      } catch (err) {
        toast("Could not mark read: " + err.message, "bad");
      }
      refresh();
    }

    function open(n) {
      if (!n.read) markRead([n.id]);
      togglePanel(false);
      openApproval(n.request_id);
    }

    function togglePanel(visible) {
      panel.hidden = !visible;
      button.setAttribute("aria-expanded", String(visible));
    }

    button.addEventListener("click", () => togglePanel(panel.hidden));
    $("bell-read-all").addEventListener("click", () => markRead(null));
    document.addEventListener("click", (e) => {
      if (!panel.hidden && !panel.contains(e.target) && !button.contains(e.target)) togglePanel(false);
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !panel.hidden) togglePanel(false);
    });
    onLookChange.push(() => render({ notifications: items, unread_count: Number($("bell-count").textContent) || 0 }));
    setInterval(() => {
      if (!document.hidden) refresh();
    }, POLL_MS);
    refresh();
  }

  watchLook();
  const pages = { inbox: inboxPage, history: historyPage, task: taskPage, delegations: delegationsPage, standing: standingPage, analytics: analyticsPage };
  const openApproval = (pages[body.dataset.page] || (() => undefined))();
  notificationBell(openApproval || ((id) => window.location.assign(APP + "/ui/" + query({ open: id }))));
})();
