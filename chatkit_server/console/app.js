// The console: threads on the left, the open thread on the right, the composer
// below. State lives here; the DOM is redrawn per item, at most once a frame,
// so a long streamed answer never makes the page fall behind.

import { ApiError, AuthRequired, call, hasToken, setToken, stream, upload, workflows } from "./api.js";
import { canRecord, wireDictation } from "./dictation.js";
import { formValues, h, renderItem } from "./render.js";
import { applyUpdate } from "./updates.js";

const THREAD_PAGE = 30;
const ITEM_PAGE = 50;

const $ = (id) => document.getElementById(id);

const state = {
  threads: [],
  threadsAfter: null,
  thread: null, // {id, title} of the open thread; null on a new thread
  items: new Map(), // id -> item, in display order
  itemsAfter: null, // cursor of earlier items (items.list, newest first)
  streaming: new Set(), // ids of items still being written
  workflows: [],
  defaultWorkflow: null,
  running: null, // AbortController of the answer being streamed
  attachments: [], // {file, previewUrl, attachment|null, error|null}
  dirty: new Set(),
  frame: 0,
  signIn: null, // what to do once signed in
};

// --- errors and sign-in ------------------------------------------------------

function showStatus(message, { level = "info", retry = null } = {}) {
  const status = $("status");
  status.replaceChildren(message);
  status.className = level;
  if (retry) status.append(" ", h("button", { type: "button", class: "link", onclick: retry }, "Retry"));
  status.append(" ", h("button", { type: "button", class: "link", "aria-label": "Dismiss", onclick: clearStatus }, "\u00d7"));
  status.hidden = false;
}

function clearStatus() {
  $("status").hidden = true;
}

function askSignIn(then, message) {
  state.signIn = then;
  const error = $("sign-in-error");
  error.hidden = !message;
  error.textContent = message ?? "";
  const dialog = $("sign-in");
  if (!dialog.open) dialog.showModal();
  $("sign-in-token").focus();
}

/** Run an async action; a 401 asks for a token and runs it again, other errors show. */
function guard(action) {
  return async (...args) => {
    try {
      await action(...args);
    } catch (error) {
      if (error instanceof AuthRequired) askSignIn(() => guard(action)(...args), hasToken() ? "That token was refused." : null);
      else if (error instanceof ApiError) showStatus(error.message, { level: "error" });
      else if (error.name !== "AbortError") {
        console.error(error);
        showStatus(`Something went wrong: ${error.message}`, { level: "error" });
      }
    }
  };
}

// --- threads -------------------------------------------------------------------

async function loadThreads(more = false) {
  const page = await call("threads.list", { limit: THREAD_PAGE, order: "desc", after: more ? state.threadsAfter : null });
  state.threads = more ? [...state.threads, ...page.data] : page.data;
  state.threadsAfter = page.has_more ? page.after : null;
  renderThreadList();
}

function renderThreadList() {
  $("thread-list").replaceChildren(
    ...state.threads.map((thread) =>
      h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: "thread-open",
            "data-testid": "thread-list-item",
            "data-thread-id": thread.id,
            "aria-current": thread.id === state.thread?.id ? "page" : undefined,
            onclick: () => guard(openThread)(thread.id),
          },
          thread.title || "New thread",
        ),
      ),
    ),
  );
  $("more-threads").hidden = !state.threadsAfter;
}

function rememberThread(thread) {
  const index = state.threads.findIndex((known) => known.id === thread.id);
  if (index === -1) state.threads.unshift(thread);
  else state.threads[index] = { ...state.threads[index], ...thread };
  renderThreadList();
}

function showThreadHeader() {
  $("thread-title").textContent = state.thread ? state.thread.title || "New thread" : "New thread";
  $("thread-actions").hidden = !state.thread;
  history.replaceState(null, "", state.thread ? `#thread=${encodeURIComponent(state.thread.id)}` : location.pathname);
}

async function openThread(threadId) {
  const [thread, page] = await Promise.all([
    call("threads.get_by_id", { thread_id: threadId }),
    call("items.list", { thread_id: threadId, order: "desc", limit: ITEM_PAGE }),
  ]);
  state.thread = { id: thread.id, title: thread.title };
  state.items = new Map(page.data.reverse().map((item) => [item.id, item]));
  state.itemsAfter = page.has_more ? page.after : null;
  state.streaming.clear();
  clearStatus();
  showThreadHeader();
  renderThreadList();
  renderAllItems();
  scrollToEnd();
}

async function loadEarlierItems() {
  const page = await call("items.list", { thread_id: state.thread.id, order: "desc", limit: ITEM_PAGE, after: state.itemsAfter });
  state.items = new Map([...page.data.reverse().map((item) => [item.id, item]), ...state.items]);
  state.itemsAfter = page.has_more ? page.after : null;
  renderAllItems();
}

