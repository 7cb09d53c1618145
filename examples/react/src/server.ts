/**
 * Talking to chatkit-server from the browser: a session secret from the example's own backend
 * route, a `fetch` that sends it as a bearer token, and the workflow's composer settings.
 */

/** The example backend's route (session-route.ts) that mints a session. */
export const SESSION_ROUTE = "/api/chatkit/session";
/** chatkit-server's ChatKit endpoint: every ChatKit request goes here. */
export const CHATKIT_PATH = "/chatkit";
/** chatkit-server's description of the session's workflow: greeting, starter prompts, ... */
export const WORKFLOWS_PATH = "/chatkit/workflows";

/** A session as the example backend hands it over. */
export type Session = {
  client_secret: string;
  /** Unix seconds. */
  expires_at: number;
  /** chatkit-server's base URL, e.g. http://127.0.0.1:8000. */
  chatkit_url: string;
  /** The session's upload settings (max_file_size in MB, as in OpenAI's sessions API). */
  file_upload: { enabled: boolean; max_file_size: number; max_files: number };
};

/** One workflow of `GET /chatkit/workflows` (a session sees only its own). */
export type Workflow = {
  id: string;
  model: string;
  models: string[];
  tools: string[];
  client_tools: string[];
  actions: string[];
  greeting: string | null;
  starter_prompts: { label: string; prompt: string; icon?: string }[];
};

export type Workflows = { default: string; dictation: boolean; data: Workflow[] };

/** Renew a secret this long before it expires (sessions last 10 minutes by default). */
const RENEW_MARGIN_S = 60;

async function errorMessage(response: Response): Promise<string> {
  const body = (await response.json().catch(() => null)) as { error?: { message?: string } } | null;
  return body?.error?.message ?? `HTTP ${response.status}`;
}

/**
 * Holds the current session and renews it before it expires, or when the server refuses it
 * (cancelled through the REST API, or the server restarted with another database).
 */
export class SessionKeeper {
  private current: Promise<Session> | null = null;

  /** The current session, minting one if there is none or it is about to expire. */
  session(): Promise<Session> {
    const now = Date.now() / 1000;
    if (this.current === null) {
      this.current = this.mint();
    } else {
      this.current = this.current.then(
        (session) => (session.expires_at - RENEW_MARGIN_S > now ? session : this.mint()),
        () => this.mint(),
      );
    }
    return this.current;
  }

  private async mint(): Promise<Session> {
    const response = await fetch(SESSION_ROUTE, { method: "POST" });
    if (!response.ok) {
      throw new Error(`No ChatKit session: ${await errorMessage(response)}`);
    }
    return (await response.json()) as Session;
  }

  /**
   * ChatKit's `api.fetch`: every request it makes to chatkit-server, with the session's
   * secret as a bearer token. A 401 gets one more try with a fresh session.
   */
  readonly fetch: typeof fetch = async (input, init) => {
    const send = async (session: Session): Promise<Response> => {
      const headers = new Headers(init?.headers);
      headers.set("Authorization", `Bearer ${session.client_secret}`);
      return fetch(input, { ...init, headers });
    };
    const response = await send(await this.session());
    if (response.status !== 401) {
      return response;
    }
    this.current = this.mint();
    return send(await this.current);
  };

  /** The session's workflow, as chatkit-server describes it. */
  async workflow(): Promise<{ workflow: Workflow; dictation: boolean }> {
    const session = await this.session();
    const response = await this.fetch(session.chatkit_url + WORKFLOWS_PATH);
    if (!response.ok) {
      throw new Error(`GET ${WORKFLOWS_PATH}: ${await errorMessage(response)}`);
    }
    const workflows = (await response.json()) as Workflows;
    const workflow = workflows.data.find((each) => each.id === workflows.default) ?? workflows.data[0];
    if (workflow === undefined) {
      throw new Error(`GET ${WORKFLOWS_PATH}: no workflow`);
    }
    return { workflow, dictation: workflows.dictation };
  }
}
