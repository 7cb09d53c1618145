import { ChatKit, useChatKit, type ChatKitIcon, type ModelOption } from "@openai/chatkit-react";
import { useCallback, useEffect, useState } from "react";

import { clientToolHandler, type ColorRequest } from "./clientTools";
import { ColorPicker } from "./ColorPicker";
import { CHATKIT_PATH, SessionKeeper, type Session, type Workflow } from "./server";

const keeper = new SessionKeeper();

/**
 * The domain key of this page's domain, registered with OpenAI (platform settings, Security,
 * Domain allowlist). ChatKit's options require one; on localhost it is not verified, so any
 * placeholder does. Set VITE_CHATKIT_DOMAIN_KEY when building for a deployed site.
 */
const DOMAIN_KEY = import.meta.env.VITE_CHATKIT_DOMAIN_KEY || "local-dev";

type Setup = { session: Session; workflow: Workflow; dictation: boolean };

export function App() {
  const [setup, setSetup] = useState<Setup | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    Promise.all([keeper.session(), keeper.workflow()]).then(
      ([session, { workflow, dictation }]) => setSetup({ session, workflow, dictation }),
      (reason: unknown) => setError(reason instanceof Error ? reason.message : String(reason)),
    );
  }, []);

  if (error !== null) {
    return <p className="status error">{error}</p>;
  }
  if (setup === null) {
    return <p className="status">Connecting to chatkit-server…</p>;
  }
  return <Chat {...setup} />;
}

type PendingColor = ColorRequest & { answer: (color: string | null) => void };

function Chat({ session, workflow, dictation }: Setup) {
  const [pendingColor, setPendingColor] = useState<PendingColor | null>(null);
  const pickColor = useCallback(
    (request: ColorRequest) =>
      new Promise<string | null>((resolve) => {
        setPendingColor({
          ...request,
          answer: (color) => {
            setPendingColor(null);
            resolve(color);
          },
        });
      }),
    [],
  );

  const upload = session.file_upload;
  const { control } = useChatKit({
    api: {
      url: session.chatkit_url + CHATKIT_PATH,
      domainKey: DOMAIN_KEY,
      fetch: keeper.fetch,
      // attachments.create answers with an upload_descriptor; ChatKit then sends the bytes there.
      uploadStrategy: { type: "two_phase" },
    },
    startScreen: {
      greeting: workflow.greeting ?? undefined,
      prompts: workflow.starter_prompts.map(({ label, prompt, icon }) => ({
        label,
        prompt,
        // The workflows file's icon names are ChatKit's (e.g. "lightbulb", "lucide:palette").
        ...(icon ? { icon: icon as ChatKitIcon } : {}),
      })),
    },
    composer: {
      // The server enforces its own size limit (CHATKIT_MAX_UPLOAD_BYTES) and answers 413.
      attachments: { enabled: upload.enabled, maxCount: upload.max_files },
      ...(workflow.models.length > 1 ? { models: modelOptions(workflow) } : {}),
      dictation: { enabled: dictation },
    },
    history: { enabled: true, showDelete: true, showRename: true },
    threadItemActions: { feedback: true, retry: true },
    onClientTool: clientToolHandler({ pickColor }),
    onError: ({ error }) => console.error("ChatKit:", error),
  });

  return (
    <main className="layout">
      <ChatKit control={control} className="chat" />
      {pendingColor !== null && (
        <ColorPicker hint={pendingColor.hint} onAnswer={pendingColor.answer} />
      )}
    </main>
  );
}

function modelOptions(workflow: Workflow): ModelOption[] {
  return workflow.models.map((id) => ({ id, label: id, default: id === workflow.model }));
}
