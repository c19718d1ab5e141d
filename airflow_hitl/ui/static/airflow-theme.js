/*
 * airflow-theme.js: what the Airflow UI shows (colour mode, palette, font, timezone), read for
 * the Approvals pages. Loaded before hitl.js, which applies it.
 *
 * The pages are same-origin iframes inside Airflow's React UI. Nothing here is a public
 * interface of Airflow ("Web UI ... no backwards compatibility guarantees"), so every name
 * relied on is listed below, and in the table of airflow_hitl/seam/__init__.py; the test
 * that fails when Airflow changes them is tests/ui/test_airflow_look.py.
 *
 *   localStorage "theme"      the colour mode, written by next-themes: "light", "dark" or "system"
 *   localStorage "timezone"   the timezone chosen in the UI, a JSON string (unset: the browser's)
 *   <html> class "light" / "dark"   the colour mode the UI shows now (next-themes' class)
 *   CSS variable --chakra-colors-bg          page background
 *   CSS variable --chakra-colors-bg-panel    panel background
 *   CSS variable --chakra-colors-fg          text
 *   CSS variable --chakra-colors-fg-muted    muted text
 *   CSS variable --chakra-colors-border      lines
 *   the UI <body>'s font-family
 *   window.frameElement and the UI's <body>  where a modal's backdrop also dims Airflow's own
 *                             page (a layer appended to that <body>, removed when the modal closes)
 *
 * Plain browser JavaScript, no build step. It reads, exposes window.AirflowTheme, and (its last
 * part) window.AirflowBackdrop, the one thing that writes into Airflow's page: nothing when the
 * parent is out of reach.
 */
"use strict";

(function () {
  const THEME_KEY = "theme";
  const TIMEZONE_KEY = "timezone";
  // Ours (hitl.css) -> Airflow's (Chakra). hitl.css carries the same palette for a page
  // opened on its own, outside the Airflow UI.
  const PALETTE = {
    "--bg": "--chakra-colors-bg",
    "--panel": "--chakra-colors-bg-panel",
    "--text": "--chakra-colors-fg",
    "--muted": "--chakra-colors-fg-muted",
    "--line": "--chakra-colors-border",
  };

  /** The Airflow UI's document when this page is its same-origin iframe, else null. */
  function airflowDocument() {
    try {
      if (window.parent !== window && window.parent.document) return window.parent.document;
    } catch (err) {
      // Not the same origin: only localStorage can tell.
    }
    return null;
  }

  function storedItem(key) {
    try {
      return window.localStorage.getItem(key);
    } catch (err) {
      return null;
    }
  }

  function systemDark() {
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  }

  /** "dark" or "light": what the Airflow UI shows (its <html> class), else its stored setting. */
  function colorMode() {
    const parent = airflowDocument();
    if (parent) {
      const classes = parent.documentElement.classList;
      if (classes.contains("dark")) return "dark";
      if (classes.contains("light")) return "light";
    }
    const stored = storedItem(THEME_KEY);
    if (stored === "dark" || stored === "light") return stored;
    return systemDark() ? "dark" : "light";
  }

  /** The IANA zone Airflow shows times in: the user's choice in its UI, else the browser's. */
  function timezone() {
    const raw = storedItem(TIMEZONE_KEY);
    if (raw) {
      try {
        const zone = JSON.parse(raw);
        new Intl.DateTimeFormat("en-US", { timeZone: zone });
        return zone;
      } catch (err) {
        // An unknown zone or a foreign value: fall back to the browser's, as Airflow does.
      }
    }
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  }

  /**
   * Airflow's colours and font under our CSS variable names ({"--bg": value, ..., "--font":
   * value}), only those it sets; empty when the Airflow UI is not reachable.
   */
  function palette() {
    const found = {};
    const parent = airflowDocument();
    if (!parent) return found;
    const computed = window.parent.getComputedStyle(parent.documentElement);
    for (const [ours, theirs] of Object.entries(PALETTE)) {
      const value = computed.getPropertyValue(theirs).trim();
      if (value) found[ours] = value;
    }
    const font = window.parent.getComputedStyle(parent.body).fontFamily;
    if (font) found["--font"] = font;
    return found;
  }

  /** Call ``onChange`` whenever the UI's look or timezone may have changed (no reload). */
  function watch(onChange) {
    // A change in the Airflow UI fires a "storage" event here, and its <html> class changes.
    window.addEventListener("storage", (event) => {
      if (event.key === null || event.key === THEME_KEY || event.key === TIMEZONE_KEY) onChange();
    });
    if (window.matchMedia) window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", onChange);
    const parent = airflowDocument();
    if (parent && window.parent.MutationObserver) {
      new window.parent.MutationObserver(onChange).observe(parent.documentElement, { attributes: true, attributeFilter: ["class", "style"] });
    }
  }

  window.AirflowTheme = Object.freeze({
    colorMode,
    timezone,
    palette,
    watch,
    /** Our colour variables that palette() may set (hitl.js clears them before applying). */
    colorVariables: Object.freeze(Object.keys(PALETTE)),
  });
})();