function newThread() {
  state.thread = null;
  state.items = new Map();
  state.itemsAfter = null;
  state.streaming.clear();
  clearStatus();
  showThreadHeader();
  renderThreadList();
  renderAllItems();
  $("composer-input").focus();
}

async function renameThread() {
  const title = prompt("New title", state.thread.title ?? "");
  if (title === null || !title.trim()) return;
  const thread = await call("threads.update", { thread_id: state.thread.id, title: title.trim() });
  state.thread.title = thread?.title ?? title.trim();
  rememberThread({ id: state.thread.id, title: state.thread.title });
  showThreadHeader();
}

async function deleteThread() {
  if (!confirm(`Delete "${state.thread.title || "New thread"}"?`)) return;
  const threadId = state.thread.id;
  await call("threads.delete", { thread_id: threadId });
  state.threads = state.threads.filter((thread) => thread.id !== threadId);
  newThread();
}

// --- workflows, greeting and starter prompts ---------------------------------------

function selectedWorkflow() {
  const id = $("workflow-select").value || state.defaultWorkflow;
  return state.workflows.find((workflow) => workflow.id === id) ?? state.workflows[0];
}

async function loadWorkflows() {
  const answer = await workflows();
  state.workflows = answer.data ?? [];
  state.defaultWorkflow = answer.default;
  $("workflow-select").replaceChildren(...state.workflows.map((workflow) => h("option", { value: workflow.id, selected: workflow.id === answer.default }, workflow.id)));
  $("workflow-picker").hidden = state.workflows.length < 2;
  // Only when the server can transcribe: nobody records what cannot become text.
  $("dictate").hidden = answer.dictation !== true || !canRecord();
  showModels();
}

function showModels() {
  const workflow = selectedWorkflow();
  const models = workflow?.models ?? [];
  $("model-select").replaceChildren(...models.map((model) => h("option", { value: model, selected: model === workflow.model }, model)));
  $("model-picker").hidden = models.length < 2;
  renderStart();
}

function renderStart() {
  const empty = state.items.size === 0 && !state.thread;
  const workflow = selectedWorkflow();
  $("start").hidden = !empty;
  $("greeting").textContent = workflow?.greeting ?? "What can I help with?";
  $("starter-prompts").replaceChildren(
    ...(workflow?.starter_prompts ?? []).map((starter) => h("button", { type: "button", class: "starter", onclick: () => send(starter.prompt) }, starter.label)),
  );
  // The workflow is fixed once a thread exists: it is the thread's own.
  $("workflow-select").disabled = Boolean(state.thread);
}

// --- items ---------------------------------------------------------------------

const itemActions = {
  feedback: guard(async (item, kind) => {
    await call("items.feedback", { thread_id: item.thread_id, item_ids: [item.id], kind });
    // Shown on this page only: the protocol has no way to read feedback back.
    item.feedback = kind;
    markDirty(item.id);
    showStatus("Thanks for the feedback.");
  }),
  retry: (item) => retryAfter(item),
  widgetAction: (item, action, form) => {
    if (action.handler === "client") {
      showStatus(`The action ${action.type} is handled by a front end's own code, not by this console.`);
      return;
    }
    const payload = { ...(action.payload ?? {}), ...formValues(form) };
    runStream("threads.custom_action", { thread_id: state.thread.id, item_id: item.id, action: { type: action.type, payload } });
  },
  toolOutput: (item, text) => {
    let result;
    try {
      result = JSON.parse(text);
    } catch {
      result = text;
    }
    // The server records the output without an event for the call: mark it here, as
    // the web component does.
    Object.assign(item, { status: "completed", output: result });
    markDirty(item.id);
    runStream("threads.add_client_tool_output", { thread_id: state.thread.id, result });
  },
};

function nearEnd() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function scrollToEnd() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function elementOf(item) {
  return renderItem(item, itemActions, { streaming: state.streaming.has(item.id) });
}

function renderAllItems() {
  state.dirty.clear();
  const elements = [...state.items.values()].map(elementOf).filter(Boolean);
  $("items").replaceChildren(...elements);
  $("earlier-items").hidden = !state.itemsAfter;
  renderStart();
}

function markDirty(id) {
  state.dirty.add(id);
  if (!state.frame) state.frame = requestAnimationFrame(flush);
}

