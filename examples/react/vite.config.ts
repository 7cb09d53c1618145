import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

import { chatkitSessionRoute } from "./session-route";

// The page's origin is http://localhost:5173: give exactly that to chatkit-server's
// CHATKIT_CORS_ORIGINS. strictPort: another port would be another origin, refused by the server.
export default defineConfig({
  plugins: [react(), chatkitSessionRoute()],
  server: { host: "localhost", port: 5173, strictPort: true },
  preview: { host: "localhost", port: 5173, strictPort: true },
});