/*
 * ---------------------------------------------------------------------------------------------
 * The dialogs' backdrop over the Airflow UI around the page (window.AirflowBackdrop).
 *
 * A dialog's backdrop inside the iframe covers only the iframe and leaves Airflow's nav and
 * header bright. While a dialog is open, a dim layer is laid over the rest of Airflow's page,
 * with a hole where the iframe is (the iframe keeps its own backdrop, so both match); a click
 * on it acts as a click on the dialog's own backdrop. What it relies on, of Airflow's page:
 *
 *   window.frameElement        the <iframe> the UI renders for the plugin's external view,
 *                              reachable because the api-server serves both (same origin)
 *   that iframe's document     its <body> takes the layer (position: fixed, above the UI's own
 *                              z-indexes) and its window the resize and scroll events that
 *                              move the hole; nothing of Airflow's own markup is changed
 *
 * The layer is removed when the dialog closes and when this page goes away (pagehide). When
 * the parent is not reachable (another origin, or the page opened on its own) show() and
 * hide() do nothing.
 * ---------------------------------------------------------------------------------------------
 */
(function () {
  const LAYER_ID = "hitl-modal-backdrop";
  // The colour of hitl.css's .overlay, so the two halves of the backdrop are one shade.
  const SHADE = "rgba(10, 15, 25, 0.5)";
  let layer = null;
  let follow = null;

  /** The <iframe> element this page is in, in the Airflow UI's document; null when unreachable. */
  function hostFrame() {
    try {
      const node = window.frameElement;
      return node && node.ownerDocument && node.ownerDocument.body ? node : null;
    } catch (err) {
      return null; // another origin
    }
  }

  /** Clip the layer to the whole viewport minus the iframe's box (even-odd: a hole). */
  function cutOut(node, frame) {
    const r = frame.getBoundingClientRect();
    const hole = [`${r.left}px ${r.top}px`, `${r.right}px ${r.top}px`, `${r.right}px ${r.bottom}px`, `${r.left}px ${r.bottom}px`, `${r.left}px ${r.top}px`];
    node.style.clipPath = `polygon(evenodd, 0 0, 100% 0, 100% 100%, 0 100%, 0 0, ${hole.join(", ")})`;
  }

  /** Dim the Airflow UI around the iframe; ``onClick`` runs when the dimmed part is clicked. */
  function show(onClick) {
    hide();
    const frame = hostFrame();
    if (!frame) return;
    const doc = frame.ownerDocument;
    const view = doc.defaultView;
    layer = doc.createElement("div");
    layer.id = LAYER_ID;
    layer.setAttribute("aria-hidden", "true");
    Object.assign(layer.style, { position: "fixed", inset: "0", background: SHADE, zIndex: "2147483000" });
    cutOut(layer, frame);
    if (onClick) layer.addEventListener("click", () => onClick());
    doc.body.append(layer);
    const current = layer;
    follow = { view, doc, move: () => cutOut(current, frame) };
    view.addEventListener("resize", follow.move);
    doc.addEventListener("scroll", follow.move, true);
  }

  /** Take the layer away (nothing when there is none). */
  function hide() {
    if (follow) {
      try {
        follow.view.removeEventListener("resize", follow.move);
        follow.doc.removeEventListener("scroll", follow.move, true);
      } catch (err) {
        // The Airflow UI's window is gone already.
      }
      follow = null;
    }
    if (layer) {
      layer.remove();
      layer = null;
    }
  }

  // Leaving the page (the UI navigates away, the iframe is removed) must not leave the UI dim.
  window.addEventListener("pagehide", hide);

  window.AirflowBackdrop = Object.freeze({ show, hide });
})();