function flush() {
  state.frame = 0;
  const follow = nearEnd();
  for (const id of state.dirty) {
    const item = state.items.get(id);
    const old = $("items").querySelector(`[data-item-id="${CSS.escape(id)}"]`);
    const fresh = item ? elementOf(item) : null;
    if (old && fresh) {
      // Keep a section the user opened or closed as they left it.
      if (old.tagName === "DETAILS" && fresh.tagName === "DETAILS" && old.dataset.touched) {
        fresh.open = old.open;
        fresh.dataset.touched = "1";
      }
      old.replaceWith(fresh);
    } else if (old) {
      old.remove();
    } else if (fresh) {
      $("items").append(fresh);
    }
  }
  state.dirty.clear();
  renderStart();
  if (follow) scrollToEnd();
}

// --- streaming ------------------------------------------------------------------

function handleEvent(event, threadId) {
  if (event.type === "thread.created") {
    state.thread = { id: event.thread.id, title: event.thread.title };
    rememberThread({ id: event.thread.id, title: event.thread.title, created_at: event.thread.created_at });
    showThreadHeader();
    return event.thread.id;
  }
  // An answer keeps streaming when the user opens another thread; only its own shows.
  const visible = state.thread?.id === threadId;
  switch (event.type) {
    case "thread.updated":
      rememberThread({ id: event.thread.id, title: event.thread.title });
      if (visible) {
        state.thread.title = event.thread.title;
        showThreadHeader();
      }
      break;
    case "thread.item.added":
    case "thread.item.done":
    case "thread.item.replaced":
      if (!visible) break;
      state.items.set(event.item.id, event.item);
      if (event.type === "thread.item.added") state.streaming.add(event.item.id);
      else state.streaming.delete(event.item.id);
      markDirty(event.item.id);
      break;
    case "thread.item.updated": {
      const item = visible && state.items.get(event.item_id);
      if (!item) break;
      applyUpdate(item, event.update);
      markDirty(item.id);
      break;
    }
    case "thread.item.removed":
      if (!visible) break;
      state.items.delete(event.item_id);
      markDirty(event.item_id);
      break;
    case "stream_options":
      $("composer-stop").hidden = !event.stream_options.allow_cancel;
      break;
    case "progress_update":
      if (visible) showStatus(event.text);
      break;
    case "error":
      if (visible) showStatus(event.message || "The answer failed.", { level: "error", retry: event.allow_retry ? () => retryAfter(null) : null });
      break;
    case "notice":
      if (visible) showStatus(event.title ? `${event.title}: ${event.message}` : event.message, { level: event.level === "danger" ? "error" : event.level });
      break;
    default:
      // client_effect and anything newer: nothing to draw.
      break;
  }
  return threadId;
}

async function runStream(type, params, { metadata, onRefused } = {}) {
  if (state.running) return;
  const controller = new AbortController();
  state.running = controller;
  $("composer-send").hidden = true;
  $("composer-stop").hidden = false;
  clearStatus();
  let threadId = params.thread_id ?? null;
  try {
    for await (const event of stream(type, params, { signal: controller.signal, metadata })) {
      try {
        threadId = handleEvent(event, threadId);
      } catch (error) {
        // One event the console cannot draw must not cost the rest of the answer.
        console.error("event not shown:", event, error);
      }
    }
  } catch (error) {
    if (error.name === "AbortError") {
      showStatus("Stopped. The answer so far is kept.");
    } else if (error instanceof AuthRequired) {
      // Refused before anything happened: once signed in, the same request goes again.
      askSignIn(() => runStream(type, params, { metadata, onRefused }));
    } else {
      onRefused?.();
      showStatus(error instanceof ApiError ? error.message : `The answer failed: ${error.message}`, { level: "error" });
    }
  } finally {
    state.running = null;
    $("composer-send").hidden = false;
    $("composer-stop").hidden = true;
    if (state.thread?.id === threadId) {
      for (const id of state.streaming) markDirty(id);
      state.streaming.clear();
    }
  }
}

function stop() {
  state.running?.abort();
}

function retryAfter(assistantItem) {
  // Retry answers again after the last user message before the item (or the end).
  const items = [...state.items.values()];
  const end = assistantItem ? items.findIndex((item) => item.id === assistantItem.id) : items.length;
  const user = items.slice(0, end === -1 ? items.length : end).findLast((item) => item.type === "user_message");
  if (!user || !state.thread) return;
  for (const item of items.slice(items.indexOf(user) + 1)) {
    state.items.delete(item.id);
    markDirty(item.id);
  }
  runStream("threads.retry_after_item", { thread_id: state.thread.id, item_id: user.id });
}

// --- composer -------------------------------------------------------------------

