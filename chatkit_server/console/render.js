// Thread items to DOM. Model output is untrusted: Markdown goes through marked,
// then DOMPurify, and every other string is set as text, never as HTML.

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";
import { previewUrl } from "./api.js";

const markdown = new Marked({ gfm: true, breaks: false, async: false });

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
  // An image from another host would tell it who reads the answer (and the
  // page's policy would refuse it anyway): show its description instead.
  if (node.tagName === "IMG") {
    const src = node.getAttribute("src") ?? "";
    if (!sameOrigin(src)) {
      node.removeAttribute("src");
      node.setAttribute("data-blocked-src", src);
    }
  }
});

function sameOrigin(url) {
  try {
    const parsed = new URL(url, location.href);
    return parsed.origin === location.origin || parsed.protocol === "blob:";
  } catch {
    return false;
  }
}

/** Sanitized HTML of a Markdown string, as a fragment. */
export function renderMarkdown(text) {
  return DOMPurify.sanitize(markdown.parse(text ?? ""), {
    RETURN_DOM_FRAGMENT: true,
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"],
    FORBID_ATTR: ["style"],
  });
}

/** `h("p", {class: "x"}, "text", child)`: an element; strings become text nodes. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

const HIDDEN_TYPES = new Set(["end_of_turn", "hidden_context_item", "sdk_hidden_context"]);

/**
 * The element of one thread item.
 *
 * `actions` supplies what the item's controls do: feedback(item, kind),
 * retry(item), widgetAction(item, action), toolOutput(item, result).
 */
export function renderItem(item, actions, { streaming = false } = {}) {
  if (HIDDEN_TYPES.has(item.type)) return null;
  const render = RENDERERS[item.type] ?? renderUnknown;
  const element = render(item, actions, { streaming });
  element.dataset.itemId = item.id;
  element.classList.add("item");
  return element;
}

const RENDERERS = {
  user_message(item) {
    const text = (item.content ?? []).map((part) => part.text ?? "").join("");
    return h(
      "article",
      { class: "message user", "data-testid": "message-user" },
      item.quoted_text ? h("blockquote", {}, item.quoted_text) : null,
      h("div", { class: "text" }, text),
      (item.attachments ?? []).length
        ? h("div", { class: "attachment-list" }, item.attachments.map(renderAttachment))
        : null,
    );
  },

  assistant_message(item, actions, { streaming }) {
    const body = h("div", { class: "markdown" });
    body.append(renderMarkdown((item.content ?? []).map((part) => part.text ?? "").join("\n\n")));
    // The hook wraps the answer alone, so a test can read its text without the controls.
    const message = h("article", { class: "message assistant", "data-testid": "message-assistant" }, body);
    const pressed = (kind) => (item.feedback === kind ? "true" : undefined);
    return h(
      "div",
      { class: "turn" },
      message,
      streaming
        ? null
        : h(
            "div",
            { class: "message-actions" },
            h("button", { type: "button", class: "link", "aria-label": "Good answer", "aria-pressed": pressed("positive"), onclick: () => actions.feedback(item, "positive") }, "Good"),
            h("button", { type: "button", class: "link", "aria-label": "Bad answer", "aria-pressed": pressed("negative"), onclick: () => actions.feedback(item, "negative") }, "Bad"),
            h("button", { type: "button", class: "link retry", "aria-label": "Answer again", onclick: () => actions.retry(item) }, "Retry"),
          ),
    );
  },

  workflow(item, actions, { streaming }) {
    const workflow = item.workflow ?? {};
    const summary = workflow.summary;
    let title = workflow.type === "reasoning" ? "Reasoning" : "Workflow";
    if (summary?.title) title = summary.title;
    else if (summary?.duration !== undefined) title = `Thought for ${summary.duration} s`;
    return h(
      "details",
      // Open while it is being written, folded once done (unless the server says otherwise).
      { class: "workflow", open: workflow.expanded || streaming },
      h("summary", {}, title),
      (workflow.tasks ?? []).map(renderTask),
    );
  },

  task(item) {
    return h("div", { class: "task-item" }, renderTask(item.task ?? {}));
  },

  client_tool_call(item, actions) {
    const pending = item.status === "pending";
    const output = h("textarea", { rows: 2, "aria-label": "Tool output (JSON)" }, "{}");
    return h(
      "details",
      { class: `tool-call ${pending ? "pending" : "done"}`, open: pending },
      h("summary", {}, `Client tool ${item.name}: ${pending ? "waiting for the front end" : "done"}`),
      h("pre", {}, JSON.stringify(item.arguments ?? {}, null, 2)),
      pending
        ? h(
            "div",
            { class: "tool-output" },
            output,
            h("button", { type: "button", onclick: () => actions.toolOutput(item, output.value) }, "Send output"),
          )
        : h("pre", {}, JSON.stringify(item.output ?? null, null, 2)),
    );
  },

  widget(item, actions) {
    return h("div", { class: "widget" }, renderWidget(item.widget, (action, form) => actions.widgetAction(item, action, form)));
  },

  generated_image(item) {
    const url = item.image?.url;
    if (url && sameOrigin(url)) return h("figure", { class: "generated-image" }, h("img", { src: url, alt: "Generated image" }));
    return h("p", { class: "generated-image muted" }, url ? "Generated image (from another host, not loaded)" : "Generating an image\u2026");
  },
};

function renderUnknown(item) {
  return h(
    "details",
    { class: "unknown" },
    h("summary", {}, `Item of type ${item.type ?? "unknown"} (not shown by this console)`),
    h("pre", {}, JSON.stringify(item, null, 2)),
  );
}

