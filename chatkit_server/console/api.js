// The ChatKit protocol as the web component speaks it: every request is a JSON
// body POSTed to /chatkit; streaming ones answer Server-Sent Events whose
// `data:` lines each hold one JSON event.

// Relative to the page, so the console also works behind a proxy that serves
// the server under a path prefix.
const CHATKIT_URL = "chatkit";
const WORKFLOWS_URL = "chatkit/workflows";
// Session storage only: the credential ends with the tab, and other tabs or
// later visits never see it.
const TOKEN_KEY = "chatkit-console-token";
// The web component names its frame on every request; so does the console,
// so a server (or a proxy) sees the same headers from both.
const FRAME_ID = crypto.randomUUID();

/** The server asked for a credential (401). */
export class AuthRequired extends Error {}

/** Any other refused request, with the server's own message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function hasToken() {
  return sessionStorage.getItem(TOKEN_KEY) !== null;
}

function headers(json) {
  const result = { "chatkit-frame-instance-id": FRAME_ID };
  // The server refuses any other body type (415), so a cross-site form can never post one.
  if (json) result["Content-Type"] = "application/json";
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) result.Authorization = `Bearer ${token}`;
  return result;
}

async function check(response) {
  if (response.ok) return response;
  if (response.status === 401) throw new AuthRequired("sign-in required");
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body?.error?.message ?? message;
  } catch {
    // not JSON: the status line says enough
  }
  throw new ApiError(response.status, message);
}

function post(body, signal) {
  return fetch(CHATKIT_URL, {
    method: "POST",
    headers: headers(true),
    body: JSON.stringify(body),
    signal,
    credentials: "same-origin",
  }).then(check);
}

/** A non-streaming request (threads.list, items.list, threads.update ...): its JSON answer. */
export async function call(type, params, extra = {}) {
  const response = await post({ type, params, ...extra });
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** A streaming request (threads.create, threads.add_user_message ...): yields its events. */
export async function* stream(type, params, { signal, metadata } = {}) {
  const body = { type, params };
  if (metadata) body.metadata = metadata;
  const response = await post(body, signal);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replaceAll("\r\n", "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) !== -1) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = frame
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5))
          .join("\n");
        if (data) yield JSON.parse(data);
      }
    }
  } finally {
    // Left early (an error while drawing): close the response rather than leave it open.
    await reader.cancel().catch(() => {});
  }
}

/** The workflows of GET /chatkit/workflows: `{default, data: [{id, models, greeting, ...}]}`. */
export async function workflows() {
  const response = await fetch(WORKFLOWS_URL, { headers: headers(false) }).then(check);
  return response.json();
}

/**
 * Upload a file the way the web component's direct strategy does: attachments.create
 * gives the attachment and where to send its bytes (multipart, one `file` field).
 */
export async function upload(file) {
  const attachment = await call("attachments.create", {
    name: file.name,
    size: file.size,
    mime_type: file.type || "application/octet-stream",
  });
  const target = attachment.upload_descriptor;
  if (target) {
    // The server names its upload URL after CHATKIT_PUBLIC_URL, else the address this
    // request came to; the page's policy lets it talk to its own origin only.
    const where = new URL(target.url, location.href).origin;
    if (where !== location.origin) {
      await call("attachments.delete", { attachment_id: attachment.id }).catch(() => {});
      throw new ApiError(
        0,
        `the server's upload address is on ${where}, not this page's origin ` +
          "(CHATKIT_PUBLIC_URL should be the address this page is opened at)",
      );
    }
    const form = new FormData();
    form.append("file", file, file.name);
    const response = await fetch(target.url, {
      method: target.method ?? "POST",
      headers: { ...headers(false), ...(target.headers ?? {}) },
      body: form,
    });
    await check(response);
  }
  return attachment;
}

const previews = new Map();

/**
 * A local URL for an attachment's preview. An <img> would ask without the
 * bearer token, so the preview is fetched with it (once per page) instead.
 */
export function previewUrl(url) {
  if (!previews.has(url)) {
    previews.set(
      url,
      fetch(url, { headers: headers(false) })
        .then(check)
        .then((response) => response.blob())
        .then((blob) => URL.createObjectURL(blob)),
    );
  }
  return previews.get(url);
}

function base64Of(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    // A data: URL, "data:<type>;base64,<bytes>": the bytes are after the comma.
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/** Dictation: a recorded clip to text, as ChatKit's composer asks (`input.transcribe`). */
export async function transcribe(clip) {
  return call("input.transcribe", { audio_base64: await base64Of(clip), mime_type: clip.type });
}