function send(text) {
  text = text.trim();
  if (!text || state.running) return;
  if (state.attachments.some((entry) => !entry.attachment && !entry.error)) {
    showStatus("Wait for the attachments to finish uploading.");
    return;
  }
  const model = $("model-picker").hidden ? null : $("model-select").value;
  const input = {
    content: [{ type: "input_text", text }],
    attachments: state.attachments.filter((entry) => entry.attachment).map((entry) => entry.attachment.id),
    quoted_text: null,
    inference_options: { model, tool_choice: null },
  };
  const composer = $("composer-input");
  const kept = state.attachments;
  composer.value = "";
  state.attachments = [];
  renderAttachments();
  // Refused before anything was stored: the text and files come back.
  const onRefused = () => {
    if (!composer.value) composer.value = text;
    if (!state.attachments.length) {
      state.attachments = kept;
      renderAttachments();
    }
  };
  if (state.thread) runStream("threads.add_user_message", { thread_id: state.thread.id, input }, { onRefused });
  else runStream("threads.create", { input }, { metadata: { workflow: selectedWorkflow()?.id }, onRefused });
}

function renderAttachments() {
  $("attachments").replaceChildren(
    ...state.attachments.map((entry) =>
      h(
        "span",
        { class: `attachment ${entry.attachment ? "ready" : entry.error ? "failed" : "uploading"}`, title: entry.error ?? "" },
        entry.previewUrl ? h("img", { src: entry.previewUrl, alt: "" }) : null,
        entry.file.name,
        h("button", { type: "button", class: "link", "aria-label": `Remove ${entry.file.name}`, onclick: () => removeAttachment(entry) }, "\u00d7"),
      ),
    ),
  );
}

async function addFiles(files) {
  for (const file of files) {
    const entry = { file, previewUrl: file.type.startsWith("image/") ? URL.createObjectURL(file) : null, attachment: null, error: null };
    state.attachments.push(entry);
    renderAttachments();
    try {
      entry.attachment = await upload(file);
    } catch (error) {
      if (error instanceof AuthRequired) {
        state.attachments = state.attachments.filter((other) => other !== entry);
        askSignIn(() => addFiles([file]));
      } else {
        entry.error = error.message;
        showStatus(`Could not upload ${file.name}: ${error.message}`, { level: "error" });
      }
    }
    renderAttachments();
  }
}

function removeAttachment(entry) {
  state.attachments = state.attachments.filter((other) => other !== entry);
  if (entry.previewUrl) URL.revokeObjectURL(entry.previewUrl);
  if (entry.attachment) guard(call)("attachments.delete", { attachment_id: entry.attachment.id });
  renderAttachments();
}

function insertDictation(text) {
  const composer = $("composer-input");
  const before = composer.value.trimEnd();
  composer.value = before ? `${before} ${text}` : text;
  composer.dispatchEvent(new Event("input"));
  composer.focus();
}

// --- start ---------------------------------------------------------------------

function wire() {
  const composer = $("composer-input");
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send(composer.value);
  });
  composer.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send(composer.value);
    }
  });
  composer.addEventListener("input", () => {
    composer.style.height = "auto";
    composer.style.height = `${Math.min(composer.scrollHeight, 240)}px`;
  });
  $("composer-stop").addEventListener("click", stop);
  $("new-thread").addEventListener("click", newThread);
  $("more-threads").addEventListener("click", guard(() => loadThreads(true)));
  $("earlier-items").addEventListener("click", guard(loadEarlierItems));
  $("rename-thread").addEventListener("click", guard(renameThread));
  $("delete-thread").addEventListener("click", guard(deleteThread));
  $("workflow-select").addEventListener("change", showModels);
  $("attach-input").addEventListener("change", (event) => {
    addFiles([...event.target.files]);
    event.target.value = "";
  });
  wireDictation($("dictate"), {
    onText: insertDictation,
    onError: (error) => showStatus(error.message, { level: "error" }),
    retry: (work) => guard(work)(),
  });
  // A section the user opened or closed stays so while its item is redrawn.
  $("items").addEventListener("click", (event) => {
    const summary = event.target.closest("summary");
    if (summary) summary.parentElement.dataset.touched = "1";
  });
  $("sign-out").addEventListener("click", () => {
    setToken(null);
    location.replace(location.pathname);
  });
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("sign-in-token").value.trim());
    $("sign-in-token").value = "";
    $("sign-in").close();
    $("sign-out").hidden = false;
    const then = state.signIn;
    state.signIn = null;
    then?.();
  });
}

const start = guard(async () => {
  await Promise.all([loadWorkflows(), loadThreads()]);
  const wanted = new URLSearchParams(location.hash.slice(1)).get("thread");
  if (wanted) {
    try {
      await openThread(wanted);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) throw error;
      newThread();
    }
  } else {
    renderAllItems();
  }
  $("sign-out").hidden = !hasToken();
  // For end-to-end tests (and the curious): the page has loaded its threads.
  document.body.dataset.ready = "true";
  performance.mark("console-ready");
});

wire();
start();
