/**
 * The example's backend: one route, `POST /api/chatkit/session`, that mints a chatkit-server
 * session through its REST API and hands the browser the session's client secret.
 *
 * It runs inside Vite's dev and preview servers (Node), so CHATKIT_ADMIN_KEY stays in this
 * process's environment and never reaches the browser. In your application, this is one route
 * of your own backend: sign the user in, then make the same call for that user.
 *
 * Environment (of `npm run dev` / `npm run preview`):
 * - CHATKIT_ADMIN_KEY: the server's admin key (required);
 * - CHATKIT_URL: where chatkit-server is, as the browser reaches it (default http://127.0.0.1:8000);
 * - CHATKIT_WORKFLOW: the workflow of the session (default `default`; `assistant` with
 *   examples/workflows.toml);
 * - CHATKIT_USER: the user the session acts as (default `react-demo`): a real backend names its
 *   signed-in user here.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Plugin } from "vite";

/** The browser asks this path of the dev server for a session. */
export const SESSION_ROUTE = "/api/chatkit/session";

/** chatkit-server's REST route that mints a session (OpenAI's ChatKit sessions API). */
export const SESSIONS_PATH = "/v1/chatkit/sessions";

const DEFAULT_CHATKIT_URL = "http://127.0.0.1:8000";

/** What the browser gets: the secret, when it expires, and the server to use it with. */
export type SessionAnswer = {
  client_secret: string;
  expires_at: number;
  chatkit_url: string;
  file_upload: { enabled: boolean; max_file_size: number; max_files: number };
};

type Env = Record<string, string | undefined>;

function reply(res: ServerResponse, status: number, body: unknown): void {
  res.statusCode = status;
  res.setHeader("Content-Type", "application/json");
  res.setHeader("Cache-Control", "no-store");
  res.end(JSON.stringify(body));
}

function refuse(res: ServerResponse, status: number, message: string): void {
  reply(res, status, { error: { message } });
}

/** Mint a session; the route's answer, or an error status and message. */
async function mintSession(env: Env): Promise<[number, SessionAnswer | { error: { message: string } }]> {
  const adminKey = env.CHATKIT_ADMIN_KEY;
  if (!adminKey) {
    return [500, { error: { message: "Start the example with CHATKIT_ADMIN_KEY set to the server's admin key." } }];
  }
  const base = (env.CHATKIT_URL || DEFAULT_CHATKIT_URL).replace(/\/+$/, "");
  let response: Response;
  try {
    response = await fetch(base + SESSIONS_PATH, {
      method: "POST",
      headers: { Authorization: `Bearer ${adminKey}`, "Content-Type": "application/json" },
      body: JSON.stringify({
        user: env.CHATKIT_USER || "react-demo",
        workflow: { id: env.CHATKIT_WORKFLOW || "default" },
        // Uploads are off for a session unless it asks for them (as in hosted ChatKit).
        chatkit_configuration: { file_upload: { enabled: true } },
      }),
    });
  } catch {
    return [502, { error: { message: `chatkit-server does not answer at ${base} (CHATKIT_URL).` } }];
  }
  const body = (await response.json().catch(() => null)) as Record<string, any> | null;
  if (!response.ok || body === null) {
    const message = body?.error?.message ?? `chatkit-server answered ${response.status}.`;
    return [502, { error: { message: `Minting a session failed: ${message}` } }];
  }
  return [
    200,
    {
      client_secret: body.client_secret,
      expires_at: body.expires_at,
      chatkit_url: base,
      file_upload: body.chatkit_configuration.file_upload,
    },
  ];
}

function hostOf(origin: string): string | null {
  try {
    return new URL(origin).host;
  } catch {
    return null; // "null": a sandboxed or file page
  }
}

/** The route as Connect middleware (mounted at SESSION_ROUTE). */
export function sessionHandler(env: Env = process.env) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    if (req.method !== "POST") {
      res.setHeader("Allow", "POST");
      refuse(res, 405, "POST to mint a session.");
      return;
    }
    // Only this app's own pages may mint: another site's page could otherwise get a secret
    // (it could not read the answer without CORS, but it should not get one either).
    const origin = req.headers.origin;
    if (origin !== undefined && hostOf(origin) !== req.headers.host) {
      refuse(res, 403, `Pages of ${origin} may not mint sessions.`);
      return;
    }
    mintSession(env).then(
      ([status, body]) => reply(res, status, body),
      () => refuse(res, 500, "Minting a session failed."),
    );
  };
}

/** A Vite plugin serving the route in `npm run dev` and `npm run preview`. */
export function chatkitSessionRoute(env: Env = process.env): Plugin {
  const handler = sessionHandler(env);
  return {
    name: "chatkit-session-route",
    configureServer(server) {
      server.middlewares.use(SESSION_ROUTE, handler);
    },
    configurePreviewServer(server) {
      server.middlewares.use(SESSION_ROUTE, handler);
    },
  };
}
