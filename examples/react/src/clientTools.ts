/**
 * Client tools: tools the model calls and the browser answers. chatkit-server stops the answer
 * with a pending call; ChatKit calls `onClientTool`, sends what it returns to the server
 * (`threads.add_client_tool_output`) and the model goes on with it.
 *
 * examples/workflows.toml declares `pick_color` on the `assistant` workflow.
 */

/** The client tools this page answers: each one a workflow declares must be here. */
export const CLIENT_TOOLS = ["pick_color"] as const;

export type ClientToolName = (typeof CLIENT_TOOLS)[number];

/** What `pick_color` asks the page: the model says what the color is for. */
export type ColorRequest = { hint: string };

/** The page's side of the tools: here, a color picker the user answers. */
export type ClientToolUi = {
  pickColor(request: ColorRequest): Promise<string | null>;
};

function isClientTool(name: string): name is ClientToolName {
  return (CLIENT_TOOLS as readonly string[]).includes(name);
}

/** ChatKit's `onClientTool`: run the tool the model called, return its result. */
export function clientToolHandler(ui: ClientToolUi) {
  return async (toolCall: { name: string; params: Record<string, unknown> }): Promise<Record<string, unknown>> => {
    if (!isClientTool(toolCall.name)) {
      // The result goes back to the model, which can tell the user.
      return { error: `This page has no client tool named ${toolCall.name}.` };
    }
    switch (toolCall.name) {
      case "pick_color": {
        const hint = typeof toolCall.params.hint === "string" ? toolCall.params.hint : "";
        const color = await ui.pickColor({ hint });
        return color === null ? { cancelled: true } : { color };
      }
    }
  };
}