function renderAttachment(attachment) {
  let preview = null;
  if (attachment.preview_url && sameOrigin(attachment.preview_url)) {
    preview = h("img", { alt: attachment.name });
    previewUrl(attachment.preview_url).then(
      (url) => { preview.src = url; },
      () => preview.remove(), // no preview: the name says enough
    );
  }
  return h("span", { class: "attachment" }, preview, attachment.name);
}

export function renderTask(task) {
  const status = task.status_indicator ?? "none";
  return h(
    "div",
    { class: `task ${status}` },
    h("span", { class: "task-title" }, task.title ?? (task.type === "thought" ? "" : task.type), status === "loading" ? h("span", { class: "spinner", "aria-label": "running" }) : null),
    task.content ? h("div", { class: "markdown task-content" }, renderMarkdown(task.content)) : null,
    task.type === "web_search" && task.sources?.length
      ? h("ul", {}, task.sources.map((source) => h("li", {}, source.title ?? source.url ?? "")))
      : null,
  );
}

// Widgets: the common components, by ChatKit's widget types. Anything else
// shows its text content, so nothing a server sends is lost.
export function renderWidget(component, onAction) {
  if (!component || typeof component !== "object") return null;
  const children = () => {
    const list = Array.isArray(component.children) ? component.children : component.children ? [component.children] : [];
    return list.map((child) => renderWidget(child, onAction));
  };
  const actionHandler = (action, formOf) => (event) => {
    event.preventDefault();
    if (action) onAction(action, formOf?.(event.currentTarget));
  };
  switch (component.type) {
    case "Card":
    case "Basic": {
      const card = h("form", { class: "w-card", novalidate: true }, children());
      const buttons = [component.confirm, component.cancel].filter(Boolean).map((choice) =>
        h("button", { type: "button", onclick: actionHandler(choice.action, () => card) }, choice.label),
      );
      if (buttons.length) card.append(h("div", { class: "w-row" }, buttons));
      card.addEventListener("submit", (event) => event.preventDefault());
      return card;
    }
    case "Form": {
      const form = h("form", { class: "w-col", novalidate: true }, children());
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        if (component.onSubmitAction) onAction(component.onSubmitAction, form);
      });
      return form;
    }
    case "ListView":
      return h("ul", { class: "w-list" }, children());
    case "ListViewItem":
      return h(
        "li",
        { class: component.onClickAction ? "w-list-item clickable" : "w-list-item", onclick: component.onClickAction ? actionHandler(component.onClickAction) : undefined },
        children(),
      );
    case "Box":
    case "Col":
    case "Transition":
      return h("div", { class: "w-col" }, children());
    case "Row":
      return h("div", { class: "w-row" }, children());
    case "Text":
    case "Label":
      return h("p", { class: "w-text" }, component.value ?? "");
    case "Title":
      return h("h3", { class: "w-title" }, component.value ?? "");
    case "Caption":
      return h("p", { class: "w-caption muted" }, component.value ?? "");
    case "Markdown": {
      const element = h("div", { class: "markdown" });
      element.append(renderMarkdown(component.value));
      return element;
    }
    case "Badge":
      return h("span", { class: "w-badge" }, component.label ?? "");
    case "Divider":
      return h("hr");
    case "Spacer":
      return h("div", { class: "w-spacer" });
    case "Icon":
      return null;
    case "Image":
      return sameOrigin(component.src) ? h("img", { class: "w-image", src: component.src, alt: component.alt ?? "" }) : h("span", { class: "muted" }, component.alt ?? "image");
    case "Button":
      return h(
        "button",
        { type: component.submit ? "submit" : "button", class: "w-button", onclick: component.submit ? undefined : actionHandler(component.onClickAction, (target) => target.closest("form")) },
        component.label ?? "",
      );
    case "Input":
      return h("input", { name: component.name, placeholder: component.placeholder, value: component.defaultValue ?? "", "aria-label": component.name });
    case "Textarea":
      return h("textarea", { name: component.name, placeholder: component.placeholder, "aria-label": component.name }, component.defaultValue ?? "");
    case "Select":
      return h("select", { name: component.name, "aria-label": component.name }, (component.options ?? []).map((option) => h("option", { value: option.value, selected: option.value === component.defaultValue }, option.label)));
    case "Checkbox":
      return h("label", {}, h("input", { type: "checkbox", name: component.name, checked: component.defaultChecked }), component.label ?? "");
    case "DatePicker":
      return h("input", { type: "date", name: component.name, value: component.defaultValue ?? "", "aria-label": component.name });
    case "RadioGroup":
      return h("fieldset", {}, (component.options ?? []).map((option) => h("label", {}, h("input", { type: "radio", name: component.name, value: option.value, checked: option.value === component.defaultValue }), option.label)));
    default:
      return h("div", { class: "w-unknown" }, h("span", { class: "muted" }, `[${component.type ?? "widget"}] `), textOf(component));
  }
}

function textOf(component) {
  const parts = [];
  const walk = (node) => {
    if (!node || typeof node !== "object") return;
    for (const key of ["value", "label", "title"]) if (typeof node[key] === "string") parts.push(node[key]);
    const children = Array.isArray(node.children) ? node.children : node.children ? [node.children] : [];
    children.forEach(walk);
  };
  walk(component);
  return parts.join(" ");
}

/** The values of a widget form's fields, for an action's payload. */
export function formValues(form) {
  if (!form) return {};
  const values = {};
  for (const [name, value] of new FormData(form)) values[name] = value;
  return values;
}
